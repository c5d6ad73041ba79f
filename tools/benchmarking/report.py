"""The Markdown tables of the benchmarks' results: what was measured and how, the ratios
of one run, every measurement. Which ratios count as good enough is written down in
docs/benchmark_layer_model.md, not here.
"""
import datetime
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

from .instructions import InstructionCase
from .layers import Case
from .model import DEEPLAB_CONFIG, NUM_CLASSES, ModelRun
from .passes import STEPS as PASSES_STEPS
from .passes import PassesCase
from .ratio import RatioCase
from .timing import Timing

MIB = 2.0 ** 20

#: The baselines every layer and segmentor is also given as a ratio to, where measured.
BASELINES = ('BN', 'GN(32)')

#: The compiled-op-free alternative EN's layer table compares against.
COMPILED_REFERENCE = 'EN-reference-compiled'

#: What the model table says of each segmentor's source: title, how it is built.
MODEL_SOURCES = {
    'mmseg': ('DeepLabV3 R50-D8',
              f'mmseg config `{DEEPLAB_CONFIG}` with `norm_cfg` set to the norm (`BN`, '
              '`GN` with 32 groups, `EN`, each with `requires_grad=True`) in backbone, '
              'decode and auxiliary heads, random init'),
    'torchvision': ('DeepLabV3 ResNet-50, output stride 8 (torchvision)',
                    "torchvision's `deeplabv3_resnet50(weights=None, weights_backbone=None, "
                    f'num_classes={NUM_CLASSES}, aux_loss=True)`, every BatchNorm2d swapped '
                    'for the norm of its width, random init'),
}


def provenance(machine: str, command: str, date: Optional[datetime.date] = None) -> str:
    """'Machine: ... Generated <date> by `<command>`.', the line under a table's title."""
    date = date or datetime.date.today()
    return f'Machine: {machine}. Generated {date.isoformat()} by `{command}`.'


def ratio_text(value: Optional[float], baseline: Optional[float]) -> str:
    """``value / baseline`` to two decimals, or 'n/a' where either was not measured."""
    if value is None or baseline is None:
        return 'n/a'
    return f'{value / baseline:.2f}'


def layer_markdown(cases: Sequence[Case], device: str, timing: Timing,
                   header: str) -> str:
    """The ``layer`` results (:func:`.layers.measure`): EN's ratios per case, every
    layer's time and peak memory, and what was compiled or skipped."""
    lines = [
        f'### One layer, forward + backward ({device})', '', header, '',
        'Time: forward + backward (gradients of the input and every parameter), training '
        'mode; input float32, or bfloat16 with the forward under bfloat16 autocast (float32 '
        'weights), in NCHW or channels_last layout; the lowest of the medians of '
        f'{timing.repeats} measuring round(s), in each of which the layers are timed in turn; '
        'on the CPU denormals flushed to zero and glibc malloc\'s thresholds fixed (blocks '
        'up to 32 MiB reused, larger ones mapped anew by every layer). Peak memory: tensor '
        'bytes the step allocates on top of its input, output gradient and parameters. '
        'Layers: BN `nn.BatchNorm2d` (cuDNN\'s on a GPU), GN(32) `nn.GroupNorm(32, C)`, SN '
        'and EN on the compiled ops, EN-reference `ExemplarNorm2d(C, impl=\'reference\')` '
        '(plain PyTorch), EN-reference-compiled the same under `torch.compile`, compiled '
        'afresh for every case and thread count.',
        '',
        "EN's ratios, each from this one run: its time over GN(32)'s, BN's and "
        "EN-reference-compiled's, its peak memory over BN's.",
        '',
        '| threads | shape (N, C, H, W) | input | EN / GN(32) time | EN / BN time '
        f'| EN / BN peak memory | EN / {COMPILED_REFERENCE} time |',
        '|---:|---|---|---:|---:|---:|---:|',
    ]
    for case in cases:
        en = case.seconds['EN']
        lines.append(
            f'| {case.threads} | {case.shape} | {case.dtype}, {case.memory_format} | '
            f'{ratio_text(en, case.seconds.get("GN(32)"))} | '
            f'{ratio_text(en, case.seconds["BN"])} | '
            f'{ratio_text(case.peak_bytes["EN"], case.peak_bytes["BN"])} | '
            f'{ratio_text(en, case.seconds.get(COMPILED_REFERENCE))} |')
    lines += [
        '', 'Every layer:', '',
        '| threads | shape (N, C, H, W) | input | layer | time (ms) | × BN | × GN(32) '
        '| peak memory (MiB) | × BN |',
        '|---:|---|---|---|---:|---:|---:|---:|---:|',
    ]
    for case in cases:
        for name, seconds in case.seconds.items():
            lines.append(
                f'| {case.threads} | {case.shape} | {case.dtype}, {case.memory_format} | '
                f'{name} | {seconds * 1e3:.3f} | {ratio_text(seconds, case.seconds["BN"])} | '
                f'{ratio_text(seconds, case.seconds.get("GN(32)"))} | '
                f'{case.peak_bytes[name] / MIB:.2f} | '
                f'{ratio_text(case.peak_bytes[name], case.peak_bytes["BN"])} |')
    notes = _layer_notes(cases)
    if notes:
        lines += [''] + [f'- {note}' for note in notes]
    return '\n'.join(lines) + '\n'


