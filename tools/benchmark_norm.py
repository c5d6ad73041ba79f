"""The ``layer`` and ``model`` subcommands of tools/benchmark.py: what swapping BatchNorm for
Exemplar Normalization costs in time and memory.

``layer``: one forward + backward (gradients of the input and every parameter) of BN
(``nn.BatchNorm2d``, cuDNN's on a GPU), GN(32), SN, EN, EN on its pure-PyTorch path and the
literal EN of paper Eq. 3 (K normalized maps materialised, tests/reference.py), in training
mode, at the shapes of ResNet / DeepLab layers, in float32 or bfloat16 autocast, NCHW or
channels_last. ``model``: one training iteration (forward, backward, SGD step) of DeepLabV3
ResNet-50 at output stride 8 with EN and with BN: mmsegmentation's R50-D8 (with parameters
and GFLOPs) or, without OpenMMLab, torchvision's ``deeplabv3_resnet50``. Only torch (and
torchvision for that model) is imported unless mmseg is used.

What is measured:

- Time: tools/benchmark.py's timer (``torch.utils.benchmark.Timer.blocked_autorange``
  median, wall or ``--clock cpu`` time); the variants are measured in turn ``--repeats``
  times and the lowest median counts, which filters out other processes on a shared
  machine.
- On the CPU denormal floats are flushed to zero (``torch.set_flush_denormal``): x86 CPUs
  take ~100x longer on them, and a randomly initialised network's gradients drift into them
  after a few training steps, which made one model iteration take from 5 s to 13 s.
- On the CPU glibc malloc's thresholds are fixed (``mallopt``): blocks up to 32 MiB are
  reused from the heap, larger ones mapped anew (with page faults) by every variant alike,
  rather than as the allocation history of the process happens to decide.
- Peak memory: the largest total of tensor bytes the step allocates on top of what was
  allocated before it (inputs, parameters, optimizer state): outputs, saved activations,
  gradients, temporaries. On the CPU from every allocation and free torch.profiler records
  with ``profile_memory=True``, in time order; on a GPU ``torch.cuda.max_memory_allocated``.
"""
import argparse
import ctypes
import datetime
import importlib.util
import os
import sys
from math import prod
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.benchmark import Timer

from en_seg.models import ExemplarNorm2d, SwitchableNorm2d
from en_seg.ops.channel_op import fused_kernels_available

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / 'docs' / 'benchmark_layer_model.md'
LAYER_SHAPES = ((2, 256, 128, 128), (2, 512, 64, 64), (2, 2048, 64, 64), (16, 64, 56, 56))
DEEPLAB_CONFIG = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-80k_ade20k-512x512.py'
# The project's targets, as ratios to BatchNorm: (time, peak memory).
LAYER_TARGETS = {'cpu': (1.5, 1.2), 'cuda': (1.3, None)}
MODEL_TARGETS = (1.15, 1.1)
MIB = 2.0 ** 20
#: ``layer --dtypes``: float32, or bfloat16 activations and gradients with the forward
#: under bfloat16 autocast (float32 weights), as in a network trained with autocast.
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16}
#: ``layer --memory-formats``.
MEMORY_FORMATS = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}
#: ``model --impl``: where the segmentor comes from; 'auto' is mmseg where it is installed.
MODEL_IMPLS = ('auto', 'mmseg', 'torchvision')
NUM_CLASSES = 150  # ADE20K's, as in the mmseg config


