"""The BN member's batch statistics over the whole batch of a process group.

docs/method.md#synchronization-across-processes: each process contributes per-channel sums of
its per-(n, c) moments to one differentiable all-reduce, from which the mean and the
biased variance of all the group's values follow by the law of total variance.
"""
from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.nn.functional import all_reduce


def group_size(group: Optional[dist.ProcessGroup] = None) -> int:
    """The number of processes in ``group`` (None: the default group); 1 where
    torch.distributed is unavailable or no process group is initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def group_batch_moments(mean: Tensor, var: Tensor, plane_size: int,
                        group: Optional[dist.ProcessGroup] = None,
                        ) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean and biased variance of the values of every process's batch.

    Every process of ``group`` calls this in the same order. Each one all-reduces 2C + 1
    float64 values, M Σ_n m_nc, M Σ_n (s_nc + m_nc²) and its value count N·M; in float64,
    the variance formed from the sums as E[x²] - μ² keeps float32's accuracy up to
    |μ| / σ ≈ 10⁴. Processes may hold different N and H·W; every value weighs the same.
    Gradients flow back through the all-reduce to every process's moments.

    Args:
        mean, var: (N, C) per-(n, c) mean m and biased variance s of this process's
            (N, C, H, W) input, float32 or float64.
        plane_size: M = H·W, the values behind each (n, c) moment of this process.
        group: the process group; None for the default one.

    Returns:
        ``(mean, var, count)``: (1, C) mean and biased variance in ``mean``'s dtype, and L,
        the number of values behind them, a 0-d float64 tensor.
    """
    n, c = mean.shape
    moments = mean.double()
    sums = torch.cat([moments.sum(0), (var.double() + moments.square()).sum(0),
                      moments.new_full((1,), n)])
    totals = all_reduce(sums * plane_size, group=group)
    count = totals[-1]
    group_mean = totals[:c] / count
    # Rounding may leave a constant channel a tiny negative variance.
    group_var = (totals[c:2 * c] / count - group_mean.square()).clamp_min(0)
    return group_mean.to(mean.dtype)[None], group_var.to(mean.dtype)[None], count
