"""Any channel count, 1-D inputs, and BatchNorm layers of a built model converted to EN / SN
and back (en_seg/models/conversion.py; docs/method.md#converting-a-built-model). Models of
other libraries (torchvision, timm) are converted in tests/test_other_libraries.py."""
import copy
import logging

import pytest
import torch
from torch import nn

from en_seg.models import ExemplarNorm2d, SwitchableNorm2d
from en_seg.models.exemplar_norm import group_width

import reference

LAYERS = (ExemplarNorm2d, SwitchableNorm2d)
LOGGER = 'en_seg.models.conversion'


def trained_batchnorm(bn_class=nn.BatchNorm2d, channels=12, steps=3, **kwargs):
    """A BatchNorm layer whose γ, β and running statistics are no longer their defaults."""
    bn = bn_class(channels, **kwargs)
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 1.5)
        if bn.bias is not None:
            bn.bias.uniform_(-1, 1)
    for _ in range(steps):
        bn(torch.randn(4, channels, 5, 5) * 3 + 1)
    return bn


@pytest.mark.parametrize('channels, requested, used', [
    (48, 32, 24), (72, 32, 24), (144, 32, 24), (35, 32, 7), (18, 32, 18), (13, 32, 13),
    (64, 32, 32), (7, 4, 1)])
def test_group_width_is_the_largest_divisor_not_above_the_reduction(channels, requested,
                                                                    used):
    assert group_width(channels, requested) == used
    layer = ExemplarNorm2d(channels, reduction=requested)
    assert layer.reduction == used and f'reduction={used}' in repr(layer)
    assert layer.ratio_conv.weight.shape == (channels // used, used, 1)


@pytest.mark.parametrize('impl', ['op', 'reference'])
def test_a_channel_count_the_reduction_does_not_divide_equals_the_paper(impl):
    # C = 35 (CGNet) with r = 32 takes r = 7: five groups, checked against the reference.
    layer = ExemplarNorm2d(35, impl=impl).double()
    with torch.no_grad():
        layer.ratio_fc2.weight.normal_()
    x = torch.randn(3, 35, 4, 5, dtype=torch.float64)
    expected, ratios = reference.exemplar_norm(x, layer)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.last_ratios, ratios.float())
    small = ExemplarNorm2d(6, reduction=4, impl=impl).double()  # r = 3, two groups
    with torch.no_grad():
        small.ratio_fc2.weight.normal_()
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(small, (x,))


@pytest.mark.parametrize('impl', ['op', 'reference'])
def test_an_n_c_l_input_is_normalized_over_l_as_batchnorm1d_does(impl):
    x = torch.randn(4, 8, 10, dtype=torch.float64) * 2 + 1
    for pool, peer in ((('BN',), nn.BatchNorm1d(8)), (('IN',), nn.InstanceNorm1d(8))):
        layer = ExemplarNorm2d(8, normalizers=pool, impl=impl).double()
        torch.testing.assert_close(layer(x), peer.double()(x), rtol=1e-10, atol=1e-10)
    bn = nn.BatchNorm1d(8).double()
    bn(x)
    layer = ExemplarNorm2d(8, normalizers=('BN',), impl=impl).double()
    layer(x)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    for cls in LAYERS:
        layer = cls(8, impl=impl).double()
        y = layer(x)
        torch.testing.assert_close(y, layer(x.unsqueeze(-1)).squeeze(-1))
        assert y.shape == x.shape
        assert torch.autograd.gradcheck(layer, (x[:2, :, :4].clone().requires_grad_(),))


def test_an_input_of_two_or_five_dimensions_names_what_is_expected():
    layer = ExemplarNorm2d(8)
    for shape in ((4, 8), (2, 8, 3, 3, 3)):
        with pytest.raises(ValueError, match=r'4-D \(N, C, H, W\) or 3-D \(N, C, L\)'):
            layer(torch.randn(shape))


def test_encnet_s_derived_norm_cfg_builds_a_layer_that_takes_its_input():
    # mmseg's EncModule appends '1d' to 'BN' and 'IN' and otherwise replaces '2d' by '1d',
    # so 'EN' stays 'EN'; the layer then sees (N, num_codes, channels).
    from mmcv.cnn import build_norm_layer

    import en_seg  # noqa: F401  (registers EN and SN)
    for norm_type in ('EN', 'SN', 'SyncEN'):
        _, layer = build_norm_layer(dict(type=norm_type), 32)
        assert layer(torch.randn(2, 32, 64)).shape == (2, 32, 64)


@pytest.mark.parametrize('cls', LAYERS)
def test_convert_batchnorm_carries_every_state_of_each_layer(cls):
    bn = trained_batchnorm(momentum=None, eps=1e-3).double()
    bn.weight.requires_grad_(False)
    model = nn.Sequential(nn.Conv2d(3, 12, 1), bn).eval()
    model = cls.convert_batchnorm(model, normalizers=('IN', 'BN'))
    layer = model[1]
    assert type(layer) is cls and not layer.training and not layer.bn_member_mode.training
    assert (layer.eps, layer.momentum, layer.normalizers) == (1e-3, None, ('IN', 'BN'))
    assert layer.weight.dtype == torch.float64 and not layer.weight.requires_grad
    assert layer.bias.requires_grad
    for name in ('running_mean', 'running_var', 'num_batches_tracked'):
        torch.testing.assert_close(getattr(layer, name), getattr(bn, name))
    gammas = layer.weight if cls is SwitchableNorm2d else layer.weight[1]
    torch.testing.assert_close(gammas, bn.weight)
    betas = layer.bias if cls is SwitchableNorm2d else layer.bias.sum(0)
    torch.testing.assert_close(betas, bn.bias)