def add_subcommands(commands, median_us: Callable[[str, dict, argparse.Namespace], float],
                    environment: Callable[[argparse.Namespace], str]) -> Tuple:
    """Add ``layer`` and ``model`` to tools/benchmark.py's subcommands.

    Args:
        commands: its argparse subparsers.
        median_us: its timer, (statement, globals, args) -> median microseconds, honouring
            its common options (--threads, --min-run-time, --clock).
        environment: its one-line description of the machine, args -> str.

    Returns:
        The two subparsers, to which tools/benchmark.py adds its common options (--device,
        --threads, --min-run-time, --clock, --repeats, --out).
    """
    layer = commands.add_parser(
        'layer', help='EN vs BN, GN, SN and the literal EN: one layer, forward + backward')
    layer.add_argument('--shapes', nargs='+', type=_shape, default=LAYER_SHAPES,
                       metavar='N,C,H,W',
                       help='input shapes (default: those of docs/benchmark_layer_model.md)')
    layer.add_argument('--variants', nargs='+', choices=tuple(LAYER_VARIANTS),
                       default=tuple(LAYER_VARIANTS),
                       help='layers to measure, BN and EN among them (default: all)')
    layer.add_argument('--dtypes', nargs='+', choices=tuple(DTYPES), default=['float32'],
                       help='float32, and/or bfloat16 under autocast (default: float32)')
    layer.add_argument('--memory-formats', nargs='+', choices=tuple(MEMORY_FORMATS),
                       default=['nchw'], help='input layouts (default: nchw)')
    layer.set_defaults(run=bench_layer)

    model = commands.add_parser(
        'model', help='DeepLabV3 R50-D8 with EN vs BN: one training iteration, params, GFLOPs')
    model.add_argument('--batch', type=int, default=2, help='images per batch (default: 2)')
    model.add_argument('--size', type=int, default=256,
                       help='square crop side in pixels (default: 256)')
    model.add_argument('--impl', choices=MODEL_IMPLS, default='auto',
                       help="mmseg's DeepLabV3 R50-D8 or torchvision's deeplabv3_resnet50 "
                            "(default: auto, mmseg where it is installed)")
    model.set_defaults(run=bench_model)

    for command in (layer, model):
        command.add_argument('--doc', type=Path,
                             help='also put the table into this Markdown file, replacing '
                                  'its section for this subcommand and device (e.g. '
                                  f'{DEFAULT_OUTPUT.relative_to(REPO)})')
        command.set_defaults(median_us=median_us, environment=environment)
    return layer, model


def _shape(text: str) -> Tuple[int, ...]:
    shape = tuple(int(v) for v in text.split(','))
    if len(shape) != 4:
        raise argparse.ArgumentTypeError(f'expected N,C,H,W, got {text!r}')
    return shape


# ---------------------------------------------------------------------------------------
# Measuring


def fastest_median(steps: Dict[str, Callable[[], None]],
                   args: argparse.Namespace) -> Dict[str, float]:
    """Seconds per call of every step: the lowest, over ``args.repeats`` rounds that
    measure the steps in turn, of tools/benchmark.py's median."""
    best = {name: float('inf') for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            best[name] = min(best[name], args.median_us('step()', {'step': step}, args) / 1e6)
    return best


def peak_bytes(step: Callable[[], None], device: str) -> int:
    """Largest total of tensor bytes live during ``step()`` beyond those live before it."""
    if device == 'cuda':
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # Every allocation (+bytes) and free (-bytes) of the CPU allocator, in time order.
    records = sorted((event.start_ns(), event.nbytes())
                     for event in prof.profiler.kineto_results.events()
                     if event.name() == '[memory]' and event.device_type().name == 'CPU')
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak


def _prepare(args: argparse.Namespace) -> str:
    """Checks the build, sets the threads; returns the machine line of the results."""
    if not fused_kernels_available(torch.empty(0, device=args.device)):
        raise SystemExit(f'the fused EN ops have no {args.device} kernel in this build of '
                         'en_seg.ops._C: run `pip install --no-build-isolation -e .` first')
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # x86 CPUs compute on denormal floats ~100x slower, and a randomly initialised network's
    # gradients drift into them after a few steps, unevenly between runs: flush them to
    # zero (returns False where the CPU cannot), so that times measure the arithmetic.
    torch.set_flush_denormal(args.device == 'cpu')
    if args.device == 'cpu':
        _steady_malloc()
    machine = args.environment(args)
    if args.device == 'cpu':
        machine += f' ({os.cpu_count()} logical CPUs)'
    return (f'Machine: {machine}. Generated {datetime.date.today().isoformat()} by '
            f'`{_command_line()}`.')


def _steady_malloc() -> None:
    """Fix glibc malloc's thresholds (no-op elsewhere): blocks up to 32 MiB come from and
    return to the heap, larger ones are mapped and unmapped, for every variant alike.

    By default glibc adapts the thresholds to the allocation history and may hand freed
    activations back to the kernel; the next step then pays page faults, which made a step
    up to 2.5x slower depending on which variant ran before.
    """
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 * 2 ** 20)
    libc.mallopt(m_trim_threshold, 2 ** 30)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# layer


