"""The pure-PyTorch references of the compiled ops.

docs/method.md#statistics, #ratio-branch and #output (paper Sec. 3.1-3.3, Eq. 3-4). The
ops are checked against these, and they run wherever the ops do not
(:func:`~en_seg.ops.library.use_ops`): without a build, for ``impl='reference'``, and while
an exporter traces, which translates every op they use.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def channel_moments(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean and biased variance of every (sample, channel) plane.

    Args:
        x: (N, C, H, W) floating tensor.

    Returns:
        ``(mean, var)``, each (N, C) in x's dtype. ``torch.var_mean`` is a one-pass
        Welford-style reduction, free of the E[x²] - E[x]² cancellation.
    """
    var, mean = torch.var_mean(x, dim=(2, 3), correction=0)
    return mean, var


def merge_moments(mean: Tensor, var: Tensor, dim: int) -> Tuple[Tensor, Tensor]:
    """Merge equally sized groups' moments along ``dim`` (law of total variance).

    The merged variance is the mean of the group variances plus the variance of the group
    means, exact for groups of equal size.

    Args:
        mean, var: per-group means and biased variances, same shape.
        dim: the dimension holding the groups; it is kept with size 1.
    """
    merged_mean = mean.mean(dim, keepdim=True)
    merged_var = var.mean(dim, keepdim=True) + (mean - merged_mean).square().mean(
        dim, keepdim=True)
    return merged_mean, merged_var


def channel_affine_norm(x: Tensor, coefficients) -> Tensor:
    """:func:`~en_seg.ops.channel_op.channel_affine_norm` in plain PyTorch: statistics in
    float32 (float64 for a float64 x), y in x's dtype."""
    stats = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    mean, var = channel_moments(stats)
    scale, shift = coefficients(mean, var)
    y = torch.addcmul((shift - scale * mean)[:, :, None, None], stats, scale[:, :, None, None])
    return y.to(x.dtype)


def exemplar_ratios(pooled: Tensor, means: Tensor, rstds: Tensor, conv_weight: Tensor,
                    fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor,
                    fc2_bias: Tensor) -> Tensor:
    """Per-sample importance ratios λ of K normalizers: the ratio branch F(X, Ω; Θ)
    (docs/method.md#ratio-branch, steps 2-6, paper Sec. 3.3, Fig. 2, Eq. 4).

    Args:
        pooled: (N, C) average-pooled features, i.e. the per-(n, c) means of X.
        means: (N, K, C) normalizer k's mean at every (n, c).
        rstds: (N, K, C) normalizer k's 1 / sqrt(variance + eps) at every (n, c).
        conv_weight: (C / r, r, 1) or (C / r, r) weight of the grouped 1-D convolution,
            C / r groups of r channels, no bias.
        fc1_weight, fc1_bias: (πK, K²) and (πK,), the first fully connected layer.
        fc2_weight, fc2_bias: (K, πK) and (K,), the second fully connected layer.
        All tensors share one floating dtype and device.

    Returns:
        (N, K) ratios λ; every row is a softmax and sums to 1.

    Note:
        For IN the pre-normalized input (pooled - mean) * rstd is identically 0, since the
        IN mean of (n, c) is the pooled value itself: a property of the paper's design.
    """
    n, k, c = means.shape
    groups = conv_weight.shape[0]
    x_hat = (pooled.unsqueeze(1) - means) * rstds                      # step 2, (N, K, C)
    z = (x_hat.reshape(n, k, groups, c // groups)
         * conv_weight.reshape(groups, c // groups)).sum(-1)            # step 3, (N, K, C/r)
    v = torch.bmm(z, z.transpose(1, 2)).flatten(1)                    # step 4, (N, K²)
    h = torch.tanh(F.linear(v, fc1_weight, fc1_bias))                  # step 5, (N, πK)
    return torch.softmax(F.linear(h, fc2_weight, fc2_bias), dim=1)    # step 6, (N, K)
