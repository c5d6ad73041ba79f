"""Exemplar Normalization (Zhang et al., CVPR 2020); docs/method.md."""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor

from ..ops import exemplar_norm, exemplar_ratios
from .mixed_norm import _MixedNorm


def group_width(num_features: int, reduction: int) -> int:
    """r, the channels per group of the ratio branch's grouped convolution: the largest
    divisor of ``num_features`` (C) not above ``reduction``.

    The paper only asks for C / r groups (Sec. 3.3); our choice where r does not divide C
    (docs/method.md#any-channel-count), so that C = 48, 72 or 35 (DeepLabV3+, HRNet, CGNet) gets
    r = 24, 24 or 7 from the default 32, and a layer narrower than r a single group.

    >>> from en_seg.models.exemplar_norm import group_width
    >>> group_width(48, 32), group_width(35, 32), group_width(16, 32), group_width(64, 16)
    (24, 7, 16, 16)
    """
    return next(r for r in range(min(reduction, num_features), 0, -1) if num_features % r == 0)


class ExemplarNorm2d(_MixedNorm):
    r"""Exemplar Normalization over a 4-D (or 3-D) input (paper Eq. 3).

    Every sample n mixes K normalizers (IN, LN, BN by default) with its own ratios
    :math:`\lambda_n`, computed from its features by a small sub-network (paper Sec. 3.3):

    .. math::
        y_n = \sum_k \gamma_k \lambda_{nk} \frac{x_n - \mu^k}{\sqrt{\sigma^{2,k} + \epsilon}}
              + \beta_k

    The sum is folded into one affine map per (n, c), ``y = A * x + B``, computed with
    BatchNorm's memory passes over X (:mod:`en_seg.ops`); no K normalized
    copies of X are made. Statistics, ratios, A and B are float32 (or float64 for a
    float64 input), also under autocast; y has the input's dtype. Gradients flow through
    the statistics and the ratio branch. The BN member keeps ``running_mean`` /
    ``running_var`` exactly like ``nn.BatchNorm2d`` and uses them in evaluation, in the
    ratio branch too.

    ``num_features, eps, momentum`` may be passed by position, as for ``nn.BatchNorm2d``;
    every other argument is keyword-only.

    Args:
        num_features: C from an expected input of size (N, C, H, W).
        eps: added to every variance. Default: 1e-5.
        momentum: running-statistics momentum; ``None`` for a cumulative average.
            Default: 0.1.
        track_running_stats: keep running statistics for evaluation. Default: True.
        normalizers: the pool of K distinct names from ('IN', 'LN', 'BN').
            Default: ('IN', 'LN', 'BN').
        reduction: r, channels per group of the ratio branch's grouped convolution, which
            maps C to C / r channels with exactly C weights. Where r does not divide C, the
            layer uses the largest divisor of C below it (:func:`group_width`; C = 48 gets
            24), and ``reduction`` and ``extra_repr`` show the value used.
            Default: 32 (the paper's ResNet50 value).
        pi: π, the hidden width of the ratio branch is π·K. Default: 50.
        impl: how statistics, ratio branch and affine map run: ``'op'``, the compiled ops
            of :mod:`en_seg.ops` wherever they run the input (else, with one warning where
            a build lacks them, the references), or ``'reference'``, the pure-PyTorch
            :mod:`en_seg.ops.reference`, for comparison and export. Both compute the same
            function. Default: 'op'.
        sync_stats: in training, the BN member's batch statistics are those of the whole
            batch of ``process_group``, reduced with one differentiable all-reduce per
            forward, and the ratio branch reads them; IN and LN stay per sample
            (docs/method.md#synchronization-across-processes). Without an initialized process
            group of two or more processes the layer behaves as with False and warns once
            per process. Default: False (the paper's setting).
        process_group: the group ``sync_stats`` reduces over, as for ``nn.SyncBatchNorm``;
            None for the default group. Default: None.
        device, dtype: where and in which floating-point dtype the parameters (ratio
            branch included) and running statistics are created, as for
            ``nn.BatchNorm2d``; ``num_batches_tracked`` is always int64. Default: None
            (torch's defaults: CPU, the default dtype).

    Attributes:
        weight: γ, (K, C), initialised to 1.   bias: β, (K, C), initialised to 0.
        ratio_conv, ratio_fc1, ratio_fc2: the ratio branch (Conv1d C→C/r, Linear K²→πK,
            Linear πK→K). ``ratio_fc2`` and ``ratio_fc1.bias`` start at 0 so every ratio
            starts at 1/K (paper Sec. 4.6).
        last_ratios: (N, K) float32 ratios λ of the latest forward, detached; ``None``
            before the first forward, and after one under a torch.func transform or a
            FakeTensorMode (whose tensors must not outlive them).

    Shape:
        Input (N, C, H, W) floating point; output the same shape and dtype. N = 1 and
        H·W = 1 are allowed and stay finite. An (N, C, L) input is normalized as the
        (N, C, L, 1) one, statistics over L as for ``nn.BatchNorm1d`` (mmseg's EncNet
        feeds one; docs/method.md#one-dimensional-inputs).

    Raises:
        ValueError: at construction, for a bad pool, non-positive sizes or an unknown
            ``impl``; in forward, for an input that is not 3-D or 4-D, has other than
            ``num_features`` channels, or is empty.
        TypeError: at construction, for an argument after ``momentum`` passed by
            position; in forward, for an integer or boolean input.

    Examples::

        >>> import torch
        >>> from en_seg.models import ExemplarNorm2d
        >>> layer = ExemplarNorm2d(64, reduction=16)
        >>> layer.weight.shape, layer.ratio_conv.weight.shape  # γ is (K, C); C / r groups
        (torch.Size([3, 64]), torch.Size([4, 16, 1]))
        >>> x = torch.randn(2, 64, 8, 8)
        >>> layer(x).shape
        torch.Size([2, 64, 8, 8])
        >>> layer.last_ratios  # every ratio starts at 1/K
        tensor([[0.3333, 0.3333, 0.3333],
                [0.3333, 0.3333, 0.3333]])
        >>> ExemplarNorm2d(16, normalizers=('IN', 'BN'), reduction=8).weight.shape
        torch.Size([2, 16])

    A plain BatchNorm state dict loads: its (C,) weight becomes every γ_k and its bias is
    split evenly, β_k = β / K, so the layer starts as the BatchNorm it replaces up to the
    choice of statistics; the ratio branch keeps its initialisation. A built model's
    BatchNorm layers (torchvision, timm) become EN layers by :meth:`convert_batchnorm`.
    """

    # mmcv's build_norm_layer names the layer bn1, bn2, ... so ResNet keys stay those of
    # ImageNet-pretrained BatchNorm checkpoints.
    _abbr_ = 'bn'

    _repr_options = ('reduction', 'pi')

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: Optional[float] = 0.1,
                 *,
                 track_running_stats: bool = True,
                 normalizers: Sequence[str] = ('IN', 'LN', 'BN'),
                 reduction: int = 32,
                 pi: int = 50,
                 impl: str = 'op',
                 sync_stats: bool = False,
                 process_group: Optional[dist.ProcessGroup] = None,
                 device=None,
                 dtype=None) -> None:
        # Plain values that _build_members reads when the base calls it.
        if reduction <= 0 or pi <= 0:
            raise ValueError(f'reduction and pi must be positive, got reduction={reduction},'
                             f' pi={pi}')
        self.reduction = reduction
        self.pi = pi
        self.last_ratios: Optional[Tensor] = None
        super().__init__(num_features, eps, momentum, track_running_stats=track_running_stats,
                         normalizers=normalizers, impl=impl, sync_stats=sync_stats,
                         process_group=process_group, device=device, dtype=dtype)

    def _build_members(self, device=None, dtype=None) -> None:
        self.reduction = group_width(self.num_features, self.reduction)
        k, groups = self.num_normalizers, self.num_features // self.reduction
        self.ratio_conv = nn.Conv1d(self.num_features, groups, 1, groups=groups, bias=False,
                                    device=device, dtype=dtype)
        self.ratio_fc1 = nn.Linear(k * k, self.pi * k, device=device, dtype=dtype)
        self.ratio_fc2 = nn.Linear(self.pi * k, k, device=device, dtype=dtype)

    def _affine_shape(self) -> Tuple[int, ...]:
        return (self.num_normalizers, self.num_features)

    def reset_parameters(self) -> None:
        super().reset_parameters()  # running statistics, weight = 1, bias = 0
        self.ratio_conv.reset_parameters()
        self.ratio_fc1.reset_parameters()
        nn.init.zeros_(self.ratio_fc1.bias)
        nn.init.zeros_(self.ratio_fc2.weight)
        nn.init.zeros_(self.ratio_fc2.bias)

    def _affine_coefficients(self, pooled: Tensor, var: Tensor,
                             count: int) -> Tuple[Tensor, Tensor]:
        means, variances = self._statistics(pooled, var, count)
        rstds = torch.rsqrt(variances + self.eps)
        ratios = self._ratios(pooled, means, rstds)
        self._keep_ratios(ratios)
        # Eq. 3 as y = A (x - pooled) + B: A = Σ_k γ_k λ_k rstd_k and
        # B = Σ_k β_k + Σ_k γ_k λ_k rstd_k (pooled - μ_k), whose IN term is exactly 0.
        gain = ratios.unsqueeze(2) * self.weight.to(rstds.dtype) * rstds  # (N, K, C)
        shift = self.bias.to(rstds.dtype).sum(0) + (gain * (pooled.unsqueeze(1) - means)).sum(1)
        return gain.sum(1), shift

    def _fused_forward(self, x: Tensor) -> Tensor:
        own, modules = self._parameters, self._modules
        conv = modules['ratio_conv']._parameters
        fc1 = modules['ratio_fc1']._parameters
        fc2 = modules['ratio_fc2']._parameters
        params = self._in_statistics_dtype(
            x, (own['weight'], own['bias'], conv['weight'], fc1['weight'], fc1['bias'],
                fc2['weight'], fc2['bias']))
        running_mean, running_var, tracked, batch_stats = self._coefficient_op_statistics()
        y, ratios = exemplar_norm(x, *params, running_mean, running_var, tracked,
                                  self._normalizer_codes, batch_stats,
                                  self.momentum, self.eps)
        self._keep_ratios(ratios)
        return y

    def _keep_ratios(self, ratios: Tensor) -> None:
        """Sets ``last_ratios``: a plain attribute (nn.Module.__setattr__ would look for a
        parameter, buffer or child of that name first), and None for a tensor of a
        torch.func transform or a fake mode, which a later ``deepcopy`` or ``torch.save``
        of the model could not handle. Under torch.compile the graph returns real
        tensors, so no check is traced."""
        if not torch.compiler.is_compiling() and (
                isinstance(ratios, FakeTensor)
                or torch._C._functorch.is_functorch_wrapped_tensor(ratios)):
            self.__dict__['last_ratios'] = None
            return
        self.__dict__['last_ratios'] = (ratios.detach() if ratios.requires_grad else
                                        ratios).float()

    def _ratios(self, pooled: Tensor, means: Tensor, rstds: Tensor) -> Tensor:
        dtype = pooled.dtype
        return exemplar_ratios(
            pooled, means, rstds, self.ratio_conv.weight.to(dtype),
            self.ratio_fc1.weight.to(dtype), self.ratio_fc1.bias.to(dtype),
            self.ratio_fc2.weight.to(dtype), self.ratio_fc2.bias.to(dtype),
            impl=self.impl)

    def _batchnorm_affine(self) -> Tuple[Tensor, Tensor]:
        # With one normalizer λ = 1: y = γ_0 x̂ + β_0.
        return self.weight.detach()[0], self.bias.detach()[0]

    def _batchnorm_to_own(self, weight: Tensor, bias: Optional[Tensor]) -> Dict[str, Tensor]:
        k = self.num_normalizers
        own = {'weight': weight.unsqueeze(0).repeat(k, 1)}
        if bias is not None:
            own['bias'] = (bias / k).unsqueeze(0).repeat(k, 1)
        return own


class SyncExemplarNorm2d(ExemplarNorm2d):
    """:class:`ExemplarNorm2d` with ``sync_stats=True`` by default, the ``norm_cfg`` type
    ``'SyncEN'`` (named like mmcv's ``'SyncBN'``).

    Arguments, parameters, state dict and errors are those of :class:`ExemplarNorm2d`;
    docs/method.md#synchronization-across-processes.

    Examples::

        >>> from en_seg.models import SyncExemplarNorm2d
        >>> SyncExemplarNorm2d(64).sync_stats
        True
    """

    def __init__(self, *args, sync_stats: bool = True, **kwargs) -> None:
        super().__init__(*args, sync_stats=sync_stats, **kwargs)
