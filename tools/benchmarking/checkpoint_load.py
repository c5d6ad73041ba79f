"""The cost of loading a checkpoint safely: en_seg's loader (scan, weights-only load,
plain-data check) against torch's weights-only load alone (with en_seg's allow-list, which
that load needs for mmengine's checkpoints), in fresh processes.

Each variant loads the file ``repeats`` times, each in a new Python process that has
imported en_seg; a process reports the load's wall time and its peak resident memory
(``ru_maxrss``, which includes the interpreter and libraries: the same in both).
"""
import json
import subprocess
import sys
from typing import Dict, List

#: Variant -> the statement that loads ``path``.
VARIANTS = {
    'torch.load(weights_only=True)': 'torch.load(path, map_location="cpu", weights_only=True)',
    'en_seg load_from_local': 'load_from_local(path, map_location="cpu")',
}

_CHILD = '''
import json, resource, sys, time
import torch
import en_seg
from en_seg.checkpoint import load_from_local
path = sys.argv[1]
start = time.perf_counter()
{statement}
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds,
                   "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
'''


def measure(path: str, repeats: int) -> Dict[str, Dict[str, float]]:
    """The lowest time and peak memory of each variant over ``repeats`` processes."""
    results = {}
    for name, statement in VARIANTS.items():
        runs: List[dict] = []
        for _ in range(repeats):
            output = subprocess.run([sys.executable, '-c', _CHILD.format(statement=statement),
                                     path], capture_output=True, text=True, check=True)
            runs.append(json.loads(output.stdout.strip().splitlines()[-1]))
        results[name] = {'seconds': min(run['seconds'] for run in runs),
                         'peak_bytes': min(run['peak_bytes'] for run in runs)}
    return results


def markdown(path: str, size: int, results: Dict[str, Dict[str, float]], header: str) -> str:
    base = results['torch.load(weights_only=True)']
    lines = [f'### Loading a checkpoint safely ({size / 1e6:.0f} MB)', '', header, '',
             f'`{path}`, the lowest of each variant\'s runs, each in a fresh process.', '',
             '| load | time (s) | peak memory (MB) | time / torch.load | memory / torch.load |',
             '|---|---:|---:|---:|---:|']
    for name, result in results.items():
        lines.append(f'| {name} | {result["seconds"]:.3f} | {result["peak_bytes"] / 1e6:.0f} | '
                     f'{result["seconds"] / base["seconds"]:.2f} | '
                     f'{result["peak_bytes"] / base["peak_bytes"]:.2f} |')
    return '\n'.join(lines) + '\n'
