"""The coefficient ops and the fused layers built on them (en_seg.ops.coefficient_op,
csrc/coefficient_op*.cpp): one op from the moments to the affine map, one apply op whose
backward is the layer's (docs/method.md#statistics, #running-statistics, #output,
#switchable-normalization).

Oracles: the layers' pure-PyTorch path (impl='reference'),
autograd through it, nn.BatchNorm2d for the running statistics, and gradcheck. The CUDA
kernels of these ops are checked against the CPU ones in tests/test_cuda_emulation.py.
"""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from en_seg.models import ExemplarNorm2d, SwitchableNorm2d
from en_seg.ops import EXTENSION_AVAILABLE, normalizer_codes
from reference import randomized

pytestmark = pytest.mark.skipif(
    not EXTENSION_AVAILABLE,
    reason='en_seg.ops._C is not built with the coefficient ops '
           '(pip install --no-build-isolation -e .)')

ops = torch.ops.en_seg
POOLS = [('IN', 'LN', 'BN'), ('BN', 'IN'), ('LN', 'BN'), ('IN', 'LN'), ('BN',), ('LN',),
         ('IN',)]
POOL_IDS = ['-'.join(pool) for pool in POOLS]
# EN's ratio branch: r channels per group and width factor π, beside the defaults.
BRANCHES = [dict(reduction=4, pi=50), dict(reduction=16, pi=1), dict(reduction=1, pi=7)]


def pair(cls, c, seed=0, **kwargs):
    """A float64 layer on the coefficient ops and its pure-PyTorch twin, same state."""
    fused = randomized(cls(c, **kwargs).double(), seed)
    reference = cls(c, impl='reference', **kwargs).double()
    reference.load_state_dict(fused.state_dict())
    return fused, reference


def assert_same_step(fused, reference, x, tol=1e-10):
    """One forward + backward of both layers agrees: y, the ratios, the gradients of x and
    of every parameter, the running statistics."""
    x = x.clone().requires_grad_()
    y, y_ref = fused(x), reference(x)
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
    names = ['x'] + [name for name, _ in fused.named_parameters()]
    grads = torch.autograd.grad(y, (x, *fused.parameters()), grad)
    grads_ref = torch.autograd.grad(y_ref, (x, *reference.parameters()), grad)
    for name, g, g_ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=100 * tol, atol=100 * tol, msg=name)
    if isinstance(fused, ExemplarNorm2d):
        torch.testing.assert_close(fused.last_ratios, reference.last_ratios)
    for name, buffer in fused.named_buffers():
        torch.testing.assert_close(buffer, dict(reference.named_buffers())[name], rtol=tol,
                                   atol=tol, msg=name)


def activation(shape, seed=0, offset=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + offset


# ---------------------------------------------------------------------------------------
# The layers against their PyTorch path


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('pool', POOLS, ids=POOL_IDS)
@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d], ids=['EN', 'SN'])
def test_layer_matches_the_pytorch_path_in_float64(cls, pool, training):
    kwargs = dict(reduction=4) if cls is ExemplarNorm2d else {}
    fused, reference = pair(cls, 16, normalizers=pool, **kwargs)
    fused.train(training), reference.train(training)
    for step in range(2):  # the second step sees the first one's running statistics
        assert_same_step(fused, reference, activation((3, 16, 5, 4), seed=step))


@pytest.mark.parametrize('branch', BRANCHES, ids=lambda b: f'r{b["reduction"]}-pi{b["pi"]}')
@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_exemplar_layer_matches_for_every_ratio_branch_shape(branch, training):
    fused, reference = pair(ExemplarNorm2d, 32, seed=3, **branch)
    fused.train(training), reference.train(training)
    assert_same_step(fused, reference, activation((4, 32, 3, 3), seed=1))


@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d], ids=['EN', 'SN'])
@pytest.mark.parametrize('case', ['no running statistics', 'frozen BN member', 'momentum None',
                                  'one value per channel'])
