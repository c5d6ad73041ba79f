"""ExemplarNorm2d against the paper (docs/method.md) and against nn.BatchNorm2d."""
import copy
import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from en_seg.models import ExemplarNorm2d, SwitchableNorm2d
from reference import exemplar_norm, randomized, switchable_norm


SHAPES = [(4, 64, 7, 5), (2, 32, 1, 1), (1, 64, 6, 6), (1, 32, 1, 1), (3, 8, 4, 3)]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('training', [True, False])
def test_forward_equals_literal_reference(shape, training):
    layer = randomized(ExemplarNorm2d(shape[1], reduction=8).double()).train(training)
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1
    expected, expected_ratios = exemplar_norm(x, layer, use_running_bn=not training)
    y = layer(x)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.last_ratios, expected_ratios.float())
    assert torch.isfinite(y).all()


@pytest.mark.parametrize('normalizers', [('IN', 'LN', 'BN'), ('BN', 'IN'), ('LN',)])
def test_any_normalizer_pool_matches_reference(normalizers):
    layer = randomized(ExemplarNorm2d(16, normalizers=normalizers, reduction=4).double())
    x = torch.randn(3, 16, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(layer(x), exemplar_norm(x, layer)[0], rtol=1e-10,
                               atol=1e-10)


def test_large_offset_input_has_no_cancellation():
    # E[x²] - E[x]² would lose every digit of a variance of 1 at an offset of 1e4 in fp32.
    layer = ExemplarNorm2d(32)
    x = torch.randn(2, 32, 16, 16) + 1e4
    reference = exemplar_norm(x.double(), layer.double())[0]
    torch.testing.assert_close(layer.float()(x).double(), reference, rtol=0, atol=2e-3)


@pytest.mark.parametrize('training', [True, False])
def test_gradcheck_through_statistics_and_ratio_branch(training):
    layer = randomized(ExemplarNorm2d(8, reduction=4).double(), seed=1).train(training)
    names = [name for name, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    x = torch.randn(3, 8, 3, 2, dtype=torch.float64, requires_grad=True)

    def run(x, *params):
        return functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))


@pytest.mark.parametrize('momentum', [0.1, 0.3, None])
def test_running_statistics_follow_batchnorm(momentum):
    layer = ExemplarNorm2d(16, momentum=momentum)
    bn = nn.BatchNorm2d(16, momentum=momentum)
    for step in range(4):
        x = torch.randn(3, 16, 5, 5) * (step + 1) + step
        layer(x)
        bn(x)
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    assert layer.num_batches_tracked == bn.num_batches_tracked == 4


def test_evaluation_uses_running_statistics_and_keeps_them():
    layer = randomized(ExemplarNorm2d(16)).eval()
    before = layer.running_mean.clone()
    x = torch.randn(2, 16, 4, 4)
    y_eval = layer(x)
    assert torch.equal(before, layer.running_mean)
    assert not torch.allclose(y_eval, layer.train()(x))


def test_ratios_start_uniform_and_sum_to_one():
    layer = ExemplarNorm2d(64)
    assert layer.last_ratios is None
    layer(torch.randn(5, 64, 3, 3))
    torch.testing.assert_close(layer.last_ratios, torch.full((5, 3), 1 / 3))
    randomized(layer)
    with torch.no_grad():
        layer.ratio_fc2.weight.mul_(0.01)  # keep the softmax away from saturation
    layer(torch.randn(5, 64, 3, 3) * torch.arange(1.0, 6.0).view(5, 1, 1, 1))
    ratios = layer.last_ratios
    assert ratios.dtype == torch.float32 and not ratios.requires_grad
    torch.testing.assert_close(ratios.sum(1), torch.ones(5))
    assert ratios.std(0).max() > 1e-3, 'ratios should differ between samples'


def test_initialisation_gives_every_branch_weight_a_gradient_path():
    layer = ExemplarNorm2d(32)
    assert torch.count_nonzero(layer.ratio_fc2.weight) == 0
    assert torch.count_nonzero(layer.ratio_fc1.weight) > 0
    assert torch.count_nonzero(layer.ratio_conv.weight) > 0
    torch.testing.assert_close(layer.weight, torch.ones(3, 32))
    layer(torch.randn(4, 32, 3, 3)).pow(2).sum().backward()
    assert layer.ratio_fc2.weight.grad.abs().sum() > 0


