"""What every layer that mixes IN / LN / BN statistics shares.

Input checks, the running statistics of the BN member (kept like ``torch.nn.BatchNorm2d``,
docs/method.md#running-statistics), the per-normalizer statistics of a batch
(docs/method.md#statistics), the BN member's optionally over a process group
(docs/method.md#synchronization-across-processes), the forward pass as one affine map per
(n, c) (docs/method.md#output), fused or in plain PyTorch, and the loading of plain
BatchNorm checkpoints.
"""
import numbers
import warnings
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..ops import channel_affine_norm, check_impl, normalizer_codes, use_ops
from ..ops.reference import merge_moments
from .sync_statistics import group_batch_moments, group_size

#: Normalizers a mixed layer may pool, in the paper's order.
NORMALIZERS = ('IN', 'LN', 'BN')

_warned_unsynchronized = False


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


class _BNMemberMode(_BatchNorm):
    """The train / eval mode of a mixed layer's BN member, as a BatchNorm module.

    OpenMMLab backbones freeze BatchNorm statistics (``norm_eval=True``) by calling
    ``eval()`` on every ``_BatchNorm`` module they hold. The mixed layer keeps this child
    and lets the BN member follow its mode, so those backbones reach the BN member and
    nothing else (docs/method.md#in-openmmlab). It holds no parameter and no
    buffer, so state dicts do not see it, and it is never called. SyncBatchNorm
    conversion may replace it with another BatchNorm class; only ``training`` is read.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=False, track_running_stats=False)

    def extra_repr(self) -> str:
        return ''

    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError('_BNMemberMode only carries the BN member\'s train / eval mode '
                           'and is never called')


class _MixedNorm(_InstanceNorm):
    """Base of :class:`ExemplarNorm2d` and :class:`SwitchableNorm2d`.

    A subclass of torch's ``_InstanceNorm`` so that OpenMMLab treats it as a norm layer
    (param-wise rules, ``norm_eval``, SyncBatchNorm conversion leave it intact); the BN
    member's mode is the child ``bn_member_mode`` (docs/method.md#in-openmmlab).

    ``num_features, eps, momentum`` may be passed by position, as for ``nn.BatchNorm2d``;
    everything after them is keyword-only.

    Args:
        num_features: C, the channel count of the (N, C, H, W) or (N, C, L) input.
        eps: added to every variance before the square root. Default: 1e-5.
        momentum: running-statistics momentum as in ``nn.BatchNorm2d``; ``None`` keeps a
            cumulative average. Default: 0.1.
        track_running_stats: keep ``running_mean`` / ``running_var`` for evaluation, as
            ``nn.BatchNorm2d`` does. Default: True.
        normalizers: the pool, a sequence of distinct names from ('IN', 'LN', 'BN').
            Default: ('IN', 'LN', 'BN').
        impl: ``'op'``: the compiled ops of :mod:`en_seg.ops` wherever they run the input
            (:func:`~en_seg.ops.library.use_ops`; where a build lacks them, one warning and
            the references); ``'reference'``: the pure-PyTorch references of
            :mod:`en_seg.ops.reference`. Both compute the same function. Default: 'op'.
        sync_stats: in training, compute the BN member's batch statistics over the whole
            batch of ``process_group``, with one differentiable all-reduce of 2C + 1 values
            per forward (docs/method.md#synchronization-across-processes); IN and LN never
            communicate. Without an initialized process group of two or more processes the
            layer behaves as with False and warns once per process. Default: False (the
            paper's setting).
        process_group: the group ``sync_stats`` reduces over, as for
            ``nn.SyncBatchNorm``; None for the default group. Default: None.
        device, dtype: where and in which floating-point dtype the parameters and the
            running statistics are created, as for torch's layers; ``num_batches_tracked``
            is always int64. Default: None (torch's defaults).

    The base creates ``weight`` and ``bias`` of shape :meth:`_affine_shape`, the running
    statistics, the subclass's own members (:meth:`_build_members`), and then calls
    ``reset_parameters``. Subclasses define :meth:`_affine_shape`,
    :meth:`_affine_coefficients`, the (N, C) map from the per-(n, c) moments to the
    output's scale and shift, and :attr:`_repr_options`, their own ``extra_repr`` entries.

    Raises:
        ValueError: non-positive ``num_features``, ``eps``, a bad ``normalizers`` pool or a
            ``impl`` not in :data:`~en_seg.ops.library.IMPLS`.
    """

    #: Attributes that :meth:`extra_repr` shows after ``track_running_stats`` and
    #: ``normalizers`` and before ``impl`` and ``sync_stats``, in the constructor's
    #: order.
    _repr_options: Tuple[str, ...] = ()

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: Optional[float] = 0.1,
                 *,
                 track_running_stats: bool = True,
                 normalizers: Sequence[str] = ('IN', 'LN', 'BN'),
                 impl: str = 'op',
                 sync_stats: bool = False,
                 process_group: Optional[dist.ProcessGroup] = None,
                 device=None,
                 dtype=None) -> None:
        factory_kwargs = {'device': device, 'dtype': dtype}
        # _NormBase's constructor would make (C,) affine parameters and reset them before
        # the subclass's members exist; the attributes it sets are set here instead.
        nn.Module.__init__(self)
        # Any integer type, numpy's included, as nn.BatchNorm2d takes; not a bool or float.
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral) \
                or num_features <= 0:
            raise ValueError(f'num_features must be a positive int, got {num_features!r}')
        num_features = int(num_features)
        if eps <= 0:
            raise ValueError(f'eps must be positive to keep the division finite, got {eps}')
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = True
        self.track_running_stats = track_running_stats
        self.normalizers = check_normalizers(normalizers)
        self._normalizer_codes = normalizer_codes(self.normalizers)  # the ops' argument
        self.impl = check_impl(impl)
        self.sync_stats = bool(sync_stats)
        self.process_group = process_group
        shape = self._affine_shape()
        self.weight = nn.Parameter(torch.empty(shape, **factory_kwargs))
        self.bias = nn.Parameter(torch.empty(shape, **factory_kwargs))
        if track_running_stats:
            self.register_buffer('running_mean', torch.zeros(num_features, **factory_kwargs))
            self.register_buffer('running_var', torch.ones(num_features, **factory_kwargs))
            self.register_buffer('num_batches_tracked',
                                 torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer('running_mean', None)
            self.register_buffer('running_var', None)
            self.register_buffer('num_batches_tracked', None)
        if 'BN' in self.normalizers:
            self.bn_member_mode = _BNMemberMode(num_features)
        self._build_members(**factory_kwargs)
        self.reset_parameters()

    def _build_members(self, device=None, dtype=None) -> None:
        """Create the subclass's own parameters and modules (none here), before
        ``reset_parameters`` initialises them; ``device`` and ``dtype`` as for the
        constructor."""

    def _affine_shape(self) -> Tuple[int, ...]:
        """The shape of ``weight`` and ``bias``; called once the base attributes are set."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        options = (('track_running_stats', 'normalizers') + self._repr_options
                   + ('impl', 'sync_stats'))
        return ', '.join([f'{self.num_features}', f'eps={self.eps}',
                          f'momentum={self.momentum}']
                         + [f'{name}={getattr(self, name)!r}' for name in options])

    @classmethod
    def convert_batchnorm(cls, module: nn.Module, **layer_kwargs) -> nn.Module:
        """Replace every ``nn.BatchNorm2d`` and ``nn.SyncBatchNorm`` (mmcv's ``SyncBN``
        and mmengine's ``_BatchNormXd`` too) in a built model by this class's layer, as
        ``nn.SyncBatchNorm.convert_sync_batchnorm`` does for SyncBatchNorm
        (docs/method.md#converting-a-built-model).

        Each new layer starts as the BatchNorm it replaces: γ copied to every normalizer,
        β split evenly (the state-dict conversion of BatchNorm checkpoints), running
        statistics, ``num_batches_tracked``, eps, momentum, ``track_running_stats``,
        device, dtype, train / eval mode and the parameters' ``requires_grad`` (a layer
        whose γ and β are frozen gets a frozen ratio branch too). A SyncBatchNorm becomes
        a layer with ``sync_stats=True`` over its process group. An ``affine=False``
        BatchNorm is converted with γ = 1 and β = 0 fixed (``requires_grad=False``), what
        it computed; one built with ``bias=False`` with β = 0 fixed. Subclasses of
        BatchNorm2d (timm's ``BatchNormAct2d`` adds an activation), torchvision's
        ``FrozenBatchNorm2d``, BatchNorm1d / 3d, GroupNorm, LayerNorm and InstanceNorm are
        left as they are. One INFO record of the
        ``en_seg.models.conversion`` logger counts the layers converted and those left,
        by type.

        Args:
            module: the model (or a single BatchNorm layer), changed in place.
            **layer_kwargs: this class's keyword arguments for every new layer, e.g.
                ``normalizers``, ``reduction``, ``impl``, ``sync_stats``; ``eps`` and
                ``momentum`` override the BatchNorm's. A channel count that ``reduction``
                does not divide gets the largest divisor below it (EN).

        Returns:
            ``module``, or the new layer when ``module`` itself is a BatchNorm layer.

        Raises:
            TypeError: for ``num_features``, ``track_running_stats``, ``device`` or
                ``dtype`` in ``layer_kwargs`` (each BatchNorm decides them).
            ValueError: as this class's constructor, for bad ``layer_kwargs``.

        Examples::

            >>> import torch
            >>> from torch import nn
            >>> from en_seg.models import ExemplarNorm2d
            >>> model = nn.Sequential(nn.Conv2d(3, 48, 3), nn.BatchNorm2d(48), nn.ReLU())
            >>> model = ExemplarNorm2d.convert_batchnorm(model)
            >>> type(model[1]).__name__, model[1].reduction  # r = 32 does not divide 48
            ('ExemplarNorm2d', 24)
            >>> model(torch.randn(2, 3, 8, 8)).shape
            torch.Size([2, 48, 6, 6])
        """
        from .conversion import convert_batchnorm
        return convert_batchnorm(cls, module, layer_kwargs)

    @classmethod
    def revert_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every layer of this class whose pool is ``('BN',)`` by the
        ``nn.BatchNorm2d`` computing the same function (``nn.SyncBatchNorm`` for
        ``sync_stats=True``): its single γ and β, running statistics, eps, momentum, mode
        and ``requires_grad``. Layers with another pool compute something BatchNorm cannot
        and are left, counted in one INFO record of ``en_seg.models.conversion``.

        Args:
            module: the model (or a single layer), changed in place.

        Returns:
            ``module``, or the new layer when ``module`` itself is reverted.
        """
        from .conversion import revert_batchnorm
        return revert_batchnorm(cls, module)

    def _batchnorm_affine(self) -> Tuple[Tensor, Tensor]:
        """The (C,) weight and bias of the BatchNorm2d this layer equals when its pool is
        ('BN',)."""
        raise NotImplementedError

    @property
    def num_normalizers(self) -> int:
        """K, the size of the normalizer pool."""
        return len(self.normalizers)

    def _check_input_dim(self, x: Tensor) -> None:
        self._check_input(x)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in (3, 4):
            raise ValueError(f'{type(self).__name__} expects a 4-D (N, C, H, W) or 3-D '
                             f'(N, C, L) input, got a {x.dim()}-D input of shape '
                             f'{tuple(x.shape)}; an (N, C) input has one value per sample '
                             'and channel, so its IN statistics are degenerate: normalize it '
                             'with nn.BatchNorm1d or nn.LayerNorm instead')
        if not x.is_floating_point():
            raise TypeError(f'{type(self).__name__} expects a floating-point input, got '
                            f'{x.dtype}; convert it first, e.g. x.float()')
        if torch.jit.is_tracing():
            # Sizes are traced tensors there: comparing them would record the trace's
            # sizes as constants (TracerWarning), and a trace is run on the shapes it was
            # made with.
            return
        if x.shape[1] != self.num_features:
            raise ValueError(f'{type(self).__name__} was built for num_features='
                             f'{self.num_features} channels, got an input of shape '
                             f'{tuple(x.shape)} with {x.shape[1]} channels')
        if x.numel() == 0:
            raise ValueError(f'{type(self).__name__} got an empty input of shape '
                             f'{tuple(x.shape)}')

    def _bn_member_training(self) -> bool:
        """The BN member's mode: that of ``bn_member_mode``, which follows the layer's
        ``train()`` / ``eval()`` and which ``norm_eval`` freezes alone; the layer's own for
        a pool without BN."""
        if 'BN' not in self.normalizers:
            return self.training
        return self._modules['bn_member_mode'].training

    def _uses_batch_bn_stats(self) -> bool:
        # Same rule as nn.BatchNorm2d: batch statistics in training, or always when no
        # running statistics are kept.
        return self._bn_member_training() or not self.track_running_stats

    def _synchronizes(self) -> bool:
        """Whether this forward reduces the BN member's statistics over the process group:
        with ``sync_stats``, in training, where the group has two processes or more."""
        if not (self.sync_stats and self._bn_member_training()):
            return False
        if group_size(self.process_group) > 1:
            return True
        global _warned_unsynchronized
        if not _warned_unsynchronized:
            _warned_unsynchronized = True
            warnings.warn(
                f'en_seg: {type(self).__name__} has sync_stats=True but no initialized '
                'torch.distributed process group of two or more processes, so the BN '
                "member's statistics are those of this process's batch, as with "
                'sync_stats=False. Train with two or more processes (e.g. `bash '
                'tools/dist_train.sh CONFIG 8`, torchrun with --launcher pytorch) to '
                'synchronize them, or set sync_stats=False.')
        return False

    def _batch_bn_statistics(self, pooled: Tensor, var: Tensor,
                             count: int) -> Tuple[Tensor, Tensor, Union[int, Tensor]]:
        """The BN member's (1, C) batch mean and biased variance and the number of values
        behind them: those of this process's batch, or of the process group's whole batch
        when :meth:`_synchronizes` (docs/method.md#synchronization-across-processes)."""
        if self._synchronizes():
            return group_batch_moments(pooled, var, count // pooled.shape[0],
                                       self.process_group)
        mean, var = merge_moments(pooled, var, dim=0)
        return mean, var, count

    def _update_running_stats(self, mean: Tensor, var: Tensor,
                              count: Union[int, Tensor]) -> None:
        """Fold a batch's BN statistics (C,) into the running ones like nn.BatchNorm2d;
        ``count`` is L, an int, or a 0-d tensor for a process group's batch."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        # BatchNorm2d stores the unbiased variance; with a single value per channel it is
        # undefined, and we keep the biased one (0) rather than an infinity. A process
        # group's count stays a tensor, unread by the host, and is at least 2.
        unbiased = var * (count / (count - 1)) if torch.is_tensor(count) or count > 1 else var
        # A channel whose batch statistic is not finite (one NaN or Inf anywhere in the
        # batch makes it so) keeps its running statistics: the batch's outputs are lost,
        # the model's state is not. torch.where decides on the device, without a sync.
        finite = torch.isfinite(mean) & torch.isfinite(unbiased)
        for running, batch in ((self.running_mean, mean), (self.running_var, unbiased)):
            running.lerp_(torch.where(finite, batch.to(running.dtype), running), factor)

    def forward(self, x: Tensor) -> Tensor:
        """y = scale * (x - pooled) + shift per (n, c), the layer's output as one affine
        map, with (scale, shift) from :meth:`_affine_coefficients`. Statistics and
        coefficients in float32 (float64 for a float64 input), also under autocast; y in
        x's dtype. A 3-D (N, C, L) input is the (N, C, L, 1) one, as for BatchNorm1d
        (docs/method.md#one-dimensional-inputs)."""
        self._check_input(x)
        if x.dim() == 3:
            return self._forward_planes(x.unsqueeze(-1)).squeeze(-1)
        return self._forward_planes(x)

    def _forward_planes(self, x: Tensor) -> Tensor:
        """:meth:`forward` of a checked 4-D input."""
        if self._fuses_coefficients(x):
            # Compiled ops only, which autocast leaves alone.
            return self._fused_forward(x)
        count = x.shape[0] * x.shape[2] * x.shape[3]

        def coefficients(pooled: Tensor, var: Tensor) -> Tuple[Tensor, Tensor]:
            return self._affine_coefficients(pooled, var, count)

        return channel_affine_norm(x, coefficients, impl=self.impl)

    def _fuses_coefficients(self, x: Tensor) -> bool:
        """Whether this forward takes its coefficients from one compiled op
        (:meth:`_fused_forward`) rather than from :meth:`_affine_coefficients`: where the
        ops run x (:func:`~en_seg.ops.library.use_ops`), but not where this forward
        :meth:`_synchronizes` (the all-reduce sits between the moments and the
        coefficients), and only where the BN member's running statistics are in the
        statistics' dtype."""
        if not use_ops(self.impl, x):
            return False
        if self.sync_stats and 'BN' in self.normalizers and self._synchronizes():
            return False
        running_mean = self._buffers['running_mean']
        stats = torch.float64 if x.dtype == torch.float64 else torch.float32
        return 'BN' not in self.normalizers or running_mean is None or running_mean.dtype == stats

    def _fused_forward(self, x: Tensor) -> Tensor:
        """The layer's output by the ops of :mod:`en_seg.ops.coefficient_op`, in x's dtype;
        also updates the running statistics, as :meth:`_statistics` does.

        This forward reads parameters, buffers and children from the module's own dicts
        (``_parameters``, ``_buffers``, ``_modules``) rather than by attribute: each
        ``nn.Module.__getattr__`` costs about as much as a small layer's arithmetic, and a
        mixed layer has up to seven parameters."""
        raise NotImplementedError

    @staticmethod
    def _in_statistics_dtype(x: Tensor, params: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        """``params`` in the statistics' dtype of x (float64 for a float64 x, else float32),
        cast only where they differ (docs/method.md#precision)."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if all([p.dtype == dtype for p in params]):
            return params
        return tuple(p if p.dtype == dtype else p.to(dtype) for p in params)

    def _coefficient_op_statistics(self) -> Tuple[Optional[Tensor], Optional[Tensor],
                                                  Optional[Tensor], bool]:
        """The coefficient ops' ``running_mean, running_var, num_batches_tracked`` (the
        buffers where the pool has BN and they are kept, else None) and ``batch_stats``
        (:meth:`_uses_batch_bn_stats`)."""
        if 'BN' not in self.normalizers:
            return None, None, None, True
        buffers = self._buffers
        return (buffers['running_mean'], buffers['running_var'], buffers['num_batches_tracked'],
                self._uses_batch_bn_stats())

    def _affine_coefficients(self, pooled: Tensor, var: Tensor,
                             count: int) -> Tuple[Tensor, Tensor]:
        """The output's per-(n, c) affine map, y = scale * (x - pooled) + shift.

        Args:
            pooled, var: (N, C) per-(n, c) mean and biased variance of the input, float32
                (float64 for a float64 input).
            count: N * H * W, the values behind each BN statistic.

        Returns:
            ``(scale, shift)``, each (N, C) in pooled's dtype.
        """
        raise NotImplementedError

    def _statistics(self, pooled: Tensor, var: Tensor,
                    count: int) -> Tuple[Tensor, Tensor]:
        """Every normalizer's statistics from the per-(n, c) moments; in training, folds
        the BN member's batch statistics into the running ones.

        Args:
            pooled, var: (N, C) per-(n, c) mean and biased variance of the input, float32
                or better; pooled is also the ratio branch's average-pooled input.
            count: N * H * W, the values behind each BN statistic.

        Returns:
            ``(means, variances)``, each (N, K, C): normalizer k's statistics broadcast to
            every (n, c).
        """
        n, c = pooled.shape
        means, variances = [], []
        for name in self.normalizers:
            if name == 'IN':
                mean_k, var_k = pooled, var
            elif name == 'LN':
                mean_k, var_k = merge_moments(pooled, var, dim=1)
            elif self._uses_batch_bn_stats():
                mean_k, var_k, bn_count = self._batch_bn_statistics(pooled, var, count)
                if self._bn_member_training() and self.track_running_stats:
                    with torch.no_grad():
                        self._update_running_stats(mean_k[0], var_k[0], bn_count)
            else:
                mean_k = self.running_mean.to(pooled.dtype)[None]
                var_k = self.running_var.to(pooled.dtype)[None]
            means.append(mean_k.expand(n, c))
            variances.append(var_k.expand(n, c))
        return torch.stack(means, 1), torch.stack(variances, 1)

    def _load_from_state_dict(self, state_dict: Dict[str, Tensor], prefix: str, *args,
                              **kwargs) -> None:
        if self._is_batchnorm_state(state_dict, prefix):
            self._convert_batchnorm_state(state_dict, prefix)
        if self.track_running_stats and prefix + 'num_batches_tracked' not in state_dict:
            # Checkpoints older than BatchNorm's num_batches_tracked lack the key.
            state_dict[prefix + 'num_batches_tracked'] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _is_batchnorm_state(self, state_dict: Dict[str, Tensor], prefix: str) -> bool:
        """Whether the entries under ``prefix`` are a BatchNorm layer's of this width: a
        (C,) weight and, if given, a (C,) bias. Checked before the conversion allocates
        anything (a crafted 1-D weight of 2³¹ elements, stride 0, would be repeated into
        tens of GiB); entries of another shape are left to the load's own size check."""
        weight, bias = state_dict.get(prefix + 'weight'), state_dict.get(prefix + 'bias')
        width = (self.num_features,)
        return (isinstance(weight, Tensor) and weight.shape == width
                and (bias is None or isinstance(bias, Tensor) and bias.shape == width))

    def _convert_batchnorm_state(self, state_dict: Dict[str, Tensor], prefix: str) -> None:
        """Rewrite a BatchNorm layer's entries (C,) into this layer's form, in place.

        Entries this layer has and BatchNorm lacks keep their current values, so a plain
        BatchNorm checkpoint loads even with ``strict=True``.
        """
        for name, tensor in self._batchnorm_to_own(state_dict[prefix + 'weight'],
                                                   state_dict.get(prefix + 'bias')).items():
            state_dict[prefix + name] = tensor
        own = dict(self.named_parameters(recurse=True))
        for name, param in own.items():
            state_dict.setdefault(prefix + name, param.detach().clone())

    def _batchnorm_to_own(self, weight: Tensor, bias: Optional[Tensor]) -> Dict[str, Tensor]:
        """Map BatchNorm's (C,) weight and bias to this layer's affine parameters."""
        raise NotImplementedError