class LiteralExemplarNorm(nn.Module):
    """Paper Eq. 3 as written: K normalized maps of X, weighted and summed
    (tests/reference.py), with an ExemplarNorm2d's parameters; the baseline that folding
    into one affine map avoids."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        sys.path.insert(0, str(REPO / 'tests'))
        from reference import exemplar_norm
        self.exemplar_norm = exemplar_norm
        self.layer = ExemplarNorm2d(num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.exemplar_norm(x, self.layer)[0]


LAYER_VARIANTS: Dict[str, Callable[[int], nn.Module]] = {
    'BN': nn.BatchNorm2d,
    'GN(32)': lambda c: nn.GroupNorm(32, c),
    'SN': SwitchableNorm2d,
    'EN': ExemplarNorm2d,
    'EN, PyTorch path': lambda c: ExemplarNorm2d(c, norm_impl='reference'),
    'EN, literal K maps': LiteralExemplarNorm,
}


def layer_step(layer: nn.Module, x: Tensor, grad: Tensor) -> Callable[[], None]:
    """Forward and backward: the gradients of x and of every parameter. A bfloat16 x runs
    the forward under bfloat16 autocast and the backward outside it, as torch recommends."""
    inputs = (x, *layer.parameters())
    autocast = x.dtype == torch.bfloat16

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            y = layer(x)
        torch.autograd.grad(y, inputs, grad)

    return step


def layer_input(shape: Tuple[int, ...], dtype: str, memory_format: str, device: str,
                requires_grad: bool) -> Tensor:
    """A standard-normal ``shape`` tensor in a ``DTYPES`` dtype and ``MEMORY_FORMATS``
    layout."""
    x = torch.randn(shape, device=device).to(DTYPES[dtype])
    return x.to(memory_format=MEMORY_FORMATS[memory_format]).requires_grad_(requires_grad)


def bench_layer(args: argparse.Namespace) -> str:
    """Every variant at every shape, dtype and layout; returns the Markdown table (and
    writes --doc).

    Raises:
        SystemExit: where --variants lacks BN or EN, the baseline and the layer compared.
    """
    if not {'BN', 'EN'} <= set(args.variants):
        raise SystemExit('--variants must include BN and EN')
    machine = _prepare(args)
    rows = []
    for shape in args.shapes:
        layers = {name: LAYER_VARIANTS[name](shape[1]).to(args.device).train()
                  for name in args.variants}
        for dtype in args.dtypes:
            for memory_format in args.memory_formats:
                x = layer_input(shape, dtype, memory_format, args.device, True)
                grad = layer_input(shape, dtype, memory_format, args.device, False)
                steps = {name: layer_step(layer, x, grad) for name, layer in layers.items()}
                for step in steps.values():
                    step()
                seconds = fastest_median(steps, args)
                memory = {name: peak_bytes(step, args.device) for name, step in steps.items()}
                config = f'{dtype}, {memory_format}'
                rows.append((shape, config, seconds, memory))
                _progress(f'{shape} {config}: ' + ', '.join(
                    f'{name} {seconds[name] / seconds["BN"]:.2f}x time, '
                    f'{memory[name] / memory["BN"]:.2f}x memory' for name in steps))
    text = layer_markdown(rows, args.device, machine)
    if args.doc:
        write_section(args.doc, f'layer-{args.device}', text)
    return text


def layer_markdown(rows, device: str, machine: str) -> str:
    time_target, memory_target = LAYER_TARGETS[device]
    lines = [
        f'### One layer, forward + backward ({device})', '', machine, '',
        'Time: forward + backward (gradients of the input and every parameter), training '
        'mode; input float32, or bfloat16 with the forward under bfloat16 autocast (float32 '
        'weights), in NCHW or channels_last layout; the lowest of the medians of the '
        'measuring rounds; on the CPU denormals flushed to zero and glibc malloc\'s '
        'thresholds fixed (blocks up to 32 MiB reused, larger ones mapped anew by every '
        'variant). Peak memory: tensor bytes the step allocates on top of its input, '
        'gradient and parameters. Ratios are to BN.',
        '',
        '| shape (N, C, H, W) | input | layer | time (ms) | × BN | peak memory (MiB) | × BN |',
        '|---|---|---|---:|---:|---:|---:|',
    ]
    verdicts = []
    for shape, config, seconds, memory in rows:
        for name in seconds:
            lines.append(
                f'| {tuple(shape)} | {config} | {name} | {seconds[name] * 1e3:.2f} | '
                f'{seconds[name] / seconds["BN"]:.2f} | {memory[name] / MIB:.1f} | '
                f'{memory[name] / memory["BN"]:.2f} |')
        time_ratio = seconds['EN'] / seconds['BN']
        memory_ratio = memory['EN'] / memory['BN']
        verdicts.append(_verdict(f'{tuple(shape)} {config}', time_ratio, time_target,
                                 memory_ratio, memory_target))
    target = f'EN ≤ {time_target}× BN time' + (
        f' and ≤ {memory_target}× BN peak memory' if memory_target else '')
    lines += ['', f'Target: {target} at every shape.', ''] + [f'- {v}' for v in verdicts]
    return '\n'.join(lines) + '\n'


def _verdict(what: str, time_ratio: float, time_target: float,
             memory_ratio: Optional[float] = None,
             memory_target: Optional[float] = None) -> str:
    parts = [f'time {time_ratio:.2f}× ({"met" if time_ratio <= time_target else "MISSED"})']
    if memory_target is not None:
        parts.append(f'memory {memory_ratio:.2f}× '
                     f'({"met" if memory_ratio <= memory_target else "MISSED"})')
    return f'{what}: EN ' + ', '.join(parts)


# ---------------------------------------------------------------------------------------
# model


def build_deeplab(norm: str, size: int, device: str) -> nn.Module:
    """DeepLabV3 R50-D8 from mmsegmentation's ADE20K config with ``norm`` ('EN' or 'BN')
    everywhere (backbone, decode and auxiliary heads), randomly initialised (no download),
    its data preprocessor padding to ``size``."""
    from mmengine.hub import get_config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    cfg = get_config(DEEPLAB_CONFIG)
    norm_cfg = dict(type=norm, requires_grad=True)
    cfg.model.pretrained = None
    for part in ('backbone', 'decode_head', 'auxiliary_head'):
        cfg.model[part].norm_cfg = norm_cfg
    cfg.model.data_preprocessor.size = (size, size)
    return MODELS.build(cfg.model).to(device)


def segmentation_batch(batch: int, size: int, num_classes: int) -> dict:
    """A batch in the form mmseg's train_step takes: uint8 images, label maps."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(batch):
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, size, size), generator=gen))
        samples.append(sample)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen)
              for _ in range(batch)]
    return dict(inputs=images, data_samples=samples)