def test_state_dict_keys_shapes_and_round_trip():
    layer = randomized(ExemplarNorm2d(64, reduction=32, pi=50))
    shapes = {key: tuple(value.shape) for key, value in layer.state_dict().items()}
    assert shapes == {
        'weight': (3, 64), 'bias': (3, 64), 'running_mean': (64,), 'running_var': (64,),
        'num_batches_tracked': (), 'ratio_conv.weight': (2, 32, 1),
        'ratio_fc1.weight': (150, 9), 'ratio_fc1.bias': (150,),
        'ratio_fc2.weight': (3, 150), 'ratio_fc2.bias': (3,)}
    copy = ExemplarNorm2d(64)
    copy.load_state_dict(layer.state_dict())
    x = torch.randn(2, 64, 3, 3)
    torch.testing.assert_close(copy.eval()(x), layer.eval()(x), rtol=0, atol=0)


def test_parameter_count_matches_table_1():
    c, k, pi = 256, 3, 50
    layer = ExemplarNorm2d(c, pi=pi)
    psi = pi * k * k * k + pi * k + k * pi * k + k
    assert sum(p.numel() for p in layer.parameters()) == 2 * k * c + c + psi


def test_batchnorm_state_dict_loads_strictly():
    bn = nn.BatchNorm2d(32)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    bn(torch.randn(4, 32, 5, 5) * 2 + 1)
    layer = ExemplarNorm2d(32)
    init_branch = layer.ratio_fc1.weight.clone()
    layer.load_state_dict(bn.state_dict(), strict=True)
    torch.testing.assert_close(layer.weight, bn.weight.detach().expand(3, 32))
    torch.testing.assert_close(layer.bias.sum(0), bn.bias.detach())
    torch.testing.assert_close(layer.running_var, bn.running_var)
    assert torch.equal(layer.ratio_fc1.weight, init_branch)


@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d])
def test_batchnorm_entries_of_another_width_are_not_converted_but_reported(cls):
    # A crafted 1-D weight of 2³¹ elements (stride 0 over one stored value, so the file is
    # tiny) was repeated into 24 GiB by the conversion before any shape check.
    huge = torch.ones(1).expand(2 ** 31)
    with pytest.raises(RuntimeError, match='size mismatch for weight'):
        cls(8).load_state_dict({'weight': huge, 'bias': huge}, strict=False)
    with pytest.raises(RuntimeError, match='size mismatch for bias'):
        cls(8).load_state_dict({**nn.BatchNorm2d(8).state_dict(), 'bias': torch.ones(9)})


def test_batchnorm_checkpoint_into_bn_only_exemplar_norm_reproduces_batchnorm():
    bn = nn.BatchNorm2d(16)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    bn(torch.randn(4, 16, 5, 5) * 3 - 2)
    layer = ExemplarNorm2d(16, normalizers=('BN',))
    layer.load_state_dict(bn.state_dict())
    x = torch.randn(3, 16, 4, 4)
    torch.testing.assert_close(layer.eval()(x), bn.eval()(x))
    torch.testing.assert_close(layer.train()(x), bn.train()(x))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_keeps_statistics_in_float32(dtype):
    layer = randomized(ExemplarNorm2d(32))
    x = torch.randn(2, 32, 8, 8) * 4 + 3
    reference = exemplar_norm(x.to(dtype).double(), layer.double())[0]
    y = layer.float()(x.to(dtype))
    assert y.dtype == dtype
    assert layer.last_ratios.dtype == torch.float32
    torch.testing.assert_close(y.double(), reference, rtol=2e-2, atol=5e-2)


