"""Speed and memory benchmarks of en-seg, one subcommand per benchmark, each printing a
Markdown table; the benchmarks themselves are the package tools/benchmarking.

``ratio``: the ratio branch alone, compiled op against the PyTorch reference. The table
in docs/benchmark_ratio.md comes from::

    python tools/benchmark.py ratio --device cpu --threads 1 --clock cpu --repeats 5

``layer``: one layer's forward + backward in training mode, EN against BN, GN(32), SN,
EN's PyTorch reference and that reference under ``torch.compile``, at the ``standard``
shapes (``--shapes large`` adds DeepLab's larger ones); ``model``: one training iteration
of DeepLabV3 R50-D8 with EN, BN and GN(32). One run measures every thread count it is
given, so that its ratios come from one run. docs/benchmark_layer_model.md holds the
tables, what they are measured against, and the targets::

    python tools/benchmark.py layer --device cpu --threads 1 2 \\
        --doc docs/benchmark_layer_model.md
    python tools/benchmark.py model --device cpu --threads 1 2 \\
        --doc docs/benchmark_layer_model.md

``passes``: where EN's layer time goes at the same shapes: its passes over X (the channel
ops, below autograd) against GroupNorm's ATen kernels, the whole layers, and what each
layer spends beyond its passes::

    python tools/benchmark.py passes --device cpu --threads 1 2 \\
        --doc docs/benchmark_layer_model.md

``instructions``: the layer step's instructions at the ``small`` shapes, where its cost is
per call, counted by valgrind's callgrind (one thread): a measure that other processes on
a shared machine do not change::

    python tools/benchmark.py instructions --doc docs/benchmark_layer_model.md

On a GPU (tools/gpu_check.sh runs these), against cuDNN's BN, in float32 and bfloat16
autocast, NCHW and channels_last, and DeepLabV3 at 512×512 (mmseg's where it is
installed, else torchvision's; then ``layer`` and ``model`` import no OpenMMLab)::

    python tools/benchmark.py layer --device cuda --shapes standard large \\
        --dtypes float32 bfloat16 --memory-formats nchw channels_last
    python tools/benchmark.py model --device cuda --batch 2 --size 512

``checkpoint``: loading a checkpoint with en_seg's guards (the scan before the load, the
plain-data check after it) against torch's weights-only load alone, time and peak memory,
in fresh processes (docs/checkpoints.md)::

    python tools/benchmark.py checkpoint work_dirs/run/iter_80000.pth

``roofline`` (a GPU only): EN's and cuDNN BatchNorm's layer step at docs/cuda_sass.md's
shapes, in both layouts, against that page's roofline model and the GPU's peak memory
bandwidth::

    python tools/benchmark.py roofline

Times are the lowest, over ``--repeats`` measuring rounds that time every implementation
in turn, of medians of ``torch.utils.benchmark.Timer.blocked_autorange`` (which
synchronizes CUDA), since other processes on a shared machine only add time. On a busy
machine, ``--clock cpu --threads 1`` times the CPU this process spends, which other
processes do not change.
"""
import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from benchmarking import (checkpoint_load, doc_section, instructions, layers, machine, model,
                          passes, process, ratio, report, roofline)
from benchmarking.timing import CLOCKS, Timing
from en_seg.ops import available

REPO = Path(__file__).resolve().parents[1]
RESULTS_DOC = REPO / 'docs' / 'benchmark_layer_model.md'


def require_ops(device: str) -> None:
    """Stop, naming the fix, unless the compiled en_seg ops run on ``device``."""
    if device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('torch sees no CUDA device: run with --device cpu')
    if not available(torch.empty(0, device=device)):
        raise SystemExit(f'the compiled en_seg ops do not run on {device} in this build of '
                         'en_seg.ops._C: run `pip install --no-build-isolation -e .` first')


def timing(args: argparse.Namespace) -> Timing:
    return Timing(args.clock, args.min_run_time, args.repeats)