def training_step(model: nn.Module, data: dict) -> Callable[[], None]:
    """One iteration of mmseg training: forward (loss), backward, SGD step."""
    from mmengine.optim import OptimWrapper

    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                                                 weight_decay=5e-4))
    model.train()

    def step() -> None:
        model.train_step(data, optim_wrapper)

    return step


def complexity(model: nn.Module, size: int, device: str) -> Tuple[int, float]:
    """Parameters and GFLOPs of one size x size image (inference, mmengine's FlopAnalyzer:
    a multiply-add is one FLOP; with handles for the en_seg ops, see FLOP_HANDLES)."""
    from mmengine.analysis import FlopAnalyzer, parameter_count

    model.eval()
    with torch.no_grad():
        analyzer = FlopAnalyzer(model, (torch.randn(1, 3, size, size, device=device),))
        analyzer.set_op_handle(**FLOP_HANDLES)
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        flops = analyzer.total()
    return parameter_count(model)[''], flops / 1e9


def _numel(value) -> int:
    from mmengine.analysis.jit_handles import get_shape
    return prod(get_shape(value))


def _ratio_branch_flops(inputs, outputs) -> int:
    # pooled (N, C), means (N, K, C), ..., fc1_w (P, K²), ..., fc2_w (K, P): the grouped
    # convolution (K·C), the Gram matrix (K²·C/r, ignored: r = 32), fc1 (P·K²), fc2 (K·P).
    from mmengine.analysis.jit_handles import get_shape
    n, k, c = get_shape(inputs[1])
    hidden = get_shape(inputs[4])[0]
    return n * (k * c + hidden * k * k + k * hidden)


