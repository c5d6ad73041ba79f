"""What the compiler made of the CUDA kernels, read from a CUDA build without a GPU.

For every kernel of the installed ``en_seg/ops/_C*.so`` (``make cuda-build``), or of the
library given, prints one Markdown row for one architecture (default sm_90): registers,
stack bytes (a call frame, e.g. of the float64 division routine, or spills), local-memory
instructions (LDL / STL: spills or arrays the compiler could not keep in registers),
static shared memory, and its global loads and stores counted by width in bits (``128x4``
is four 128-bit instructions), read from its SASS. docs/cuda_sass.md
holds the table and what it means.

``--check`` also asserts what the elementwise passes were written for (docs/cuda_sass.md):
every store of a packed elementwise kernel (V > 1, channels first or channels_last) is 128
bits wide and a thread has its kUnroll 128-bit loads of each input before its first
store; it exits 1 where not.

Needs cuobjdump and nvdisasm: on the PATH, or PyPI's ``nvidia-cuda-cuobjdump`` and
``nvidia-cuda-nvdisasm`` in this environment (``make cuda-build`` installs them), and
``c++filt`` (binutils) for readable names.
"""
import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List

from check_cuda_build import installed_library

#: Global memory instructions and the bits each moves: LDG / STG, with .U16 / .64 / .128
#: for other widths than 32 and .CONSTANT for loads through the read-only path.
MEMORY = re.compile(r'\b(LDG|STG)\.E((?:\.[A-Z0-9]+)*)')
WIDTHS = {'U8': 8, 'S8': 8, 'U16': 16, 'S16': 16, '64': 64, '128': 128}
RESOURCES = re.compile(r'REG:(\d+) STACK:(\d+) SHARED:(\d+)')
LOCAL = re.compile(r'\b(LDL|STL)\b')
#: Loads of each input a thread of a packed elementwise kernel issues before it stores
#: (kUnroll in channel_op_kernel.cu).
UNROLL = 4


def tool(name: str) -> str:
    """The path of a CUDA binary tool: on the PATH, or from PyPI's nvidia packages."""
    found = shutil.which(name)
    if found:
        return found
    spec = importlib.util.find_spec('nvidia')
    for root in (spec.submodule_search_locations if spec else []):
        for candidate in sorted(Path(root).glob(f'*/bin/{name}')):
            return str(candidate)
    raise SystemExit(f'{name} not found: pip install nvidia-cuda-cuobjdump '
                     'nvidia-cuda-nvdisasm, or put the CUDA toolkit\'s bin on the PATH')


def cuobjdump(library: Path, arch: str, *flags: str) -> str:
    executable = tool('cuobjdump')
    env = dict(os.environ)
    # cuobjdump runs nvdisasm for -sass.
    env['PATH'] = os.pathsep.join([str(Path(tool('nvdisasm')).parent), env.get('PATH', '')])
    return subprocess.run([executable, *flags, '-arch', arch, str(library)], check=True,
                          capture_output=True, text=True, env=env).stdout


def readable(mangled: str) -> str:
    """The kernel's demangled name without namespaces and parameter list."""
    if shutil.which('c++filt') is None:
        return mangled
    name = subprocess.run(['c++filt', mangled], capture_output=True, text=True).stdout.strip()
    name = re.sub(r'^void ', '', name)
    name = re.sub(r'en_seg::cuda::|\(anonymous namespace\)::|__nv_', '', name)
    depth = 0
    for i, char in enumerate(name):  # cut the parameter list: the first '(' outside <>
        depth += {'<': 1, '>': -1}.get(char, 0)
        if char == '(' and depth == 0:
            return name[:i].replace('> >', '>>')
    return name.replace('> >', '>>')


def kernels(library: Path, arch: str) -> Dict[str, dict]:
    """Per mangled kernel name: registers, stack, shared bytes, and Counters of the widths
    of its global loads and stores, in program order for ``order``."""
    result: Dict[str, dict] = defaultdict(lambda: {'loads': Counter(), 'stores': Counter(),
                                                   'order': [], 'local': 0})
    name = None
    for line in cuobjdump(library, arch, '-res-usage').splitlines():
        if line.strip().startswith('Function '):
            name = line.split()[1].rstrip(':')
        elif name and (match := RESOURCES.search(line)):
            result[name].update(zip(('registers', 'stack', 'shared'), map(int, match.groups())))
    for line in cuobjdump(library, arch, '-sass').splitlines():
        if 'Function :' in line:
            name = line.split(':', 1)[1].strip()
        elif name and LOCAL.search(line):
            result[name]['local'] += 1
        elif name and (match := MEMORY.search(line)):
            suffixes = match.group(2).strip('.').split('.')
            bits = next((WIDTHS[s] for s in suffixes if s in WIDTHS), 32)
            kind = 'loads' if match.group(1) == 'LDG' else 'stores'
            result[name][kind][bits] += 1
            result[name]['order'].append((kind, bits))
    return dict(result)


def widths(counts: Counter) -> str:
    return ', '.join(f'{bits}x{n}' for bits, n in sorted(counts.items(), reverse=True)) or '-'


def table(found: Dict[str, dict]) -> List[str]:
    lines = ['| kernel | registers | stack | local | shared | global loads | global stores |',
             '|---|---:|---:|---:|---:|---|---|']
    for mangled, k in sorted(found.items(), key=lambda item: readable(item[0])):
        lines.append(f'| `{readable(mangled)}` | {k.get("registers", "?")} | '
                     f'{k.get("stack", "?")} | {k["local"]} | {k.get("shared", "?")} | '
                     f'{widths(k["loads"])} | {widths(k["stores"])} |')
    return lines


def check(found: Dict[str, dict]) -> List[str]:
    """The packed elementwise kernels' failures of full-width stores and loads in flight."""
    failures = []
    packed = {m: k for m, k in found.items()
              if re.match(r'elementwise_\w+_kernel<([2-9]|\d\d)', readable(m))}
    if not packed:
        return ['no packed elementwise kernel in the library']
    for mangled, k in packed.items():
        name = readable(mangled)
        narrow = {bits: n for bits, n in k['stores'].items() if bits != 128}
        if narrow or not k['stores']:
            failures.append(f'{name}: stores {widths(k["stores"])}, not only 128-bit')
        first_store = next((i for i, (kind, _) in enumerate(k['order']) if kind == 'stores'),
                           len(k['order']))
        ahead = sum(1 for kind, bits in k['order'][:first_store]
                    if kind == 'loads' and bits == 128)
        if ahead < UNROLL:
            failures.append(f'{name}: {ahead} 128-bit loads before its first store, '
                            f'not {UNROLL} or more')
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('library', nargs='?', type=Path,
                        help='the extension (default: the installed en_seg/ops/_C*.so)')
    parser.add_argument('--arch', default='sm_90', help='the architecture read (sm_90)')
    parser.add_argument('--check', action='store_true',
                        help='exit 1 unless the packed elementwise kernels store 128 bits')
    args = parser.parse_args()
    library = args.library or installed_library()
    found = kernels(library, args.arch)
    if not found:
        raise SystemExit(f'no {args.arch} kernel in {library}')
    print(f'{len(found)} kernels of {library.name}, {args.arch}:\n')
    print('\n'.join(table(found)))
    failures = check(found) if args.check else []
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