def test_layer_matches_the_pytorch_path_in_every_statistics_mode(cls, case):
    kwargs = dict(reduction=4) if cls is ExemplarNorm2d else {}
    if case == 'no running statistics':
        kwargs['track_running_stats'] = False
    if case == 'momentum None':
        kwargs['momentum'] = None
    fused, reference = pair(cls, 8, **kwargs)
    if case == 'frozen BN member':  # norm_eval: the BN member alone in eval
        fused.bn_member_mode.eval(), reference.bn_member_mode.eval()
    shape = (1, 8, 1, 1) if case == 'one value per channel' else (2, 8, 3, 3)
    for step in range(3):
        assert_same_step(fused, reference, activation(shape, seed=step))


def test_layer_in_float32_and_bfloat16_matches_the_pytorch_path():
    fused, reference = pair(ExemplarNorm2d, 32, reduction=8)
    fused.float(), reference.float()
    for dtype, tol in ((torch.float32, 2e-5), (torch.bfloat16, 2e-2)):
        x = activation((2, 32, 6, 6)).to(dtype)
        torch.testing.assert_close(fused(x).float(), reference(x).float(), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------
# Running statistics


@pytest.mark.parametrize('momentum', [0.1, None])
@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d], ids=['EN', 'SN'])
def test_running_statistics_are_batchnorm2d_ones(cls, momentum):
    layer = cls(6, momentum=momentum).double()
    bn = nn.BatchNorm2d(6, momentum=momentum).double()
    for step in range(4):
        x = activation((3, 6, 4, 5), seed=step, offset=step)
        layer(x), bn(x)
        torch.testing.assert_close(layer.running_mean, bn.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.running_var, bn.running_var, rtol=1e-12, atol=1e-12)
        assert layer.num_batches_tracked.item() == bn.num_batches_tracked.item() == step + 1


def test_a_channel_with_a_non_finite_value_keeps_its_running_statistics():
    layer = ExemplarNorm2d(4, reduction=2).double()
    bn = nn.BatchNorm2d(4).double()
    x = activation((2, 4, 3, 3))
    x[1, 2, 0, 1] = float('nan')
    x[0, 3, 2, 2] = float('inf')
    layer(x), bn(x)
    finite = torch.tensor([True, True, False, False])
    torch.testing.assert_close(layer.running_mean[finite], bn.running_mean[finite])
    torch.testing.assert_close(layer.running_var[finite], bn.running_var[finite])
    assert torch.equal(layer.running_mean[~finite], torch.zeros(2, dtype=torch.float64))
    assert torch.equal(layer.running_var[~finite], torch.ones(2, dtype=torch.float64))
    assert layer.num_batches_tracked.item() == 1


def test_one_value_per_channel_folds_the_biased_variance():
    layer = SwitchableNorm2d(5).double()
    x = activation((1, 5, 1, 1))
    layer(x)
    torch.testing.assert_close(layer.running_mean, 0.1 * x.flatten())
    torch.testing.assert_close(layer.running_var, torch.full((5,), 0.9, dtype=torch.float64))


def test_running_statistics_change_only_in_training_and_bump_their_version():
    layer = ExemplarNorm2d(8)
    x = torch.randn(2, 8, 4, 4)
    version = layer.running_mean._version
    layer(x)
    assert layer.running_mean._version > version and layer.num_batches_tracked.item() == 1
    layer.eval()
    before = [b.clone() for b in layer.buffers()]
    layer(x)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.buffers()))


# ---------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('pool', [('IN', 'LN', 'BN'), ('LN', 'BN')], ids=['IN-LN-BN', 'LN-BN'])
@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d], ids=['EN', 'SN'])
def test_gradcheck_through_the_fused_ops(cls, pool, training):
    kwargs = dict(reduction=2, pi=3) if cls is ExemplarNorm2d else {}
    layer = randomized(cls(4, normalizers=pool, **kwargs).double(), seed=2).train(training)
    names = [name for name, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    x = activation((3, 4, 3, 2)).requires_grad_()

    def run(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))


