"""FLOPs of a segmentor's inference on one image, by mmengine's ``FlopAnalyzer`` (a
multiply-add is one FLOP), with handles for the en_seg ops (:data:`FLOP_HANDLES`).
"""
from math import prod

import torch
from torch import nn


def gflops(model: nn.Module, size: int, device: str) -> float:
    """GFLOPs of ``model`` (an mmseg segmentor) on one ``size`` × ``size`` image in
    inference; leaves the model in eval mode."""
    from mmengine.analysis import FlopAnalyzer

    model.eval()
    with torch.no_grad():
        analyzer = FlopAnalyzer(model, (torch.randn(1, 3, size, size, device=device),))
        analyzer.set_op_handle(**FLOP_HANDLES)
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return analyzer.total() / 1e9


def _shape(value):
    from mmengine.analysis.jit_handles import get_shape
    return get_shape(value)


def _ratio_branch_flops(n: int, c: int, k: int, hidden: int) -> int:
    # The grouped convolution (K·C), the Gram matrix (K²·C/r, ignored: r = 32), fc1 (P·K²),
    # fc2 (K·P), per sample.
    return n * (k * c + hidden * k * k + k * hidden)


def _coefficient_flops(n: int, c: int, k: int, hidden: int) -> int:
    # The ratio branch, and K multiply-adds per (n, c) for each of scale and shift.
    return _ratio_branch_flops(n, c, k, hidden) + 2 * n * k * c


def _exemplar_ratios_flops(inputs, outputs) -> int:
    # pooled (N, C), means (N, K, C), ..., fc1_w (P, K²), ...
    n, k, c = _shape(inputs[1])
    return _ratio_branch_flops(n, c, k, _shape(inputs[4])[0])


def _exemplar_coefficients_flops(inputs, outputs) -> int:
    # mean (N, C), var, weight (K, C), bias, conv_w, fc1_w (P, K²), ...
    n, c = _shape(inputs[0])
    return _coefficient_flops(n, c, _shape(inputs[2])[0], _shape(inputs[5])[0])


def _exemplar_norm_flops(inputs, outputs) -> int:
    # The layer op (x (N, C, H, W), weight (K, C), bias, conv_w, fc1_w (P, K²), ...), which
    # a trace records in place of the ops it runs: its moments, coefficients and affine map.
    n, c, h, w = _shape(inputs[0])
    return (5 * n * c * h * w
            + _coefficient_flops(n, c, _shape(inputs[1])[0], _shape(inputs[4])[0]))


#: FLOPs of the en_seg ops in mmengine's convention for norms (``aten::batch_norm``: 5 per
#: element in training, 2 in inference for the affine map): 3 per element for the moments
#: (sum, deviation, square), 2 for the affine map.
FLOP_HANDLES = {
    'en_seg::channel_moments': lambda inputs, outputs: 3 * prod(_shape(inputs[0])),
    'en_seg::channel_affine': lambda inputs, outputs: 2 * prod(_shape(inputs[0])),
    'en_seg::exemplar_ratios': _exemplar_ratios_flops,
    'en_seg::exemplar_coefficients': _exemplar_coefficients_flops,
    'en_seg::exemplar_norm': _exemplar_norm_flops,
}