def test_autocast_output_keeps_input_dtype():
    layer = randomized(ExemplarNorm2d(32))
    x = torch.randn(2, 32, 8, 8).bfloat16()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_single_value_per_channel_stays_finite_in_training():
    layer = randomized(ExemplarNorm2d(32))
    x = torch.randn(1, 32, 1, 1, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(layer.running_var).all()


@pytest.mark.parametrize('x, error, match', [
    (torch.randn(2, 32), ValueError, r'4-D .* or 3-D'),
    (torch.randn(2, 16, 4, 4), ValueError, 'num_features=32'),
    (torch.ones(2, 32, 4, 4, dtype=torch.long), TypeError, 'floating-point'),
    (torch.randn(0, 32, 4, 4), ValueError, 'empty'),
])
def test_bad_input_is_rejected_with_a_clear_message(x, error, match):
    with pytest.raises(error, match=match):
        ExemplarNorm2d(32)(x)


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_features=32, normalizers=('IN', 'GN')), "unknown normalizer.*'GN'"),
    (dict(num_features=32, normalizers=()), 'at least one'),
    (dict(num_features=32, normalizers=('IN', 'IN')), 'repeats'),
    (dict(num_features=0), 'positive'),
])
def test_bad_configuration_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExemplarNorm2d(**kwargs)


@pytest.mark.parametrize('training', [True, False])
def test_switchable_norm_equals_reference_and_loads_batchnorm(training):
    bn = nn.BatchNorm2d(16)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    bn(torch.randn(4, 16, 5, 5) * 2 + 1)
    layer = SwitchableNorm2d(16).double()
    layer.load_state_dict(bn.double().state_dict(), strict=True)
    assert torch.equal(layer.weight, bn.weight)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, -1.0, 2.0]))
        layer.var_weight.copy_(torch.tensor([1.5, 0.2, -0.7]))
    layer.train(training)
    x = torch.randn(3, 16, 4, 6, dtype=torch.float64) * 2 - 1
    expected = switchable_norm(x, layer, use_running_bn=not training)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d])
def test_non_finite_image_leaves_running_statistics_finite(cls):
    layer = cls(8).train()
    x = torch.randn(4, 8, 5, 5)
    layer(x)  # one clean batch moves the running statistics
    mean, var = layer.running_mean.clone(), layer.running_var.clone()
    x[2, 3, 1, 1] = float('nan')
    x[1, 5, 0, 0] = float('inf')
    layer(x)
    assert torch.isfinite(layer.running_mean).all() and torch.isfinite(layer.running_var).all()
    # The channels the bad values touch keep their statistics; the others move on.
    bad = torch.tensor([3, 5])
    assert torch.equal(layer.running_mean[bad], mean[bad])
    assert torch.equal(layer.running_var[bad], var[bad])
    good = torch.tensor([0, 1, 2, 4, 6, 7])
    assert not torch.equal(layer.running_mean[good], mean[good])


@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d])
@pytest.mark.parametrize('dtype', [None, torch.float64])
def test_factory_kwargs_place_parameters_and_running_stats(cls, dtype):
    layer = cls(8, 1e-5, 0.1, device='meta', dtype=dtype)
    tensors = dict(layer.named_parameters())
    tensors.update(running_mean=layer.running_mean, running_var=layer.running_var)
    expected = dtype or torch.get_default_dtype()
    assert all(t.device.type == 'meta' and t.dtype == expected for t in tensors.values())
    assert layer.num_batches_tracked.device.type == 'meta'
    assert layer.num_batches_tracked.dtype == torch.int64


@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d])
def test_float64_factory_kwarg_builds_a_float64_layer(cls):
    layer = cls(8, dtype=torch.float64).train()
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    assert layer.running_mean.dtype == layer.running_var.dtype == torch.float64
    assert layer.num_batches_tracked.dtype == torch.int64
    torch.manual_seed(0)
    reference = cls(8).double().train()
    x = torch.randn(3, 8, 4, 5, dtype=torch.float64)
    y = layer(x)
    assert y.dtype == torch.float64
    layer.load_state_dict(reference.state_dict())  # same function as a converted layer
    torch.testing.assert_close(layer(x), reference(x), rtol=0, atol=0)
    assert int(layer.num_batches_tracked) == int(reference.num_batches_tracked) == 1