@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d], ids=['EN', 'SN'])
def test_a_second_derivative_is_refused_and_the_reference_gives_it(cls):
    # Gradients are first order (the kernel ops run below autograd): under create_graph
    # they are those of a plain backward, and differentiating them again fails, naming
    # the way out, instead of coming out silently wrong.
    fused, reference = pair(cls, 8)
    x = activation((2, 8, 3, 3)).requires_grad_()
    grads = {}
    for name, layer in (('fused', fused), ('reference', reference)):
        (grads[name],) = torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)
    torch.testing.assert_close(grads['fused'], grads['reference'], rtol=1e-10, atol=1e-10)
    with pytest.raises(RuntimeError, match="first derivatives only.*impl='reference'"):
        torch.autograd.grad(grads['fused'].sum(), x)
    (second,) = torch.autograd.grad(grads['reference'].sum(), x)
    assert torch.isfinite(second).all()


def exemplar_inputs(layer, x):
    """The coefficient op's arguments for an ExemplarNorm2d in its current mode."""
    mean, var = ops.channel_moments(x)
    tracked = 'BN' in layer.normalizers and layer.track_running_stats
    batch = 'BN' not in layer.normalizers or layer._uses_batch_bn_stats()
    running = ((layer.running_mean.clone(), layer.running_var.clone(),
                layer.num_batches_tracked.clone()) if tracked else (None, None, None))
    params = [p.detach() for p in (layer.weight, layer.bias, layer.ratio_conv.weight,
                                   layer.ratio_fc1.weight, layer.ratio_fc1.bias,
                                   layer.ratio_fc2.weight, layer.ratio_fc2.bias)]
    return (mean, var, *params, *running, normalizer_codes(layer.normalizers), batch,
            layer.momentum, layer.eps, x.shape[0] * x.shape[2] * x.shape[3])


def switchable_inputs(layer, x):
    mean, var = ops.channel_moments(x)
    batch = 'BN' not in layer.normalizers or layer._uses_batch_bn_stats()
    running = (layer.running_mean.clone(), layer.running_var.clone(),
               layer.num_batches_tracked.clone())
    params = [p.detach() for p in (layer.weight, layer.bias, layer.mean_weight,
                                   layer.var_weight)]
    return (mean, var, *params, *running, normalizer_codes(layer.normalizers), batch,
            layer.momentum, layer.eps, x.shape[0] * x.shape[2] * x.shape[3])


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('pool', POOLS, ids=POOL_IDS)
@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d], ids=['EN', 'SN'])
def test_backward_op_is_the_vector_jacobian_product_of_the_coefficients(cls, pool, training):
    # Autograd through the reference coefficients (ratio branch included), against the
    # backward op, for the gradients of mean, var and every parameter.
    kwargs = dict(reduction=4) if cls is ExemplarNorm2d else {}
    layer = randomized(cls(8, normalizers=pool, impl='reference', **kwargs).double(), 4)
    layer.train(training)
    x = activation((3, 8, 4, 3))
    gen = torch.Generator().manual_seed(5)
    grad_scale, grad_shift = (torch.randn(3, 8, generator=gen, dtype=torch.float64)
                              for _ in range(2))
    if cls is ExemplarNorm2d:
        args = exemplar_inputs(layer, x)
        _, _, _, saved = ops.exemplar_coefficients(*args)
        grads = ops.exemplar_coefficients_backward(
            grad_scale, grad_shift, saved, args[2], args[4], args[5], args[7], args[12],
            args[13])
    else:
        args = switchable_inputs(layer, x)
        _, _, saved = ops.switchable_coefficients(*args)
        grads = ops.switchable_coefficients_backward(grad_scale, grad_shift, saved, args[2],
                                                     args[9], args[10])
    mean, var = (t.clone().requires_grad_() for t in ops.channel_moments(x))
    scale, shift = layer._affine_coefficients(mean, var, 3 * 4 * 3)
    expected = torch.autograd.grad((scale, shift), (mean, var, *layer.parameters()),
                                   (grad_scale, grad_shift), allow_unused=True)
    names = ['mean', 'var'] + [name for name, _ in layer.named_parameters()]
    for name, g, g_ref in zip(names, grads, expected):
        g_ref = torch.zeros_like(g) if g_ref is None else g_ref
        torch.testing.assert_close(g, g_ref.reshape(g.shape), rtol=1e-9, atol=1e-10, msg=name)


