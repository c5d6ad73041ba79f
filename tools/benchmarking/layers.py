"""One layer's forward + backward in training mode (the gradients of the input and of
every parameter), EN against the layers it replaces and the alternatives to its compiled
ops, at the shapes of ResNet / DeepLabV3 layers.

Variants (:data:`VARIANTS`):

- ``BN``: ``nn.BatchNorm2d`` (cuDNN's kernels on a GPU);
- ``GN(32)``: ``nn.GroupNorm(32, C)``;
- ``SN``: ``SwitchableNorm2d``, on the compiled ops;
- ``EN``: ``ExemplarNorm2d``, on the compiled ops;
- ``EN-reference``: ``ExemplarNorm2d(C, impl='reference')``, the coefficient graph in
  plain PyTorch;
- ``EN-reference-compiled``: that graph under ``torch.compile``, the library alternative
  to the compiled ops. It is compiled afresh (``torch.compiler.reset``) for every case and
  thread count, since inductor's CPU kernels keep the thread count they were compiled
  with; where ``torch.compile`` is unavailable or fails, the case records why and goes on
  without it. Its first forward + backward, the compilation, is timed apart.

Inputs are standard normal, float32, or bfloat16 with the forward under bfloat16 autocast
(float32 weights, the backward outside it, as torch recommends), in NCHW or channels_last
layout (:data:`DTYPES`, :data:`MEMORY_FORMATS`).
"""
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from en_seg.models import ExemplarNorm2d, SwitchableNorm2d

from .memory import peak_bytes
from .timing import Step, Timing, fastest

Shape = Tuple[int, int, int, int]

#: Named sets of input shapes (N, C, H, W). ``standard``: a small layer, where per-call
#: costs dominate; DeepLabV3's ASPP image pool (1×1); feature maps of 256 to 2048 channels
#: at 16×16 to 64×64. ``large``: DeepLabV3 R50-D8 layers at 512×512 crops and a ResNet-50
#: stage-1 layer at batch 16. ``small``: the standard shapes whose cost is per-call.
SHAPE_SETS: Dict[str, Tuple[Shape, ...]] = {
    'standard': ((2, 64, 8, 8), (2, 512, 1, 1), (2, 256, 32, 32), (2, 512, 32, 32),
                 (2, 2048, 16, 16), (2, 256, 64, 64)),
    'large': ((2, 256, 128, 128), (2, 512, 64, 64), (2, 2048, 64, 64), (16, 64, 56, 56)),
    'small': ((2, 64, 8, 8), (2, 512, 1, 1)),
}

#: Input dtypes: float32, or bfloat16 activations and gradients with the forward under
#: bfloat16 autocast (float32 weights), as in a network trained with autocast.
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16}

#: Input layouts.
MEMORY_FORMATS = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}


@dataclass(frozen=True)
class Variant:
    """A layer to measure: ``build(C)`` makes it; ``compiled`` puts it under
    ``torch.compile``."""
    build: Callable[[int], nn.Module]
    compiled: bool = False


def _reference_en(num_features: int) -> nn.Module:
    return ExemplarNorm2d(num_features, impl='reference')


#: The layers ``--variants`` may name, in the order they are measured.
VARIANTS: Dict[str, Variant] = {
    'BN': Variant(nn.BatchNorm2d),
    'GN(32)': Variant(lambda c: nn.GroupNorm(32, c)),
    'SN': Variant(SwitchableNorm2d),
    'EN': Variant(ExemplarNorm2d),
    'EN-reference': Variant(_reference_en),
    'EN-reference-compiled': Variant(_reference_en, compiled=True),
}


@dataclass
class Case:
    """The results of one thread count, shape, dtype and layout.

    Attributes:
        seconds, peak_bytes: per variant measured, seconds per forward + backward and the
            peak tensor bytes it allocates (:mod:`.memory`).
        compile_seconds: per compiled variant, its first forward + backward.
        skipped: per variant not measured, why.
    """
    threads: int
    shape: Shape
    dtype: str
    memory_format: str
    seconds: Dict[str, float] = field(default_factory=dict)
    peak_bytes: Dict[str, int] = field(default_factory=dict)
    compile_seconds: Dict[str, float] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)


def parse_shapes(text: str) -> Tuple[Shape, ...]:
    """A ``--shapes`` item: the name of a :data:`SHAPE_SETS` set, or one N,C,H,W.

    Raises:
        ValueError: for anything else.
    """
    if text in SHAPE_SETS:
        return SHAPE_SETS[text]
    try:
        shape = tuple(int(v) for v in text.split(','))
    except ValueError:
        shape = ()
    if len(shape) != 4:
        raise ValueError(f'expected one of {tuple(SHAPE_SETS)} or N,C,H,W, got {text!r}')
    return (shape,)