@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d])
def test_arguments_after_momentum_are_keyword_only(cls):
    with pytest.raises(TypeError):
        cls(8, 1e-5, 0.1, False)
    layer = cls(8, 1e-3, None, track_running_stats=False)
    assert (layer.eps, layer.momentum, layer.track_running_stats) == (1e-3, None, False)


@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d])
def test_docstring_examples_run(cls):
    import doctest
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder(recurse=False).find(cls, cls.__name__, globs={}):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0 and results.failed == 0


@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d])
def test_a_pool_without_bn_has_no_bn_member_mode_and_follows_the_layer(cls):
    layer = cls(8, normalizers=('IN', 'LN'), sync_stats=True)
    assert not hasattr(layer, 'bn_member_mode')
    assert layer._bn_member_training() and not layer.eval()._bn_member_training()
    assert layer.train()._synchronizes() is False  # no process group: nothing to reduce


# ------------------------------------------------------------------------------------------
# The contracts nn.BatchNorm2d keeps: the meta device, fake tensors, torch.func, tracing.

MIXED = [ExemplarNorm2d, SwitchableNorm2d]


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('impl', ['op', 'reference'])
@pytest.mark.parametrize('cls', MIXED)
def test_meta_device_runs_forward_backward_and_to_empty(cls, impl, training):
    layer = cls(8, impl=impl, device='meta').train(training)
    x = torch.randn(2, 8, 4, 5, device='meta', requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert y.device.type == 'meta' and y.shape == x.shape and x.grad.shape == x.shape
    layer.to_empty(device='cpu')
    layer.reset_parameters()
    fresh = cls(8, impl=impl).train(training)
    x = torch.randn(2, 8, 4, 5)
    torch.testing.assert_close(layer(x), fresh(x))


@pytest.mark.parametrize('impl', ['op', 'reference'])
def test_a_fake_forward_leaves_no_fake_ratios(impl):
    from torch._subclasses.fake_tensor import FakeTensorMode
    layer = ExemplarNorm2d(8, impl=impl)
    layer(torch.randn(2, 8, 4, 4))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        y = layer(mode.from_tensor(torch.randn(3, 8, 4, 4)))
    assert y.shape == (3, 8, 4, 4) and layer.last_ratios is None
    copy.deepcopy(layer)
    torch.save(layer, io.BytesIO())


@pytest.mark.parametrize('cls', MIXED)
def test_torch_func_transforms_run_the_references_on_the_op_path(cls):
    # The ops' autograd is C++ (which functorch refuses) and they have no batching rules:
    # inside a transform the layer runs the references, which compute the same function.
    op = randomized(cls(8).eval())
    reference = cls(8, impl='reference').eval()
    reference.load_state_dict(op.state_dict())
    x = torch.randn(2, 8, 4, 4)

    def loss(layer):
        return lambda p: functional_call(layer, p, (x,)).square().sum()

    grads = torch.func.grad(loss(op))(dict(op.named_parameters()))
    expected = torch.func.grad(loss(reference))(dict(reference.named_parameters()))
    for name in grads:
        torch.testing.assert_close(grads[name], expected[name])
    batch = torch.randn(3, 2, 8, 4, 4)
    torch.testing.assert_close(torch.func.vmap(op)(batch),
                               torch.stack([reference(sample) for sample in batch]))
    torch.testing.assert_close(torch.func.jacrev(op)(x[:1, :, :2, :2]),
                               torch.func.jacrev(reference)(x[:1, :, :2, :2]))
    if cls is ExemplarNorm2d:  # no functorch wrapper left behind
        assert op.last_ratios is None
        copy.deepcopy(op)


@pytest.mark.parametrize('cls', MIXED)
def test_num_features_of_any_integer_type_and_no_tracer_warnings(cls):
    import warnings
    assert cls(np.int64(8)).num_features == 8 and type(cls(np.int64(8)).num_features) is int
    with pytest.raises(ValueError, match='positive int'):
        cls(8.0)
    with warnings.catch_warnings():
        warnings.simplefilter('error', torch.jit.TracerWarning)
        torch.jit.trace(cls(8).eval(), torch.randn(2, 8, 4, 4))
