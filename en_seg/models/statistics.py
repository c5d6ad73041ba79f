"""Per-(n, c) moments and the IN / LN / BN statistics merged from them.

docs/method.md#statistics (paper Sec. 3.1-3.3): every normalizer's mean and variance is
an exact merge of the per-(n, c) biased moments, whatever the number of normalizers.
"""
from typing import Sequence, Tuple

import torch
from torch import Tensor

#: Normalizers a mixed layer may pool, in the paper's order.
NORMALIZERS = ('IN', 'LN', 'BN')


def check_normalizers(normalizers: Sequence[str]) -> Tuple[str, ...]:
    """Validate a normalizer pool and return it as a tuple.

    Raises:
        ValueError: if the pool is empty, repeats a name, or names an unknown normalizer.
    """
    pool = tuple(normalizers)
    if not pool:
        raise ValueError(f'normalizers must name at least one of {NORMALIZERS}, got an '
                         'empty sequence')
    unknown = [name for name in pool if name not in NORMALIZERS]
    if unknown:
        raise ValueError(f'unknown normalizer(s) {unknown} in normalizers={pool}; '
                         f'choose from {NORMALIZERS}')
    if len(set(pool)) != len(pool):
        raise ValueError(f'normalizers={pool} repeats a normalizer; list each once')
    return pool


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