def en_op_inputs(dtype, running=True):
    layer = randomized(ExemplarNorm2d(16, reduction=4).to(dtype))
    args = list(exemplar_inputs(layer, activation((3, 16, 4, 4)).to(dtype)))
    if not running:
        args[9:12] = [None, None, None]
    return layer, args


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
def test_opcheck_exemplar_ops(dtype):
    for running in (True, False):
        _, args = en_op_inputs(dtype, running)
        torch.library.opcheck(ops.exemplar_coefficients.default, tuple(args))
    _, args = en_op_inputs(dtype)
    scale, shift, _, saved = ops.exemplar_coefficients(*args)
    grad = torch.randn_like(scale)
    torch.library.opcheck(ops.exemplar_coefficients_backward.default,
                          (grad, grad, saved, args[2], args[4], args[5], args[7], args[12],
                           args[13]))
    x = activation((3, 16, 4, 4)).to(dtype).requires_grad_()
    mean = ops.channel_moments(x.detach())[0]
    params = [p.clone().requires_grad_() for p in args[2:9]]
    torch.library.opcheck(ops.exemplar_norm_apply.default,
                          (x, mean, scale, shift, saved, *params, args[12], args[13]))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
def test_opcheck_switchable_ops(dtype):
    layer = randomized(SwitchableNorm2d(16).to(dtype))
    x = activation((3, 16, 4, 4)).to(dtype)
    args = switchable_inputs(layer, x)
    torch.library.opcheck(ops.switchable_coefficients.default, args)
    scale, shift, saved = ops.switchable_coefficients(*args)
    grad = torch.randn_like(scale)
    torch.library.opcheck(ops.switchable_coefficients_backward.default,
                          (grad, grad, saved, args[2], args[9], args[10]))
    params = [p.clone().requires_grad_() for p in args[2:6]]
    torch.library.opcheck(ops.switchable_norm_apply.default,
                          (x.clone().requires_grad_(), args[0], scale, shift, saved, *params,
                           args[9], args[10]))


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_channel_norm_input_grad_is_its_formula(dtype, channels_last):
    x = activation((2, 5, 4, 3)).to(dtype)
    dy = activation((2, 5, 4, 3), seed=1).to(dtype)
    if channels_last:
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(2)
    mean, scale, sum_dy, grad_mean, grad_var = (
        torch.randn(2, 5, generator=gen, dtype=torch.float64).to(stats) for _ in range(5))
    dx = ops.channel_norm_input_grad(dy, x, mean, scale, sum_dy, grad_mean, grad_var)

    def bc(t):
        return t.double()[:, :, None, None]

    expected = bc(scale) * dy.double() + (bc(grad_mean) - bc(scale) * bc(sum_dy)
                                          + 2 * bc(grad_var) * (x.double() - bc(mean))) / 12
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(dx.double(), expected, rtol=tol, atol=tol)
    assert dx.dtype == dtype and dx.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.library.opcheck(ops.channel_norm_input_grad.default,
                          (dy, x, mean, scale, sum_dy, grad_mean, grad_var))


@pytest.mark.parametrize('change, match', [
    (lambda a: a.__setitem__(12, (0, 0)), 'at most once'),
    (lambda a: a.__setitem__(12, (0, 3)), 'at most once'),
    (lambda a: a.__setitem__(12, ()), '1 to 3'),
    (lambda a: (a.__setitem__(13, False), a.__setitem__(9, None), a.__setitem__(10, None)),
     'running statistics; pass them'),
    (lambda a: a.__setitem__(11, None), 'needs num_batches_tracked'),
    (lambda a: a.__setitem__(15, 0.0), 'eps must be positive'),
    (lambda a: a.__setitem__(16, 7), 'must be N \\* H \\* W'),
    (lambda a: a.__setitem__(2, a[2][:2]), r'weight has shape \[2, 16\], expected \(K, C\)'),
    (lambda a: a.__setitem__(9, a[9].double()), 'running_mean is Double'),
])
def test_bad_arguments_are_named(change, match):
    _, args = en_op_inputs(torch.float32)
    change(args)
    with pytest.raises(RuntimeError, match=match):
        ops.exemplar_coefficients(*args)


