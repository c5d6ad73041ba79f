"""Speed benchmarks of en-seg, one subcommand per benchmark, each printing a Markdown table.

``ratio`` times forward + backward of the ratio branch (docs/method.md#ratio-branch,
steps 2-6, paper Sec. 3.3) by the compiled op ``torch.ops.en_seg.exemplar_ratios`` and by the
pure-PyTorch reference, through the dispatch ExemplarNorm2d uses, for N in {2, 16, 64},
C in {64, 256, 2048}, K = 3 (IN, LN, BN), r = min(32, C), π = 50. The table in
docs/benchmark_ratio.md comes from::

    python tools/benchmark.py ratio --device cpu --threads 1 --clock cpu --repeats 5

``layer`` and ``model`` (tools/benchmark_norm.py) measure what swapping BatchNorm for EN
costs: one layer's forward + backward against BN, GN, SN and the literal EN, and one
training iteration of DeepLabV3 R50-D8, in time and peak memory::

    python tools/benchmark.py layer --doc docs/benchmark_layer_model.md
    python tools/benchmark.py model --doc docs/benchmark_layer_model.md

On a GPU (tools/gpu_check.sh runs these), EN against cuDNN's BN and GN in float32 and
bfloat16 autocast, NCHW and channels_last, and DeepLabV3 at 512×512 (mmseg's where it is
installed, else torchvision's; the ``layer`` and ``model`` paths import no OpenMMLab)::

    python tools/benchmark.py layer --device cuda --variants BN 'GN(32)' EN \\
        --dtypes float32 bfloat16 --memory-formats nchw channels_last
    python tools/benchmark.py model --device cuda --batch 2 --size 512

Times are in microseconds: medians of ``torch.utils.benchmark.Timer.blocked_autorange``
(which synchronizes CUDA), measured ``--repeats`` times in turn for every implementation,
of which the lowest is kept, since other processes on a shared machine only add time. On a
busy machine, ``--clock cpu --threads 1`` times the CPU this process spends, which other
processes do not change.
"""
import argparse
import platform
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.benchmark import Timer

from benchmark_norm import add_subcommands as add_norm_subcommands
from en_seg.models import ExemplarNorm2d
from en_seg.ops import CUDA_KERNELS_AVAILABLE, EXTENSION_AVAILABLE, exemplar_ratios


def median_us(stmt: str, env: Dict[str, object], args: argparse.Namespace) -> float:
    """Median time of ``stmt`` in microseconds; ``env`` holds the names it uses."""
    clock = {'cpu': {'timer': time.process_time}, 'wall': {}}[args.clock]
    timer = Timer(stmt, globals=env, num_threads=args.threads, **clock)
    return timer.blocked_autorange(min_run_time=args.min_run_time).median * 1e6


def environment(args: argparse.Namespace) -> str:
    """One line naming what the numbers were measured on, and how."""
    if args.device == 'cuda':
        where = torch.cuda.get_device_name()
    else:
        where = f'{_cpu_model()}, {args.threads} thread(s), {args.clock} clock'
    return f'torch {torch.__version__}, {where}'


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ratio_inputs(n: int, c: int, device: str, seed: int = 0) -> List[torch.Tensor]:
    """The ratio branch's inputs as ExemplarNorm2d(C) passes them in training: per-sample
    statistics of order 1 and the layer's initial parameters, all requiring grad."""
    torch.manual_seed(seed)
    layer = ExemplarNorm2d(c)
    k = layer.num_normalizers
    stats = [torch.randn(n, c), torch.randn(n, k, c), torch.rand(n, k, c) + 0.5]
    params = [layer.ratio_conv.weight, layer.ratio_fc1.weight, layer.ratio_fc1.bias,
              layer.ratio_fc2.weight, layer.ratio_fc2.bias]
    return [t.detach().to(device).requires_grad_() for t in (*stats, *params)]


def bench_ratio(args: argparse.Namespace) -> str:
    """Forward + backward of the ratio branch, reference vs op; returns a Markdown table."""
    if not EXTENSION_AVAILABLE or (args.device == 'cuda' and not CUDA_KERNELS_AVAILABLE):
        raise SystemExit('en_seg.ops._C is not built (with CUDA kernels, for --device cuda): '
                         'run `pip install --no-build-isolation -e .` first')
    rows = ['| N | C | reference (µs) | op (µs) | reference / op |',
            '|---:|---:|---:|---:|---:|']
    for n in args.n:
        for c in args.c:
            inputs = ratio_inputs(n, c, args.device)
            env = {'torch': torch, 'ratios': exemplar_ratios, 'inputs': inputs,
                   'grad': torch.randn(n, 3, device=args.device)}
            times = {'reference': float('inf'), 'op': float('inf')}
            for _ in range(args.repeats):
                for impl in times:
                    stmt = f'torch.autograd.grad(ratios(*inputs, impl={impl!r}), inputs, grad)'
                    times[impl] = min(times[impl], median_us(stmt, env, args))
            rows.append(f'| {n} | {c} | {times["reference"]:.1f} | {times["op"]:.1f} | '
                        f'{times["reference"] / times["op"]:.2f} |')
    return '\n'.join([
        f'Ratio branch, forward + backward (gradients of all 8 inputs), K = 3, '
        f'r = min(32, C), π = 50, {args.device}: {environment(args)}.',
        '', *rows, ''])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Speed benchmarks of en-seg')
    commands = parser.add_subparsers(dest='command', required=True)

    ratio = commands.add_parser('ratio', help='ratio branch: compiled op vs reference')
    ratio.add_argument('--n', type=int, nargs='+', default=[2, 16, 64],
                       help='batch sizes N (default: 2 16 64)')
    ratio.add_argument('--c', type=int, nargs='+', default=[64, 256, 2048],
                       help='channel counts C (default: 64 256 2048)')
    ratio.set_defaults(run=bench_ratio)

    for command in (ratio, *add_norm_subcommands(commands, median_us, environment)):
        command.add_argument('--device', choices=('cpu', 'cuda'),
                             default='cuda' if torch.cuda.is_available() else 'cpu',
                             help='where to run (default: cuda if available, else cpu)')
        command.add_argument('--threads', type=int, default=torch.get_num_threads(),
                             help='CPU threads (default: torch.get_num_threads())')
        command.add_argument('--min-run-time', type=float, default=0.3,
                             help='seconds of timing per measurement (default: 0.3)')
        command.add_argument('--clock', choices=('wall', 'cpu'), default='wall',
                             help='wall time, or CPU time of this process (--device cpu '
                                  'only; with --threads 1 on a busy machine) (default: wall)')
        command.add_argument('--repeats', type=int, default=3,
                             help='measurements per implementation, the lowest median is '
                                  'kept (default: 3)')
        command.add_argument('--out', help='also write the table to this Markdown file')
    args = parser.parse_args(argv)
    if args.clock == 'cpu' and args.device != 'cpu':
        parser.error('--clock cpu times CPU work; GPU kernels need --clock wall')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    run: Callable[[argparse.Namespace], str] = args.run
    table = run(args)
    print(table)
    if args.out:
        with open(args.out, 'w') as out:
            out.write(table)


if __name__ == '__main__':
    main()
