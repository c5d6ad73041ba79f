"""Switchable Normalization (Luo et al., ICLR 2019), the paper's main baseline."""
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .mixed_norm import _MixedNorm


class SwitchableNorm2d(_MixedNorm):
    r"""Switchable Normalization over a 4-D input: one set of ratios for all samples.

    .. math::
        y = \gamma \frac{x - \sum_k w_k \mu^k}{\sqrt{\sum_k w'_k \sigma^{2,k} + \epsilon}}
            + \beta, \qquad w = \mathrm{softmax}(\text{mean\_weight}),\;
            w' = \mathrm{softmax}(\text{var\_weight})

    Statistics and running statistics are those of :class:`ExemplarNorm2d`
    (docs/method.md#switchable-normalization), computed in float32 or better.

    Args:
        num_features: C from an expected input of size (N, C, H, W).
        eps: added to the mixed variance. Default: 1e-5.
        momentum: running-statistics momentum; ``None`` for a cumulative average.
            Default: 0.1.
        normalizers: the pool of K distinct names from ('IN', 'LN', 'BN').
            Default: ('IN', 'LN', 'BN').
        track_running_stats: keep running statistics for evaluation. Default: True.
        norm_impl: ``'fused'`` (compiled ops, the default) or ``'reference'`` (plain
            PyTorch) statistics and apply, as for :class:`ExemplarNorm2d`.

    Attributes:
        weight, bias: γ and β, (C,), initialised to 1 and 0.
        mean_weight, var_weight: (K,) pre-softmax importance weights, initialised to 1 so
            the ratios start uniform.

    Shape:
        Input (N, C, H, W) floating point; output the same shape and dtype.

    Raises:
        ValueError / TypeError: as :class:`ExemplarNorm2d`.

    A plain BatchNorm state dict loads as it is; the importance weights keep their
    initialisation.
    """

    _abbr_ = 'bn'

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: Optional[float] = 0.1,
                 normalizers: Sequence[str] = ('IN', 'LN', 'BN'),
                 track_running_stats: bool = True,
                 norm_impl: str = 'fused') -> None:
        super().__init__(num_features, eps, momentum, track_running_stats, normalizers,
                         norm_impl)
        k = self.num_normalizers
        self.weight = nn.Parameter(torch.empty(num_features))
        self.bias = nn.Parameter(torch.empty(num_features))
        self.mean_weight = nn.Parameter(torch.empty(k))
        self.var_weight = nn.Parameter(torch.empty(k))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        nn.init.ones_(self.mean_weight)
        nn.init.ones_(self.var_weight)

    def _affine_coefficients(self, pooled: Tensor, var: Tensor,
                             count: int) -> Tuple[Tensor, Tensor]:
        # y = scale (x - μ̄) + β = scale (x - pooled) + β + scale (pooled - μ̄).
        means, variances = self._statistics(pooled, var, count)
        dtype = means.dtype
        mixed_mean = torch.einsum('k,nkc->nc', torch.softmax(self.mean_weight.to(dtype), 0),
                                  means)
        mixed_var = torch.einsum('k,nkc->nc', torch.softmax(self.var_weight.to(dtype), 0),
                                 variances)
        scale = self.weight.to(dtype) * torch.rsqrt(mixed_var + self.eps)
        return scale, self.bias.to(dtype) + scale * (pooled - mixed_mean)

    def _batchnorm_to_own(self, weight: Tensor, bias: Optional[Tensor]) -> Dict[str, Tensor]:
        return {'weight': weight} if bias is None else {'weight': weight, 'bias': bias}

    def extra_repr(self) -> str:
        return (f'{self.num_features}, eps={self.eps}, momentum={self.momentum}, '
                f'normalizers={self.normalizers}, '
                f'track_running_stats={self.track_running_stats}, '
                f'norm_impl={self.norm_impl!r}')
