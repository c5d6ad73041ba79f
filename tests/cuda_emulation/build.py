"""Builds the emulation with g++: every .cu rewritten (rewrite.py) and compiled as C++20
against tests/cuda_emulation/include, one object per file, cached by the hash of its
inputs under build/cuda_emulation/ (a second build compiles nothing).

Two variants of the same shared libraries, loaded with ctypes: ``plain`` (-O1) and
``sanitized`` (AddressSanitizer + UndefinedBehaviorSanitizer, for a process that preloads
the ASan runtime; see sanitizer_environment). CUDA_EMULATION_SRC names another directory of kernel
sources (a mutated copy of en_seg/ops/csrc/cuda, inside a copy of csrc since the kernel
headers include ../ratio_math.h) to build instead.
"""
import hashlib
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .rewrite import rewrite

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KERNEL_DIR = Path(os.environ.get('CUDA_EMULATION_SRC', ROOT / 'en_seg' / 'ops' / 'csrc' / 'cuda'))
BUILD_DIR = ROOT / 'build' / 'cuda_emulation'
CXX = shutil.which('g++')

#: The kernel files: <name>_kernel.cu with its C entry points in bindings/<name>.cpp, and
#: the other kernel files whose launchers it calls.
KERNELS = {'channel_op': (), 'ratio_op': (), 'coefficient_op': ('ratio_op',)}

_COMMON_FLAGS = ['-std=c++20', '-fPIC', '-fvisibility=hidden',
                 # nvcc contracts a * b + c into an FMA, g++ may too on some targets; the
                 # emulation rounds every operation as the references do, and a GPU agrees
                 # with it to a tolerance (the rule: docs/method.md#precision).
                 '-ffp-contract=off', '-Wall',
                 '-I', str(HERE / 'include'), '-I', str(HERE), '-I', str(KERNEL_DIR)]
VARIANT_FLAGS = {
    'plain': ['-O1'],
    'sanitized': ['-O1', '-g', '-fno-omit-frame-pointer', '-fsanitize=address,undefined',
                  '-fno-sanitize-recover=all'],
}


def _headers_digest():
    """One hash of every header a unit may include: a change to any rebuilds all."""
    digest = hashlib.sha256()
    headers = [*sorted((HERE / 'include').rglob('*.h')), *sorted((HERE / 'bindings').glob('*.h')),
               *sorted(KERNEL_DIR.glob('*.h')), *sorted(KERNEL_DIR.parent.glob('*.h'))]
    for header in headers:
        digest.update(str(header).encode() + b'\0' + header.read_bytes())
    return digest.hexdigest()


def _source_text(path):
    """A unit's C++ text (.cu files rewritten) under a #line naming the original file."""
    text = path.read_text()
    return f'#line 1 "{path}"\n{rewrite(text) if path.suffix == ".cu" else text}'


class _Builder:
    def __init__(self, variant):
        self.flags = _COMMON_FLAGS + VARIANT_FLAGS[variant]
        self.out = BUILD_DIR / variant
        self.out.mkdir(parents=True, exist_ok=True)
        self.headers = _headers_digest()

    def _digest(self, *parts):
        return hashlib.sha256('\0'.join([CXX, *self.flags, *parts]).encode()).hexdigest()[:20]

    def _run(self, command, target):
        """Runs a compiler command that writes `target`, atomically (another session may
        build the same file at the same time)."""
        partial = target.with_name(f'{target.name}.{os.getpid()}.tmp')
        result = subprocess.run([*command, '-o', str(partial)], capture_output=True, text=True)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr}')
        os.replace(partial, target)

    def compile(self, source):
        text = _source_text(source)
        target = self.out / f'{source.stem}-{self._digest(self.headers, str(source), text)}.o'
        if not target.exists():
            unit = target.with_suffix('.cpp')
            unit.write_text(text)
            self._run([CXX, *self.flags, '-c', str(unit)], target)
        return target

    def link(self, name, objects, shared):
        suffix = '.so' if shared else ''
        target = self.out / f'{name}-{self._digest(*map(str, objects))}{suffix}'
        if not target.exists():
            self._run([CXX, *self.flags, *(['-shared'] if shared else []), *map(str, objects)],
                      target)
        return target


def _compile_all(builder, sources):
    """Objects of `sources`, compiled in parallel."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(sources, pool.map(builder.compile, sources)))


def build_libraries(variant='plain'):
    """{name: path} of the shared libraries of `variant` (a key of VARIANT_FLAGS): one per
    kernel file of KERNELS (its kernels and C entry points) and 'probe' (probe_kernels.cu,
    kernels that exercise the emulation itself)."""
    builder = _Builder(variant)
    runtime, probe = HERE / 'runtime.cpp', HERE / 'probe_kernels.cu'
    units = {name: [*(KERNEL_DIR / f'{kernel}_kernel.cu' for kernel in (name, *calls)),
                    HERE / 'bindings' / f'{name}.cpp']
             for name, calls in KERNELS.items()}
    objects = _compile_all(builder, list(dict.fromkeys([runtime, probe,
                                                        *sum(units.values(), [])])))
    libraries = {name: builder.link(name, [objects[runtime], *map(objects.get, sources)], True)
                 for name, sources in units.items()}
    libraries['probe'] = builder.link('probe', [objects[runtime], objects[probe]], True)
    return libraries


def sanitizer_environment():
    """Environment variables under which a Python process can load the sanitized
    libraries: the ASan runtime preloaded (it must come first), leak checks off (the
    interpreter's own allocations would be reported)."""
    libasan = subprocess.run([CXX, '-print-file-name=libasan.so'], capture_output=True,
                             text=True, check=True).stdout.strip()
    return {'LD_PRELOAD': libasan, 'ASAN_OPTIONS': 'detect_leaks=0'}
