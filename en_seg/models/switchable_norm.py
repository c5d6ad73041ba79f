"""Switchable Normalization (Luo et al., ICLR 2019), the paper's main baseline."""
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..ops import switchable_norm
from .mixed_norm import _MixedNorm


class SwitchableNorm2d(_MixedNorm):
    r"""Switchable Normalization over a 4-D (or 3-D) input: one set of ratios for all
    samples.

    .. math::
        y = \gamma \frac{x - \sum_k w_k \mu^k}{\sqrt{\sum_k w'_k \sigma^{2,k} + \epsilon}}
            + \beta, \qquad w = \mathrm{softmax}(\text{mean\_weight}),\;
            w' = \mathrm{softmax}(\text{var\_weight})

    Statistics and running statistics are those of :class:`ExemplarNorm2d`
    (docs/method.md#switchable-normalization), computed in float32 or better.

    ``num_features, eps, momentum`` may be passed by position, as for ``nn.BatchNorm2d``;
    every other argument is keyword-only.

    Args:
        num_features: C from an expected input of size (N, C, H, W).
        eps: added to the mixed variance. Default: 1e-5.
        momentum: running-statistics momentum; ``None`` for a cumulative average.
            Default: 0.1.
        track_running_stats: keep running statistics for evaluation. Default: True.
        normalizers: the pool of K distinct names from ('IN', 'LN', 'BN').
            Default: ('IN', 'LN', 'BN').
        impl: ``'op'`` (compiled ops, the default) or ``'reference'`` (plain PyTorch), as
            for :class:`ExemplarNorm2d`.
        sync_stats, process_group: in training, the BN member's batch statistics are
            those of the whole batch of ``process_group`` (None: the default group), as
            for :class:`ExemplarNorm2d` (docs/method.md#synchronization-across-processes).
            Default: False, None.
        device, dtype: where and in which floating-point dtype the parameters and running
            statistics are created, as for ``nn.BatchNorm2d``; ``num_batches_tracked`` is
            always int64. Default: None (torch's defaults: CPU, the default dtype).

    Attributes:
        weight, bias: γ and β, (C,), initialised to 1 and 0.
        mean_weight, var_weight: (K,) pre-softmax importance weights, initialised to 1 so
            the ratios start uniform.

    Shape:
        Input (N, C, H, W), or (N, C, L) as for :class:`ExemplarNorm2d`, floating point;
        output the same shape and dtype.

    Raises:
        ValueError / TypeError: as :class:`ExemplarNorm2d`.

    Examples::

        >>> import torch
        >>> from en_seg.models import SwitchableNorm2d
        >>> layer = SwitchableNorm2d(16)
        >>> layer  # doctest: +NORMALIZE_WHITESPACE
        SwitchableNorm2d(
          16, eps=1e-05, momentum=0.1, track_running_stats=True,
          normalizers=('IN', 'LN', 'BN'), impl='op', sync_stats=False
          (bn_member_mode): _BNMemberMode()
        )
        >>> layer(torch.randn(2, 16, 4, 4)).shape
        torch.Size([2, 16, 4, 4])
        >>> torch.softmax(layer.mean_weight, 0)  # the ratios start uniform
        tensor([0.3333, 0.3333, 0.3333], grad_fn=<SoftmaxBackward0>)

    A plain BatchNorm state dict loads as it is; the importance weights keep their
    initialisation. A built model's BatchNorm layers become SN layers by
    :meth:`convert_batchnorm`.
    """

    _abbr_ = 'bn'

    def _build_members(self, device=None, dtype=None) -> None:
        self.mean_weight = nn.Parameter(torch.empty(self.num_normalizers, device=device,
                                                    dtype=dtype))
        self.var_weight = nn.Parameter(torch.empty(self.num_normalizers, device=device,
                                                   dtype=dtype))

    def _affine_shape(self) -> Tuple[int, ...]:
        return (self.num_features,)

    def reset_parameters(self) -> None:
        super().reset_parameters()  # running statistics, weight = 1, bias = 0
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

    def _fused_forward(self, x: Tensor) -> Tensor:
        own = self._parameters
        params = self._in_statistics_dtype(
            x, (own['weight'], own['bias'], own['mean_weight'], own['var_weight']))
        running_mean, running_var, tracked, batch_stats = self._coefficient_op_statistics()
        return switchable_norm(x, *params, running_mean, running_var, tracked,
                               self._normalizer_codes, batch_stats, self.momentum,
                               self.eps)

    def _batchnorm_affine(self) -> Tuple[Tensor, Tensor]:
        return self.weight.detach(), self.bias.detach()

    def _batchnorm_to_own(self, weight: Tensor, bias: Optional[Tensor]) -> Dict[str, Tensor]:
        return {'weight': weight} if bias is None else {'weight': weight, 'bias': bias}


class SyncSwitchableNorm2d(SwitchableNorm2d):
    """:class:`SwitchableNorm2d` with ``sync_stats=True`` by default, the ``norm_cfg`` type
    ``'SyncSN'`` (named like mmcv's ``'SyncBN'``).

    Arguments, parameters, state dict and errors are those of :class:`SwitchableNorm2d`;
    docs/method.md#synchronization-across-processes.

    Examples::

        >>> from en_seg.models import SyncSwitchableNorm2d
        >>> SyncSwitchableNorm2d(16).sync_stats
        True
    """

    def __init__(self, *args, sync_stats: bool = True, **kwargs) -> None:
        super().__init__(*args, sync_stats=sync_stats, **kwargs)
