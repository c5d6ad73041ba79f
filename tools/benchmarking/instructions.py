"""Instructions per layer step, counted by valgrind's callgrind: a measure of a layer's
fixed costs that other processes on a shared machine do not change.

Where a layer's arithmetic is small (the ``small`` shapes), its time is that of the
instructions around it: Python, the dispatcher, allocations, the autograd engine. Wall
and CPU clocks on a shared machine swing by 2x from run to run there; callgrind's counts
do not depend on what else the machine does (they vary by about 1% between runs, with
the interpreter's hash seed fixed: garbage collection and allocation patterns).
Instructions are not time: a memory-bound step costs more than its count says, so the
count is a measure for the small shapes only.

Each layer's step (:func:`.layers.layer_step`, the ``layer`` benchmark's) runs in a child
process under ``valgrind --tool=callgrind --instr-atstart=no``: the child warms up, turns
the counting on with ``callgrind_control``, runs ``steps`` steps, turns it off. Two
children, of ``steps`` and ``2 * steps`` steps, give the instructions of ``steps`` steps
as their difference, free of what starting and stopping the count costs. Under valgrind
the CPU shows no AVX-512, so libtorch's kernels and en_seg's run their AVX2 code.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

from .layers import Shape

#: valgrind's summary line of the instructions a run counted.
_COLLECTED = re.compile(r'Collected\s*:\s*(\d+)')

_TOOLS = Path(__file__).resolve().parents[1]

# What a child runs: python -c CHILD VARIANT N,C,H,W STEPS.
_CHILD = f'''
import gc, os, subprocess, sys
sys.path.insert(0, {str(_TOOLS)!r})
import torch
from benchmarking import layers, process
process.steady('cpu')
torch.set_num_threads(1)
name, shape, steps = sys.argv[1], layers.parse_shapes(sys.argv[2])[0], int(sys.argv[3])
layer = layers.VARIANTS[name].build(shape[1]).train()
x = layers.layer_input(shape, 'float32', 'nchw', 'cpu', True)
step = layers.layer_step(layer, x, layers.layer_input(shape, 'float32', 'nchw', 'cpu', False))
for _ in range(20):
    step()
gc.collect()

def count(state):
    subprocess.run(['callgrind_control', '-i', state, str(os.getpid())], check=True,
                   capture_output=True)

count('on')
for _ in range(steps):
    step()
count('off')
'''


@dataclass
class InstructionCase:
    """One shape's counts: per variant measured, instructions per forward + backward."""
    shape: Shape
    instructions: Dict[str, float] = field(default_factory=dict)


def require_valgrind() -> None:
    """Stop, naming the fix, unless valgrind and callgrind_control are on the PATH."""
    missing = [tool for tool in ('valgrind', 'callgrind_control') if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f'{" and ".join(missing)} not found: install valgrind (Debian: '
                         '`apt-get install valgrind`) to count instructions')


def counted(variant: str, shape: Shape, steps: int) -> int:
    """The instructions one child counts over ``steps`` steps of ``variant`` at ``shape``.

    Raises:
        RuntimeError: with valgrind's output, where the child fails or prints no count.
    """
    with tempfile.TemporaryDirectory() as scratch:
        command = ['valgrind', '--tool=callgrind', '--instr-atstart=no',
                   f'--callgrind-out-file={os.path.join(scratch, "callgrind.out")}',
                   sys.executable, '-c', _CHILD, variant, ','.join(map(str, shape)),
                   str(steps)]
        result = subprocess.run(command, capture_output=True, text=True,
                                env={**os.environ, 'OMP_NUM_THREADS': '1',
                                     'PYTHONHASHSEED': '0'})
    match = _COLLECTED.search(result.stderr)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f'callgrind run of {variant} at {shape} failed '
                           f'(exit {result.returncode}):\n{result.stderr[-2000:]}')
    return int(match.group(1))


def per_step(variant: str, shape: Shape, steps: int) -> float:
    """Instructions of one forward + backward: the difference of a ``2 * steps`` run and
    a ``steps`` run, over ``steps``. The two children run side by side (a count does not
    depend on what else runs)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        longer, shorter = pool.map(lambda n: counted(variant, shape, n), (2 * steps, steps))
    if longer <= shorter:
        raise RuntimeError(f'callgrind counted {longer} instructions over {2 * steps} steps of '
                           f'{variant} at {shape} and {shorter} over {steps}: the count was '
                           'not switched on around the steps')
    return (longer - shorter) / steps


def measure(shapes: Sequence[Shape], variants: Sequence[str],
            steps: int) -> List[InstructionCase]:
    """Every variant's instructions per step at every shape, one thread, float32 NCHW;
    prints each case's ratios to stderr as it goes."""
    cases = []
    for shape in shapes:
        case = InstructionCase(shape)
        for name in variants:
            case.instructions[name] = per_step(name, shape, steps)
        bn = case.instructions['BN']
        print(f'{shape}: ' + '; '.join(f'{name} {count / bn:.2f}x BN'
                                       for name, count in case.instructions.items()
                                       if name != 'BN'), file=sys.stderr, flush=True)
        cases.append(case)
    return cases