def _case_label(case: Case) -> str:
    return f'{case.threads} thread(s), {case.shape} {case.dtype}, {case.memory_format}'


def _layer_notes(cases: Sequence[Case]) -> List[str]:
    """How long compiling took, and which variants were skipped where and why."""
    notes = []
    compile_times: Dict[str, List[float]] = defaultdict(list)
    skipped: Dict[tuple, List[Case]] = defaultdict(list)
    for case in cases:
        for name, seconds in case.compile_seconds.items():
            compile_times[name].append(seconds)
        for name, reason in case.skipped.items():
            skipped[name, reason].append(case)
    for name, times in compile_times.items():
        spread = (f'{times[0]:.1f} s' if len(times) == 1
                  else f'{min(times):.1f} to {max(times):.1f} s per case')
        notes.append(f'{name}: compiled by its first forward + backward, which the times '
                     f'above exclude, in {spread}.')
    for (name, reason), where in skipped.items():
        scope = ('in every case' if len(where) == len(cases)
                 else 'at ' + '; '.join(_case_label(case) for case in where))
        notes.append(f'{name} not measured {scope}: {reason}.')
    return notes


def model_markdown(run: ModelRun, device: str, timing: Timing, header: str) -> str:
    """The ``model`` results (:func:`.model.measure`): every norm's iteration time and peak
    memory per thread count, parameters and GFLOPs."""
    title, source = MODEL_SOURCES[run.source]
    if run.source == 'mmseg':
        iteration = ('`model.train_step` (data preprocessing, forward with both losses, '
                     'backward, SGD step with momentum)')
        counts = ('GFLOPs: mmengine FlopAnalyzer, one '
                  f'{run.size}×{run.size} image, inference (a multiply-add is one FLOP; BN '
                  'counts 2 FLOPs per element; EN 3 per element for its moments, 2 for its '
                  'affine map, and its ratio branch\'s multiply-adds).')
    else:
        iteration = ('forward, cross-entropy of the decode head + 0.4 × the auxiliary '
                     "head's, backward, SGD step with momentum")
        counts = 'GFLOPs are counted for the mmseg segmentor only.'
    norms = list(run.parameters)
    lines = [
        f'### {title}, one training iteration ({device})', '', header, '',
        f'{source}; batch {run.batch}, {run.size}×{run.size} crops, {NUM_CLASSES} classes, '
        f'float32. Iteration: {iteration}; the lowest of the medians of {timing.repeats} '
        'measuring round(s), in each of which the segmentors are timed in turn; on the CPU '
        'denormals flushed to zero (a randomly initialised network\'s gradients drift into '
        'them, which x86 CPUs compute ~100× slower). Peak memory: tensor bytes the '
        'iteration allocates on top of the model, its gradients and the optimizer state.',
        '',
        '| threads | norm | iteration (s) | × BN | × GN(32) | peak memory (MiB) | × BN |',
        '|---:|---|---:|---:|---:|---:|---:|',
    ]
    for threads, seconds in run.seconds.items():
        memory = run.peak_bytes[threads]
        for norm in norms:
            lines.append(f'| {threads} | {norm} | {seconds[norm]:.3f} | '
                         f'{ratio_text(seconds[norm], seconds["BN"])} | '
                         f'{ratio_text(seconds[norm], seconds.get("GN(32)"))} | '
                         f'{memory[norm] / MIB:.0f} | '
                         f'{ratio_text(memory[norm], memory["BN"])} |')
    lines += ['', '| norm | parameters (M) | GFLOPs |', '|---|---:|---:|']
    for norm in norms:
        flops = run.gflops[norm]
        lines.append(f'| {norm} | {run.parameters[norm] / 1e6:.2f} | '
                     f'{"n/a" if flops is None else f"{flops:.2f}"} |')
    parameters = 100 * (run.parameters['EN'] / run.parameters['BN'] - 1)
    overhead = f'EN over BN: {parameters:+.2f}% parameters'
    if run.gflops['BN'] is not None:
        overhead += f', {100 * (run.gflops["EN"] / run.gflops["BN"] - 1):+.2f}% GFLOPs'
    lines += ['', f'{overhead} (paper Table 2, ResNet50 on ImageNet: +1.4% parameters, '
              f'+4.6% GFLOPs). {counts}']
    return '\n'.join(lines) + '\n'