def header(args: argparse.Namespace) -> str:
    """The results' machine and command line."""
    command = shlex.join(['python', os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    return report.provenance(machine.describe(args.device, args.clock), command)


def run_ratio(args: argparse.Namespace) -> str:
    require_ops(args.device)
    process.steady(args.device)
    cases = ratio.measure(args.n, args.c, args.device, args.threads, timing(args))
    return report.ratio_markdown(cases, args.device,
                                 machine.describe(args.device, args.clock))


def run_layer(args: argparse.Namespace) -> str:
    require_ops(args.device)
    process.steady(args.device)
    shapes = _shape_list(args)
    cases = layers.measure(shapes, args.variants, args.dtypes, args.memory_formats,
                           args.device, args.threads, timing(args))
    text = report.layer_markdown(cases, args.device, timing(args), header(args))
    if args.doc:
        doc_section.write_section(args.doc, f'layer-{args.device}', text)
    return text


def run_passes(args: argparse.Namespace) -> str:
    require_ops(args.device)
    process.steady(args.device)
    shapes = _shape_list(args)
    cases = passes.measure(shapes, args.device, args.threads, timing(args))
    text = report.passes_markdown(cases, args.device, timing(args), header(args))
    if args.doc:
        doc_section.write_section(args.doc, f'passes-{args.device}', text)
    return text


def run_model(args: argparse.Namespace) -> str:
    require_ops(args.device)
    process.steady(args.device)
    source = model.resolve_source(args.source)
    run = model.measure(source, args.norms, args.batch, args.size, args.device,
                        args.threads, timing(args))
    text = report.model_markdown(run, args.device, timing(args), header(args))
    if args.doc:
        section = f'model-{args.device}' + ('' if source == 'mmseg' else '-torchvision')
        doc_section.write_section(args.doc, section, text)
    return text


def run_checkpoint(args: argparse.Namespace) -> str:
    results = checkpoint_load.measure(args.path, args.repeats)
    return checkpoint_load.markdown(args.path, os.path.getsize(args.path), results,
                                    header(args))


def run_roofline(args: argparse.Namespace) -> str:
    require_ops('cuda')
    process.steady('cuda')
    bandwidth = roofline.copy_bandwidth(timing(args))
    cases = roofline.measure(timing(args), args.memory_formats)
    return roofline.markdown(cases, bandwidth, torch.cuda.get_device_name(), header(args))


def run_instructions(args: argparse.Namespace) -> str:
    require_ops('cpu')
    instructions.require_valgrind()
    shapes = _shape_list(args)
    cases = instructions.measure(shapes, args.variants, args.steps)
    text = report.instructions_markdown(cases, args.steps, header(args))
    if args.doc:
        doc_section.write_section(args.doc, 'instructions-cpu', text)
    return text


def _shapes(text: str):
    try:
        return layers.parse_shapes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _shape_list(args: argparse.Namespace):
    """``--shapes`` as one list of (N, C, H, W)."""
    return [shape for shape_set in args.shapes for shape in shape_set]


def _add_shapes(command: argparse.ArgumentParser, default: str) -> None:
    command.add_argument('--shapes', nargs='+', type=_shapes,
                         default=[layers.SHAPE_SETS[default]], metavar='SET|N,C,H,W',
                         help=f'input shapes, or sets of them: {", ".join(layers.SHAPE_SETS)} '
                              f'(default: {default})')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Speed and memory benchmarks of en-seg')
    commands = parser.add_subparsers(dest='command', required=True)

    ratio_command = commands.add_parser('ratio', help='ratio branch: compiled op vs reference')
    ratio_command.add_argument('--n', type=int, nargs='+', default=[2, 16, 64],
                               help='batch sizes N (default: 2 16 64)')
    ratio_command.add_argument('--c', type=int, nargs='+', default=[64, 256, 2048],
                               help='channel counts C (default: 64 256 2048)')
    ratio_command.set_defaults(run=run_ratio)

    layer = commands.add_parser(
        'layer', help='EN vs BN, GN(32), SN, its reference and the compiled reference: one '
                      'layer, forward + backward')
    _add_shapes(layer, 'standard')
    layer.add_argument('--variants', nargs='+', choices=tuple(layers.VARIANTS),
                       default=list(layers.VARIANTS),
                       help='layers to measure, BN and EN among them (default: all)')
    layer.add_argument('--dtypes', nargs='+', choices=tuple(layers.DTYPES),
                       default=['float32'],
                       help='float32, and/or bfloat16 under autocast (default: float32)')
    layer.add_argument('--memory-formats', nargs='+', choices=tuple(layers.MEMORY_FORMATS),
                       default=['nchw'], help='input layouts (default: nchw)')
    layer.set_defaults(run=run_layer)

    split = commands.add_parser(
        'passes', help="EN's passes over X vs GroupNorm's kernels, and each layer's time "
                       'beyond them')
    _add_shapes(split, 'standard')
    split.set_defaults(run=run_passes)

    counts = commands.add_parser(
        'instructions', help='EN vs BN and GN(32): one layer, forward + backward, '
                             'instructions counted by callgrind')
    _add_shapes(counts, 'small')
    counts.add_argument('--variants', nargs='+',
                        choices=[name for name, variant in layers.VARIANTS.items()
                                 if not variant.compiled],
                        default=['BN', 'GN(32)', 'EN'],
                        help='layers to count, BN and EN among them (default: BN GN(32) EN)')
    counts.add_argument('--steps', type=int, default=100,
                        help='steps of the shorter of the two counted runs (default: 100)')
    counts.add_argument('--out', help='also write the table to this Markdown file')
    # One thread on the CPU, counted: what header() names.
    counts.set_defaults(run=run_instructions, device='cpu', clock='callgrind')

    segmentor = commands.add_parser(
        'model', help='DeepLabV3 R50-D8 with EN vs BN and GN(32): one training iteration, '
                      'parameters, GFLOPs')
    segmentor.add_argument('--batch', type=int, default=2,
                           help='images per batch (default: 2)')
    segmentor.add_argument('--size', type=int, default=256,
                           help='square crop side in pixels (default: 256)')
    segmentor.add_argument('--norms', nargs='+', choices=model.NORMS, default=list(model.NORMS),
                           help='norm layers, BN and EN among them (default: all)')
    segmentor.add_argument('--source', choices=model.SOURCES, default='auto',
                           help="mmseg's DeepLabV3 R50-D8 or torchvision's deeplabv3_resnet50 "
                                '(default: auto, mmseg where it is installed)')
    segmentor.set_defaults(run=run_model)

    loading = commands.add_parser(
        'checkpoint', help="loading a checkpoint: en_seg's guarded loader vs torch.load")
    loading.add_argument('path', help='the checkpoint file to load')
    loading.add_argument('--repeats', type=int, default=3,
                         help='processes per variant; the lowest is kept (default: 3)')
    loading.add_argument('--out', help='also write the table to this Markdown file')
    loading.set_defaults(run=run_checkpoint, device='cpu', clock='wall')

    bandwidth = commands.add_parser(
        'roofline', help="EN vs cuDNN BN against docs/cuda_sass.md's roofline model (GPU)")
    bandwidth.add_argument('--memory-formats', nargs='+', choices=tuple(layers.MEMORY_FORMATS),
                           default=list(layers.MEMORY_FORMATS),
                           help='input layouts (default: nchw channels_last)')
    bandwidth.add_argument('--min-run-time', type=float, default=0.2,
                           help='seconds of timing per measurement (default: 0.2)')
    bandwidth.add_argument('--repeats', type=int, default=2,
                           help='measuring rounds; the lowest median is kept (default: 2)')
    bandwidth.add_argument('--out', help='also write the table to this Markdown file')
    bandwidth.set_defaults(run=run_roofline, device='cuda', clock='wall')

    for command in (layer, split, counts, segmentor):
        command.add_argument('--doc', type=Path,
                             help='also put the table into this Markdown file, replacing '
                                  'its section for this subcommand and device (e.g. '
                                  f'{RESULTS_DOC.relative_to(REPO)})')
    for command in (ratio_command, layer, split, segmentor):
        command.add_argument('--device', choices=('cpu', 'cuda'),
                             default='cuda' if torch.cuda.is_available() else 'cpu',
                             help='where to run (default: cuda if available, else cpu)')
        command.add_argument('--threads', type=int, nargs='+',
                             help='CPU thread counts, each measured in turn (default: 1 2 '
                                  'on the CPU, torch.get_num_threads() with --device cuda)')
        command.add_argument('--min-run-time', type=float, default=0.3,
                             help='seconds of timing per measurement (default: 0.3)')
        command.add_argument('--clock', choices=CLOCKS, default='wall',
                             help='wall time, or CPU time of this process (--device cpu '
                                  'and --threads 1 only; on a busy machine) (default: wall)')
        command.add_argument('--repeats', type=int, default=3,
                             help='measuring rounds; the lowest median is kept (default: 3)')
        command.add_argument('--out', help='also write the table to this Markdown file')
    args = parser.parse_args(argv)
    _check(parser, args)
    return args


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill in --threads; reject combinations that would measure nonsense."""
    measures_gn = args.command == 'passes'
    if args.command in ('layer', 'instructions'):
        if not {'BN', 'EN'} <= set(args.variants):
            parser.error('--variants must include BN and EN')
        measures_gn = 'GN(32)' in args.variants
    if measures_gn and any(shape[1] % 32 for shape in _shape_list(args)):
        parser.error('GN(32) needs every shape\'s C divisible by 32')
    if args.command in ('roofline', 'checkpoint'):
        return
    if args.command == 'instructions':
        if args.steps < 1:
            parser.error('--steps must be at least 1')
        return
    if args.threads is None:
        args.threads = [1, 2] if args.device == 'cpu' else [torch.get_num_threads()]
    if args.clock == 'cpu' and args.device != 'cpu':
        parser.error('--clock cpu times CPU work; GPU kernels need --clock wall')
    if args.clock == 'cpu' and max(args.threads) > 1:
        parser.error('--clock cpu adds up the CPU time of every thread: with --threads '
                     'above 1 use --clock wall')
    if args.command == 'model' and not {'BN', 'EN'} <= set(args.norms):
        parser.error('--norms must include BN and EN')


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
