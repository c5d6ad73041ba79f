"""Check an installed CUDA build of en-seg (``make cuda-build``); needs no GPU.

1. Loads the installed ``en_seg/ops/_C*.so`` with ``torch.ops.load_library``, without
   importing ``en_seg``, and asserts that every op it registers in the ``en_seg`` library
   has a CPU and a CUDA kernel, i.e. that it was compiled with its CUDA kernels. A layer op
   (``exemplar_norm``, ``switchable_norm``) is a composite of the kernel ops: it must carry
   a ``CompositeImplicitAutograd`` kernel instead, which serves every backend.
2. Imports ``en_seg.ops`` and ``en_seg.models.ExemplarNorm2d`` (which must import with
   torch alone) and runs the layer's forward + backward, on the GPU when one is visible,
   else on the CPU.

Run it as ``python tools/check_cuda_build.py`` with the environment's interpreter: sys.path
then starts at tools/, not at the source tree, whose en_seg holds the CPU build of
``make install``. Prints one line per op; exits 1 with the failures listed on stderr.
"""
import importlib.util
import sys
from pathlib import Path
from typing import List

import torch

BACKENDS = ('CPU', 'CUDA')
COMPOSITE = 'CompositeImplicitAutograd'


def installed_library() -> Path:
    """The compiled extension of the installed en_seg package, found without running
    en_seg/__init__.py.

    Raises:
        SystemExit: where en_seg is not installed or has no compiled extension.
    """
    spec = importlib.util.find_spec('en_seg')
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit('en_seg is not installed in this environment')
    libraries = sorted((Path(spec.submodule_search_locations[0]) / 'ops').glob('_C*.so'))
    if not libraries:
        raise SystemExit(f'no compiled en_seg.ops._C next to {spec.origin}')
    return libraries[0]


def check_kernels() -> List[str]:
    """Print every en_seg op with the backends it has kernels for; returns the failures."""
    ops = sorted(name for name in torch._C._dispatch_get_all_op_names()
                 if name.startswith('en_seg::'))
    if not ops:
        return ['the library registers no en_seg op']
    failures = []
    for op in ops:
        if torch._C._dispatch_has_kernel_for_dispatch_key(op, COMPOSITE):
            print(f'{op}: composite ({COMPOSITE}) of the kernel ops')
            continue
        keys = [key for key in BACKENDS
                if torch._C._dispatch_has_kernel_for_dispatch_key(op, key)]
        print(f'{op}: kernels for {", ".join(keys) or "no backend"}')
        failures += [f'{op} has no {key} kernel' for key in BACKENDS if key not in keys]
    return failures


def check_layer(library: Path) -> List[str]:
    """Import en_seg.ops and ExemplarNorm2d and run the layer; returns the failures."""
    try:
        import en_seg.ops
        from en_seg.models import ExemplarNorm2d
    except ImportError as error:
        return [f'importing en_seg.ops and en_seg.models.ExemplarNorm2d with torch alone: '
                f'{type(error).__name__}: {error}']
    if Path(en_seg.ops.__file__).parent != library.parent:
        return [f'en_seg.ops came from {en_seg.ops.__file__}, not from {library.parent}']
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    layer = ExemplarNorm2d(8).to(device)
    x = torch.randn(2, 8, 5, 5, device=device, requires_grad=True)
    layer(x).square().sum().backward()
    finite = bool(torch.isfinite(x.grad).all())
    print(f'ExemplarNorm2d(8) forward + backward on {device}: '
          f'{"finite" if finite else "NOT FINITE"}')
    return [] if finite else [f'ExemplarNorm2d gradients on {device} are not finite']


def main() -> int:
    library = installed_library()
    print(f'torch {torch.__version__} (CUDA {torch.version.cuda}); {library}')
    failures = [] if torch.version.cuda else ['torch is a CPU build']
    torch.ops.load_library(str(library))
    failures += check_kernels() + check_layer(library)
    for failure in failures:
        print(f'FAILED: {failure}', file=sys.stderr)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