def test_the_coefficient_op_refuses_to_be_differentiated():
    _, args = en_op_inputs(torch.float32)
    args[2] = args[2].clone().requires_grad_()
    with pytest.raises(RuntimeError, match='not differentiable.*exemplar_norm_apply'):
        ops.exemplar_coefficients(*args)
    with torch.no_grad():
        ops.exemplar_coefficients(*args)


# ---------------------------------------------------------------------------------------
# Dispatches


class _Dispatches(TorchDispatchMode):
    """Records every op that reaches the dispatcher's Python key."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d], ids=['EN', 'SN'])
def test_a_layer_dispatches_three_ops_forward_and_three_backward(cls, training):
    name = {ExemplarNorm2d: 'exemplar', SwitchableNorm2d: 'switchable'}[cls]
    layer = cls(64).train(training)
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    grad = torch.randn_like(x)
    with _Dispatches() as forward:
        y = layer(x)
    with _Dispatches() as backward:
        torch.autograd.grad(y, (x, *layer.parameters()), grad)
    assert forward.ops == ['channel_moments.default', f'{name}_coefficients.default',
                           f'{name}_norm_apply.default']
    assert backward.ops == ['channel_affine_grad_sums.default',
                            f'{name}_coefficients_backward.default',
                            'channel_norm_input_grad.default']
    with torch.no_grad(), _Dispatches() as inference:
        layer(x)
    assert inference.ops == ['channel_moments.default', f'{name}_coefficients.default',
                             'channel_affine.default']


def test_a_layer_that_synchronizes_keeps_the_composed_path(monkeypatch):
    # The all-reduce of the BN member's statistics sits between the moments and the
    # coefficients (tests/test_sync_stats.py runs it across processes).
    layer = ExemplarNorm2d(16, sync_stats=True)
    monkeypatch.setattr(layer, '_synchronizes', lambda: True)
    monkeypatch.setattr(layer, '_batch_bn_statistics',
                        lambda pooled, var, count: (pooled.mean(0, keepdim=True),
                                                    var.mean(0, keepdim=True), count))
    with _Dispatches() as forward:
        layer(torch.randn(2, 16, 4, 4))
    assert 'exemplar_coefficients.default' not in forward.ops
    assert 'exemplar_ratios.default' in forward.ops


def _copies_in_backward(y, grad_y, inputs):
    """How many copies of an activation-sized tensor (aten::copy_, also those inside the
    ops' kernels, which the profiler records) the backward of y makes."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:
        torch.autograd.grad(y, inputs, grad_y)
    return sum(event.count for event in prof.key_averages(group_by_input_shape=True)
               if event.key == 'aten::copy_' and event.input_shapes[0] == list(y.shape))


@pytest.mark.parametrize('path', ['fused', 'composed'])
def test_the_backward_copies_a_differently_laid_out_gradient_once(path, monkeypatch):
    # x channels_last, grad_y NCHW: both backward passes read grad_y in x's layout.
    layer = ExemplarNorm2d(16, reduction=4)
    if path == 'composed':
        monkeypatch.setattr(layer, '_fuses_coefficients', lambda x: False)
    x = torch.randn(2, 16, 5, 6).to(memory_format=torch.channels_last).requires_grad_()
    grad_y = torch.randn(2, 16, 5, 6)
    assert _copies_in_backward(layer(x), grad_y, [x]) == 1
    assert _copies_in_backward(layer(x), grad_y.to(memory_format=torch.channels_last), [x]) == 0