def layer_input(shape: Shape, dtype: str, memory_format: str, device: str,
                requires_grad: bool) -> Tensor:
    """A standard-normal ``shape`` tensor in a :data:`DTYPES` dtype and a
    :data:`MEMORY_FORMATS` layout."""
    x = torch.randn(shape, device=device).to(DTYPES[dtype])
    return x.to(memory_format=MEMORY_FORMATS[memory_format]).requires_grad_(requires_grad)


def layer_step(layer: nn.Module, x: Tensor, grad: Tensor) -> Step:
    """Forward and backward: the gradients of x and of every parameter, for the output
    gradient ``grad``. A bfloat16 x runs the forward under bfloat16 autocast."""
    inputs = (x, *layer.parameters())
    autocast = x.dtype == torch.bfloat16

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            y = layer(x)
        torch.autograd.grad(y, inputs, grad)

    return step


def measure(shapes: Sequence[Shape], variants: Sequence[str], dtypes: Sequence[str],
            memory_formats: Sequence[str], device: str, threads: Sequence[int],
            timing: Timing) -> List[Case]:
    """Every variant at every thread count, shape, dtype and layout, in that nesting; the
    variants of one case are timed in turn (:func:`.timing.fastest`). Prints each case's
    ratios to stderr as it goes.

    Args:
        shapes: (N, C, H, W) inputs; C divisible by 32 where GN(32) is measured.
        variants: names in :data:`VARIANTS`.
        dtypes, memory_formats: names in :data:`DTYPES`, :data:`MEMORY_FORMATS`.
        device: 'cpu' or 'cuda'.
        threads: intra-op thread counts.
        timing: how steps are timed.
    """
    cases = []
    for thread_count in threads:
        torch.set_num_threads(thread_count)
        for shape in shapes:
            layers = {name: VARIANTS[name].build(shape[1]).to(device).train()
                      for name in variants}
            for dtype in dtypes:
                for memory_format in memory_formats:
                    case = Case(thread_count, shape, dtype, memory_format)
                    _measure_case(case, layers, device, timing)
                    cases.append(case)
                    _progress(case)
    return cases


def _measure_case(case: Case, layers: Dict[str, nn.Module], device: str,
                  timing: Timing) -> None:
    x = layer_input(case.shape, case.dtype, case.memory_format, device, True)
    grad = layer_input(case.shape, case.dtype, case.memory_format, device, False)
    steps = {}
    for name, layer in layers.items():
        if VARIANTS[name].compiled:
            step = _compiled_step(case, name, layer, x, grad)
            if step is None:
                continue
        else:
            step = layer_step(layer, x, grad)
            step()
        steps[name] = step
    case.seconds = fastest(steps, case.threads, timing)
    case.peak_bytes = {name: peak_bytes(step, device) for name, step in steps.items()}


def _compiled_step(case: Case, name: str, layer: nn.Module, x: Tensor,
                   grad: Tensor) -> Optional[Step]:
    """The step of ``torch.compile(layer)``, compiled by its first call, which
    ``case.compile_seconds`` records; None, with the reason in ``case.skipped``, where
    torch.compile is unavailable or fails."""
    start = time.perf_counter()
    try:
        torch.compiler.reset()
        step = layer_step(torch.compile(layer), x, grad)
        step()
    except Exception as error:  # unsupported platform, no C++ compiler, a failed graph
        message = str(error).strip().splitlines()
        case.skipped[name] = (f'torch.compile failed: {type(error).__name__}'
                              + (f': {message[0][:200]}' if message else ''))
        return None
    case.compile_seconds[name] = time.perf_counter() - start
    return step


def _progress(case: Case) -> None:
    bn, gn = case.seconds['BN'], case.seconds.get('GN(32)')
    parts = [f'{name} {seconds / bn:.2f}x BN' + (f', {seconds / gn:.2f}x GN(32)' if gn else '')
             + f', {case.peak_bytes[name] / case.peak_bytes["BN"]:.2f}x BN memory'
             for name, seconds in case.seconds.items() if name not in ('BN', 'GN(32)')]
    parts += [f'{name} skipped' for name in case.skipped]
    print(f'{case.threads} thread(s), {case.shape} {case.dtype}, {case.memory_format}: '
          + '; '.join(parts), file=sys.stderr, flush=True)
