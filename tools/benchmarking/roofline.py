"""An EN layer step measured against the roofline model of docs/cuda_sass.md
(#a-roofline-model-of-a-layer-step), at that page's shapes, in both layouts.

The model: a training layer step moves 8·|X| bytes (X read by four passes, dY by two, Y and
dX written once); the passes run at the bandwidth of a device-to-device copy, measured
here on a 1 GiB tensor (a copy reads and writes its bytes: 2 bytes moved per byte); the
coefficient kernels between the passes, one forward and one backward, add
:data:`CHAIN_SECONDS`. Each case reports the measured step, the model's prediction, and the
fraction of the GPU's peak memory bandwidth (:data:`PEAK_BANDWIDTH`, by device name) that
8·|X| over each reaches, beside cuDNN BatchNorm's step.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from en_seg.models import ExemplarNorm2d

from .layers import Shape, layer_input, layer_step
from .timing import Timing, fastest, median_seconds

#: The cases of docs/cuda_sass.md's model table: DeepLabV3 R50-D8 layers at 512×512 crops,
#: a ResNet-50 stage-1 layer at batch 16, the ASPP image pool.
CASES: Tuple[Tuple[Shape, str], ...] = (
    ((2, 64, 256, 256), 'float32'), ((2, 256, 128, 128), 'float32'),
    ((2, 2048, 64, 64), 'float32'), ((8, 512, 64, 64), 'float32'),
    ((2, 256, 128, 128), 'bfloat16'), ((8, 512, 64, 64), 'bfloat16'),
    ((2, 512, 1, 1), 'float32'),
)

#: Seconds the model gives the serial coefficient kernels of a step: one forward and one
#: backward launch of about 3 µs each (a launch and a few dependent global round trips).
CHAIN_SECONDS = 6e-6

#: Peak memory bandwidth, bytes per second, by a substring of torch's device name (the
#: vendors' data sheets); a GPU not listed gets no peak fraction.
PEAK_BANDWIDTH = {'H100 PCIe': 2.0e12, 'H100 NVL': 3.9e12, 'H100': 3.35e12, 'H200': 4.8e12,
                  'A100-SXM4-80GB': 2.04e12, 'A100': 1.56e12}

COPY_BYTES = 2 ** 30


@dataclass
class RooflineCase:
    shape: Shape
    dtype: str
    memory_format: str
    bytes_moved: int
    seconds: Dict[str, float]  # 'EN', 'BN'


def peak_bandwidth(device_name: str) -> Optional[float]:
    """The data sheet's bandwidth of the first :data:`PEAK_BANDWIDTH` key in the name."""
    return next((value for key, value in PEAK_BANDWIDTH.items() if key in device_name), None)


def copy_bandwidth(timing: Timing) -> float:
    """Bytes per second a device-to-device copy of :data:`COPY_BYTES` moves (read + write)."""
    source = torch.empty(COPY_BYTES, dtype=torch.uint8, device='cuda')
    target = torch.empty_like(source)
    return 2 * COPY_BYTES / median_seconds(lambda: target.copy_(source), 1, timing)


def predicted_seconds(bytes_moved: int, bandwidth: float) -> float:
    """The model's time of a step that moves ``bytes_moved`` at ``bandwidth``."""
    return bytes_moved / bandwidth + CHAIN_SECONDS


def measure(timing: Timing, memory_formats: Sequence[str]) -> List[RooflineCase]:
    """EN's and cuDNN BatchNorm's training step at every :data:`CASES` case and layout, on
    the current CUDA device."""
    cases = []
    for memory_format in memory_formats:
        for shape, dtype in CASES:
            x = layer_input(shape, dtype, memory_format, 'cuda', True)
            grad = layer_input(shape, dtype, memory_format, 'cuda', False)
            layers = {'EN': ExemplarNorm2d(shape[1]), 'BN': nn.BatchNorm2d(shape[1])}
            steps = {name: layer_step(layer.cuda().train(), x, grad)
                     for name, layer in layers.items()}
            for step in steps.values():
                step()
            cases.append(RooflineCase(shape, dtype, memory_format, 8 * x.nbytes,
                                      fastest(steps, 1, timing)))
    return cases


def markdown(cases: Sequence[RooflineCase], bandwidth: float, device_name: str,
             header: str) -> str:
    """The cases as a table: measured against the model, and against cuDNN BatchNorm."""
    peak = peak_bandwidth(device_name)
    peak_text = f'{peak / 1e12:.2f} TB/s' if peak else 'not listed for this GPU'
    lines = [
        f'### EN against the roofline model ({device_name})', '', header, '',
        f'Device-to-device copy: {bandwidth / 1e12:.2f} TB/s; peak (data sheet): {peak_text}. '
        'Model: 8·|X| at the copy bandwidth plus '
        f'{CHAIN_SECONDS * 1e6:.0f} µs of coefficient kernels (docs/cuda_sass.md). '
        'A step: forward + backward in training mode, gradients of the input and every '
        'parameter; bfloat16 runs the forward under autocast.', '',
        '| shape (N, C, H, W) | dtype | layout | 8·\\|X\\| (MB) | EN (µs) | model (µs) '
        '| EN / model | EN, of peak | BN (µs) | EN / BN |',
        '|---|---|---|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for case in cases:
        en, bn = case.seconds['EN'], case.seconds['BN']
        model = predicted_seconds(case.bytes_moved, bandwidth)
        of_peak = f'{case.bytes_moved / en / peak:.0%}' if peak else '-'
        lines.append(
            f'| {case.shape} | {case.dtype} | {case.memory_format} | '
            f'{case.bytes_moved / 1e6:.1f} | {en * 1e6:.1f} | {model * 1e6:.1f} | '
            f'{en / model:.2f} | {of_peak} | {bn * 1e6:.1f} | {en / bn:.2f} |')
    return '\n'.join(lines) + '\n'