@pytest.mark.parametrize('cls', LAYERS)
@pytest.mark.parametrize('affine, bias', [(True, True), (False, True), (True, False)])
def test_a_bn_pool_computes_what_the_batchnorm_computed_in_training_and_evaluation(
        cls, affine, bias):
    bn = trained_batchnorm(affine=affine, bias=bias).double()
    x = torch.randn(4, 12, 5, 5, dtype=torch.float64)
    expected = {mode: copy.deepcopy(bn).train(mode)(x) for mode in (True, False)}
    layer = cls.convert_batchnorm(copy.deepcopy(bn), normalizers=('BN',))
    for mode in (True, False):
        torch.testing.assert_close(copy.deepcopy(layer).train(mode)(x), expected[mode])
    # An affine-free BatchNorm keeps γ = 1, β = 0 fixed; what is mixed still learns.
    assert layer.weight.requires_grad == affine
    assert layer.bias.requires_grad == (affine and bias)
    assert all(p.requires_grad for name, p in layer.named_parameters()
               if name not in ('weight', 'bias'))


def test_convert_batchnorm_replaces_exactly_batchnorm2d_and_syncbatchnorm_and_logs_it(caplog):
    from mmcv.cnn import build_norm_layer
    from mmengine.model import revert_sync_batchnorm

    class BatchNormAct2d(nn.BatchNorm2d):  # adds behaviour, as timm's does
        def forward(self, x):
            return torch.relu(super().forward(x))

    class FrozenBatchNorm2d(nn.Module):  # torchvision's holds buffers only
        pass

    shared = nn.BatchNorm2d(8)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), shared, nn.Sequential(
            shared, build_norm_layer(dict(type='SyncBN'), 8)[1],
            revert_sync_batchnorm(nn.SyncBatchNorm(8))), nn.BatchNorm1d(8), nn.BatchNorm3d(8),
        nn.GroupNorm(2, 8), nn.LayerNorm(8), nn.InstanceNorm2d(8), BatchNormAct2d(8),
        FrozenBatchNorm2d(), ExemplarNorm2d(8))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        ExemplarNorm2d.convert_batchnorm(model)
    assert model[1] is model[2][0] and type(model[1]) is ExemplarNorm2d
    assert type(model[2][1]) is ExemplarNorm2d and model[2][1].sync_stats
    assert type(model[2][2]) is ExemplarNorm2d and not model[2][2].sync_stats
    assert [type(m) for m in model[3:]] == [
        nn.BatchNorm1d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d,
        BatchNormAct2d, FrozenBatchNorm2d, ExemplarNorm2d]
    assert caplog.messages == [
        'ExemplarNorm2d.convert_batchnorm: converted 3 layer(s) (BatchNorm2d: 1, '
        'SyncBatchNorm: 1, _BatchNormXd: 1); left 7 normalization layer(s) as they were '
        '(BatchNorm1d: 1, BatchNorm3d: 1, BatchNormAct2d: 1, FrozenBatchNorm2d: 1, '
        'GroupNorm: 1, InstanceNorm2d: 1, LayerNorm: 1)']


def test_convert_batchnorm_returns_a_new_layer_for_a_batchnorm_and_rejects_its_own_arguments():
    bn = trained_batchnorm(track_running_stats=False)
    layer = SwitchableNorm2d.convert_batchnorm(bn, impl='reference', sync_stats=False)
    assert type(layer) is SwitchableNorm2d and layer.running_mean is None
    assert layer.impl == 'reference'
    with pytest.raises(TypeError, match=r"takes \['dtype', 'num_features'\] from each"):
        ExemplarNorm2d.convert_batchnorm(bn, num_features=4, dtype=torch.float64)


@pytest.mark.parametrize('cls', LAYERS)
def test_revert_batchnorm_gives_back_the_batchnorm_and_leaves_other_pools(cls, caplog):
    bn = trained_batchnorm()
    model = nn.Sequential(cls.convert_batchnorm(copy.deepcopy(bn), normalizers=('BN',)),
                          cls.convert_batchnorm(nn.BatchNorm2d(12)))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        cls.revert_batchnorm(model)
    assert type(model[0]) is nn.BatchNorm2d and type(model[1]) is cls
    for key, value in bn.state_dict().items():
        torch.testing.assert_close(model[0].state_dict()[key], value)
    assert caplog.messages[-1] == (
        f'{cls.__name__}.revert_batchnorm: reverted 1 layer(s) ({cls.__name__}: 1); left 1 '
        f"mixed layer(s) as they were ({cls.__name__}('IN', 'LN', 'BN'): 1)")


def test_docstring_examples_of_the_conversion_run():
    import doctest
    runner = doctest.DocTestRunner()
    for obj in (group_width, ExemplarNorm2d.convert_batchnorm):
        for test in doctest.DocTestFinder().find(obj, obj.__qualname__, globs={}):
            runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted >= 6 and results.failed == 0


@pytest.mark.parametrize('cls', LAYERS)
def test_a_frozen_batchnorm_becomes_a_frozen_layer(cls):
    bn = nn.BatchNorm2d(8).requires_grad_(False)  # e.g. a frozen stage of a backbone
    assert not any(p.requires_grad for p in cls.convert_batchnorm(bn).parameters())