def _exemplar_coefficients_flops(inputs, outputs) -> int:
    # mean (N, C), var, weight (K, C), bias, conv_w, fc1_w (P, K²), ...: the ratio branch as
    # above, and K multiply-adds per (n, c) for each of scale and shift.
    from mmengine.analysis.jit_handles import get_shape
    n, c = get_shape(inputs[0])
    k = get_shape(inputs[2])[0]
    hidden = get_shape(inputs[5])[0]
    return n * (k * c + hidden * k * k + k * hidden) + 2 * n * k * c


#: FLOPs of the en_seg ops in mmengine's convention for norms (aten::batch_norm: 5 per
#: element in training, 2 in inference for the affine map): 3 per element for the moments
#: (sum, deviation, square), 2 for the affine map.
FLOP_HANDLES = {
    'en_seg::channel_moments': lambda inputs, outputs: 3 * _numel(inputs[0]),
    'en_seg::channel_affine': lambda inputs, outputs: 2 * _numel(inputs[0]),
    'en_seg::exemplar_ratios': _ratio_branch_flops,
    'en_seg::exemplar_coefficients': _exemplar_coefficients_flops,
}


def build_torchvision_deeplab(norm: str, device: str) -> nn.Module:
    """torchvision's DeepLabV3 ResNet-50 (which dilates the last two stages: output stride
    8, as R50-D8) with an auxiliary FCN head and NUM_CLASSES classes, randomly initialised
    (no download); for ``norm='EN'`` every BatchNorm2d (backbone and heads) is swapped for
    an ExemplarNorm2d of its width."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                               aux_loss=True)
    if norm == 'EN':
        _swap_batchnorm(model)
    return model.to(device)


def _swap_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, ExemplarNorm2d(child.num_features))
        else:
            _swap_batchnorm(child)


def torchvision_training_step(model: nn.Module, batch: int, size: int,
                              device: str) -> Callable[[], None]:
    """One training iteration as mmseg's: cross-entropy of the decode head plus 0.4 times
    the auxiliary head's, backward, SGD step with momentum; on standard-normal images and
    uniformly random labels."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=gen).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step() -> None:
        out = model(images)
        loss = (F.cross_entropy(out['out'], labels)
                + 0.4 * F.cross_entropy(out['aux'], labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def _model_impl(requested: str) -> str:
    if requested != 'auto':
        return requested
    return 'mmseg' if importlib.util.find_spec('mmseg') else 'torchvision'


def bench_model(args: argparse.Namespace) -> str:
    """Both segmentors; returns the Markdown table (and writes --doc)."""
    machine = _prepare(args)
    impl = _model_impl(args.impl)
    norms = ('BN', 'EN')
    if impl == 'mmseg':
        models = {norm: build_deeplab(norm, args.size, args.device) for norm in norms}
        data = segmentation_batch(args.batch, args.size, NUM_CLASSES)
        steps = {norm: training_step(model, data) for norm, model in models.items()}
    else:
        models = {norm: build_torchvision_deeplab(norm, args.device) for norm in norms}
        steps = {norm: torchvision_training_step(model, args.batch, args.size, args.device)
                 for norm, model in models.items()}
    for step in steps.values():
        step()  # creates the SGD momentum buffers, part of the baseline
    seconds = fastest_median(steps, args)
    memory = {norm: peak_bytes(step, args.device) for norm, step in steps.items()}
    # mmengine's FlopAnalyzer counts FLOPs; without it, parameters only.
    stats = {norm: complexity(model, args.size, args.device) if impl == 'mmseg'
             else (sum(p.numel() for p in model.parameters()), None)
             for norm, model in models.items()}
    _progress(f'EN / BN: {seconds["EN"] / seconds["BN"]:.2f}x time, '
              f'{memory["EN"] / memory["BN"]:.2f}x memory')
    text = model_markdown(args, impl, seconds, memory, stats, machine)
    if args.doc:
        section = f'model-{args.device}' + ('' if impl == 'mmseg' else '-torchvision')
        write_section(args.doc, section, text)
    return text


#: What the model table says of each segmentor.
MODEL_DESCRIPTIONS = {
    'mmseg': ('DeepLabV3 R50-D8',
              f'mmseg config `{DEEPLAB_CONFIG}` with `norm_cfg=dict(type=NORM, '
              'requires_grad=True)` in backbone, decode and auxiliary heads, random init'),
    'torchvision': ('DeepLabV3 ResNet-50, output stride 8 (torchvision)',
                    "torchvision's `deeplabv3_resnet50(weights=None, weights_backbone=None, "
                    f'num_classes={NUM_CLASSES}, aux_loss=True)`, every BatchNorm2d swapped '
                    'for EN in the EN row, random init'),
}


def model_markdown(args, impl: str, seconds, memory, stats, machine: str) -> str:
    time_target, memory_target = MODEL_TARGETS
    title, source = MODEL_DESCRIPTIONS[impl]
    if impl == 'mmseg':
        iteration = ('`model.train_step` (data preprocessing, forward with both losses, '
                     'backward, SGD step with momentum)')
        counts = ('Parameters and GFLOPs: mmengine FlopAnalyzer, one '
                  f'{args.size}×{args.size} image, inference (a multiply-add is one FLOP; BN '
                  'counts 2 FLOPs per element; EN 3 per element for its moments, 2 for its '
                  'affine map, and its ratio branch\'s multiply-adds).')
    else:
        iteration = ('forward, cross-entropy of the decode head + 0.4 × the auxiliary '
                     "head's, backward, SGD step with momentum")
        counts = 'GFLOPs need mmengine (not installed or not used).'
    lines = [
        f'### {title}, one training iteration ({args.device})', '', machine, '',
        f'{source}; batch {args.batch}, {args.size}×{args.size} crops, {NUM_CLASSES} '
        f'classes, float32. Iteration: {iteration}; fastest of {args.repeats}, on the CPU '
        'with denormals flushed to zero (the gradients of a randomly initialised network '
        'drift into denormals, which x86 CPUs compute ~100× slower). Peak memory: tensor '
        'bytes the iteration allocates on top of the model, its gradients and the optimizer '
        f'state. {counts}', '',
        '| norm | parameters (M) | GFLOPs | iteration (s) | × BN | peak memory (MiB) | × BN |',
        '|---|---:|---:|---:|---:|---:|---:|',
    ]
    for norm in seconds:
        params, gflops = stats[norm]
        flops = 'n/a' if gflops is None else f'{gflops:.2f}'
        lines.append(f'| {norm} | {params / 1e6:.2f} | {flops} | {seconds[norm]:.3f} | '
                     f'{seconds[norm] / seconds["BN"]:.2f} | {memory[norm] / MIB:.0f} | '
                     f'{memory[norm] / memory["BN"]:.2f} |')
    (params_bn, gflops_bn), (params_en, gflops_en) = stats['BN'], stats['EN']
    overhead = f'EN over BN: {100 * (params_en / params_bn - 1):+.2f}% parameters'
    if gflops_bn is not None:
        overhead += f', {100 * (gflops_en / gflops_bn - 1):+.2f}% GFLOPs'
    lines += [
        '', overhead + ' (paper Table 2, ResNet50 on ImageNet: +1.4% parameters, +4.6% '
        'GFLOPs).', '',
        f'Target: EN ≤ {time_target}× BN time and ≤ {memory_target}× BN peak memory.', '',
        '- ' + _verdict(title, seconds['EN'] / seconds['BN'], time_target,
                        memory['EN'] / memory['BN'], memory_target),
    ]
    return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------------------
# The results file


def _command_line() -> str:
    return ' '.join(['python', os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def write_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` between the markers of section ``name`` in the markdown file ``path``,
    replacing what was there; other sections are kept."""
    begin, end = f'<!-- {name}:begin -->', f'<!-- {name}:end -->'
    block = f'{begin}\n{text}{end}\n'
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else (
        '# EN vs BatchNorm: speed and memory\n\nRegenerate with `make benchmark` (the `layer` '
        'and `model` subcommands of tools/benchmark.py, each updating its own section). On a '
        'shared machine time with `--threads 1 --clock cpu`, the CPU time of this process, '
        'which other processes change little; repeated runs still differ by a few '
        'percent.\n\n')
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        rest = rest.split(end, 1)[1].lstrip('\n')
        new = head + block + ('\n' + rest if rest else '')
    else:
        new = old.rstrip('\n') + '\n\n' + block
    path.write_text(new)