def ratio_markdown(cases: Sequence[RatioCase], device: str, machine: str) -> str:
    """The ``ratio`` results (:func:`.ratio.measure`), in µs."""
    lines = [
        'Ratio branch, forward + backward (gradients of all 8 inputs), K = 3, '
        f'r = min(32, C), π = 50, {device}: {machine}.', '',
        '| threads | N | C | reference (µs) | op (µs) | reference / op |',
        '|---:|---:|---:|---:|---:|---:|',
    ]
    for case in cases:
        reference, op = case.seconds['reference'], case.seconds['op']
        lines.append(f'| {case.threads} | {case.n} | {case.c} | {reference * 1e6:.1f} | '
                     f'{op * 1e6:.1f} | {reference / op:.2f} |')
    return '\n'.join(lines) + '\n'


def instructions_markdown(cases: Sequence[InstructionCase], steps: int,
                          header: str) -> str:
    """The ``instructions`` results (:func:`.instructions.measure`): EN's ratios per shape
    and every layer's instructions per step."""
    names = list(cases[0].instructions) if cases else []
    baselines = [name for name in BASELINES if name in names]
    lines = [
        '### One layer, forward + backward: instructions (cpu)', '', header, '',
        'Instructions per forward + backward (gradients of the input and every parameter), '
        'training mode, float32 NCHW input, one thread, counted by valgrind\'s callgrind: '
        f'the difference of a {2 * steps}-step and a {steps}-step run, over {steps}. A '
        'measure of fixed costs, which other processes do not change; not of time where '
        'the step is memory-bound.',
        '',
        '| shape (N, C, H, W) | ' + ' | '.join(f'EN / {name}' for name in baselines) + ' | '
        + ' | '.join(f'{name} (thousands)' for name in names) + ' |',
        '|---|' + '---:|' * (len(baselines) + len(names)),
    ]
    for case in cases:
        en = case.instructions['EN']
        lines.append(f'| {case.shape} | '
                     + ' | '.join(ratio_text(en, case.instructions[name]) for name in baselines)
                     + ' | ' + ' | '.join(f'{case.instructions[name] / 1e3:.0f}'
                                          for name in names) + ' |')
    return '\n'.join(lines) + '\n'


def passes_markdown(cases: Sequence[PassesCase], device: str, timing: Timing,
                    header: str) -> str:
    """The ``passes`` results (:func:`.passes.measure`): EN's passes over X against
    GroupNorm's kernels, the whole layers, and each layer's time beyond them."""
    lines = [
        f'### Where the layer\'s time goes: passes over X against GroupNorm\'s ({device})', '',
        header, '',
        'Float32 NCHW input, training mode; the lowest of the medians of '
        f'{timing.repeats} measuring round(s), in each of which the steps are timed in turn. '
        'EN passes: `channel_moments` + `channel_affine` (forward), '
        '`channel_affine_grad_sums` + `channel_norm_input_grad` (backward), called below '
        'autograd; GN(32) kernels: ATen\'s `native_group_norm` and '
        '`native_group_norm_backward`, the same. Layers: forward + backward (gradients of '
        'the input and every parameter). Beyond the passes: the layer\'s time less its '
        'passes\' (kernels\'), for EN its coefficient ops, dispatch, autograd and Python.',
        '',
        '| threads | shape (N, C, H, W) | EN / GN(32) passes forward '
        '| EN / GN(32) passes backward | EN / GN(32) layer | EN beyond its passes (µs) '
        '| GN(32) beyond its kernels (µs) |',
        '|---:|---|---:|---:|---:|---:|---:|',
    ]
    for case in cases:
        t = case.seconds
        en_passes = t['EN passes forward'] + t['EN passes backward']
        gn_kernels = t['GN(32) kernels forward'] + t['GN(32) kernels backward']
        lines.append(
            f'| {case.threads} | {case.shape} | '
            f'{ratio_text(t["EN passes forward"], t["GN(32) kernels forward"])} | '
            f'{ratio_text(t["EN passes backward"], t["GN(32) kernels backward"])} | '
            f'{ratio_text(t["EN"], t["GN(32)"])} | {(t["EN"] - en_passes) * 1e6:.0f} | '
            f'{(t["GN(32)"] - gn_kernels) * 1e6:.0f} |')
    lines += [
        '', 'Every step (µs):', '',
        '| threads | shape (N, C, H, W) | ' + ' | '.join(PASSES_STEPS) + ' |',
        '|---:|---|' + '---:|' * len(PASSES_STEPS),
    ]
    for case in cases:
        lines.append(f'| {case.threads} | {case.shape} | '
                     + ' | '.join(f'{case.seconds[name] * 1e6:.0f}' for name in PASSES_STEPS)
                     + ' |')
    return '\n'.join(lines) + '\n'
