"""The channel ops: statistics / apply (en_seg.ops.channel_op, csrc/channel_op*.cpp,
csrc/cuda/channel_op*) and the EN / SN layers that use them (docs/method.md#output).

The oracles are float64 PyTorch formulas written here, the layers' pure-PyTorch path
(``impl='reference'``) and the literal K-map reference of tests/reference.py.
"""
import copy
import platform
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from en_seg.models import ExemplarNorm2d, SwitchableNorm2d
from en_seg.ops import CUDA_KERNELS_AVAILABLE, EXTENSION_AVAILABLE, channel_affine_norm
from reference import (HUGE_SCALES, assert_moments_follow_var_mean, exemplar_norm,
                       huge_activation, randomized, switchable_norm)

pytestmark = pytest.mark.skipif(
    not EXTENSION_AVAILABLE,
    reason='en_seg.ops._C is not built with the fused ops '
           '(pip install --no-build-isolation -e .)')

ops = torch.ops.en_seg
HALF = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, torch.float64) + HALF
# Odd sizes on purpose: H * W and C not multiples of any vector width, H * W = 1, a plane
# longer than the CPU kernel's block, a channels_last sample split into several segments.
SHAPES = [(2, 3, 5, 7), (3, 19, 1, 1), (1, 1, 1, 1), (2, 37, 33, 41), (2, 40, 64, 65)]
CUDA_KERNELS = torch.cuda.is_available() and CUDA_KERNELS_AVAILABLE
DEVICES = ['cpu'] + (['cuda'] if CUDA_KERNELS else [])
requires_cuda_kernels = pytest.mark.skipif(
    not CUDA_KERNELS, reason='needs a GPU and the CUDA build of the fused ops')


def stats_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def activation(shape, dtype, channels_last, device='cpu', offset=0.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + offset).to(dtype)
    x = x.to(device)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def coefficients(shape, dtype, device='cpu', count=1, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape[:2], generator=gen, dtype=stats_dtype(dtype)).to(device)
            for _ in range(count)]


def tolerance(dtype):
    """Relative error a result computed in the op's accumulation type may have, measured
    against the float64 formula on the same (rounded) inputs, with the output rounded to
    dtype."""
    return {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3,
            torch.bfloat16: 1.6e-2}[dtype]


def assert_relative(actual, expected, dtype):
    scale = expected.abs().max().clamp_min(1e-30)
    err = (actual.double().cpu() - expected).abs().max() / scale
    assert err <= tolerance(dtype), f'relative error {err:.3g} > {tolerance(dtype):.1g}'


def memory_format(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def bc(t):
    """(N, C) -> (N, C, 1, 1) in float64 on the CPU."""
    return t.double().cpu()[:, :, None, None]


# ---------------------------------------------------------------------------------------
# The ops


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape', SHAPES)
def test_ops_match_their_float64_formulas(shape, dtype, channels_last, device):
    x = activation(shape, dtype, channels_last, device, offset=3.0)
    dy = activation(shape, dtype, channels_last, device, seed=5)
    center, a, b, k = coefficients(shape, dtype, device, count=4)
    x64, dy64 = x.double().cpu(), dy.double().cpu()

    mean, var = ops.channel_moments(x)
    assert mean.dtype == var.dtype == stats_dtype(dtype) and mean.shape == shape[:2]
    var64, mean64 = torch.var_mean(x64, dim=(2, 3), correction=0)
    assert_relative(mean, mean64, torch.float32 if dtype in HALF else dtype)
    assert_relative(var, var64, torch.float32 if dtype in HALF else dtype)

    y = ops.channel_affine(x, center, a, b)
    assert y.dtype == dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=memory_format(channels_last))
    assert_relative(y, bc(a) * (x64 - bc(center)) + bc(b), dtype)

    sum_dy, sum_dy_xc = ops.channel_affine_grad_sums(dy, x, center)
    assert sum_dy.dtype == stats_dtype(dtype)
    reduced = torch.float32 if dtype in HALF else dtype
    assert_relative(sum_dy, dy64.sum((2, 3)), reduced)
    assert_relative(sum_dy_xc, (dy64 * (x64 - bc(center))).sum((2, 3)), reduced)

    # mean = center, scale = a, sum_dy = k, grad_mean = b, grad_var = k
    dx = ops.channel_norm_input_grad(dy, x, center, a, k, b, k)
    assert dx.dtype == dtype and dx.is_contiguous(memory_format=memory_format(channels_last))
    m = x.shape[2] * x.shape[3]
    assert_relative(dx, bc(a) * dy64 + (bc(b) - bc(a) * bc(k) + 2 * bc(k) * (x64 - bc(center)))
                    / m, dtype)


@pytest.mark.parametrize('channels_last', [False, True])
def test_moments_have_no_cancellation_at_a_large_offset(channels_last):
    # E[x²] - E[x]² in float32 would lose every digit of a unit variance at 1e4.
    x = activation((2, 8, 32, 32), torch.float32, channels_last, offset=1e4) / 2
    mean, var = ops.channel_moments(x)
    var64, mean64 = torch.var_mean(x.double(), dim=(2, 3), correction=0)
    torch.testing.assert_close(var.double(), var64, rtol=1e-4, atol=0)
    torch.testing.assert_close(mean.double(), mean64, rtol=3e-7, atol=0)


@pytest.mark.parametrize('dtype, scale', HUGE_SCALES)
@pytest.mark.parametrize('shape', [(2, 8, 5, 5), (2, 5, 40, 77), (1, 70, 100, 91)])
@pytest.mark.parametrize('channels_last', [False, True])
def test_moments_near_overflow_follow_var_mean(dtype, scale, shape, channels_last):
    # Never NaN from finite data: a constant plane of 1e20 has variance 0, and every sum is
    # taken so that it overflows only where the moment does (docs/method.md#statistics).
    x = huge_activation(shape, dtype, scale, channels_last)
    mean, var = ops.channel_moments(x)
    assert_moments_follow_var_mean(x, mean, var, scale)


@pytest.mark.parametrize('dtype, scale', HUGE_SCALES)
@pytest.mark.parametrize('cls', [ExemplarNorm2d, SwitchableNorm2d])
def test_layer_output_is_non_finite_exactly_where_the_references_is(cls, dtype, scale):
    # Both impls compute the same function at every magnitude the dtype holds: the op path
    # gave NaN where the reference's output was finite (float32 at 1e37).
    for shape, channels_last in (((2, 8, 5, 5), False), ((2, 8, 40, 40), True)):
        x = huge_activation(shape, dtype, scale, channels_last)
        params = torch.float64 if dtype == torch.float64 else torch.float32
        op = randomized(cls(8)).to(params)
        reference = cls(8, impl='reference').to(params)
        reference.load_state_dict(op.state_dict())
        assert torch.equal(op(x).isfinite(), reference(x).isfinite()), (shape, channels_last)


@pytest.mark.parametrize('channels_last', [False, True])
def test_ops_are_bit_identical_for_any_thread_count(channels_last):
    x = activation((2, 40, 64, 65), torch.float32, channels_last)
    dy = activation((2, 40, 64, 65), torch.float32, channels_last, seed=3)
    center = x.mean((2, 3))
    threads = torch.get_num_threads()
    results = []
    for count in (1, max(2, threads)):
        torch.set_num_threads(count)
        try:
            results.append(ops.channel_moments(x) + ops.channel_affine_grad_sums(dy, x, center))
        finally:
            torch.set_num_threads(threads)
    for first, second in zip(*results):
        assert torch.equal(first, second)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('channels_last', [False, True])
def test_no_samples_give_empty_results(channels_last, device):
    x = activation((0, 4, 3, 3), torch.float32, channels_last, device)
    zeros = torch.zeros(0, 4, device=device)
    mean, var = ops.channel_moments(x)
    assert mean.shape == var.shape == (0, 4)
    assert ops.channel_affine(x, zeros, zeros, zeros).shape == x.shape
    assert ops.channel_affine_grad_sums(x, x, zeros)[0].shape == (0, 4)
    assert ops.channel_norm_input_grad(x, x, zeros, zeros, zeros, zeros, zeros).shape == x.shape


def test_other_strides_are_accepted_by_copy():
    x = activation((2, 6, 10, 9), torch.float32, False).transpose(2, 3)
    mean, var = ops.channel_moments(x)
    torch.testing.assert_close(var, x.var((2, 3), correction=0))
    torch.testing.assert_close(mean, x.mean((2, 3)))


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.float16,
                                   torch.bfloat16])
def test_opcheck(dtype, channels_last, device):
    shape = (2, 5, 4, 3)
    x = activation(shape, dtype, channels_last, device)
    dy = activation(shape, dtype, channels_last, device, seed=2)
    center, a, b, k = coefficients(shape, dtype, device, count=4)
    grad_args = [t.clone().requires_grad_() for t in (x, center, a, b)]
    torch.library.opcheck(ops.channel_moments.default, (grad_args[0],))
    torch.library.opcheck(ops.channel_affine.default, tuple(grad_args))
    torch.library.opcheck(ops.channel_affine_grad_sums.default, (dy, x, center))
    torch.library.opcheck(ops.channel_norm_input_grad.default, (dy, x, center, a, k, b, k))


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('channels_last', [False, True])
def test_gradcheck_of_each_op(channels_last, device):
    shape = (2, 3, 4, 5)
    x = activation(shape, torch.float64, channels_last, device).requires_grad_()
    center, a, b = (t.requires_grad_()
                    for t in coefficients(shape, torch.float64, device, count=3))
    assert torch.autograd.gradcheck(lambda x: ops.channel_moments(x), (x,))
    assert torch.autograd.gradcheck(ops.channel_affine, (x, center, a, b))


@pytest.mark.parametrize('call, match', [
    (lambda: ops.channel_moments(torch.randn(2, 3, 4)), '4-D'),
    (lambda: ops.channel_moments(torch.ones(2, 3, 4, 4, dtype=torch.int32)), 'float16'),
    (lambda: ops.channel_moments(torch.randn(2, 3, 0, 4)), 'H \\* W >= 1'),
    (lambda: ops.channel_affine(torch.randn(2, 3, 4, 4), torch.zeros(2, 3, dtype=torch.float64),
                                torch.zeros(2, 3), torch.zeros(2, 3)),
     'center has dtype Double, expected Float'),
    (lambda: ops.channel_affine(torch.randn(2, 3, 4, 4), torch.zeros(3, 2), torch.zeros(2, 3),
                                torch.zeros(2, 3)), r'expected \(N, C\) = \(2, 3\)'),
    (lambda: ops.channel_affine_grad_sums(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 4),
                                          torch.zeros(2, 3)), 'grad_y has shape'),
])
def test_bad_arguments_are_rejected_with_a_clear_message(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


# ---------------------------------------------------------------------------------------
# The layers


def layer_pair(cls, c, seed=0, **kwargs):
    """A fused layer and its pure-PyTorch twin with the same float64 state."""
    fused = randomized(cls(c, **kwargs).double(), seed)
    reference = cls(c, impl='reference', **kwargs).double()
    reference.load_state_dict(fused.state_dict())
    return fused, reference


LAYERS = [(ExemplarNorm2d, dict(reduction=4), exemplar_norm),
          (SwitchableNorm2d, {}, switchable_norm)]


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('cls, kwargs, literal', LAYERS)
def test_fused_layer_matches_reference_layer_and_literal_eq3_in_float64(
        cls, kwargs, literal, training, channels_last):
    fused, reference = layer_pair(cls, 16, **kwargs)
    fused.train(training), reference.train(training)
    x = activation((3, 16, 7, 5), torch.float64, channels_last, offset=1.0)
    x.requires_grad_()
    y, y_ref = fused(x), reference(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    literal_y = literal(x.detach(), reference, use_running_bn=not training)
    torch.testing.assert_close(y, literal_y[0] if isinstance(literal_y, tuple) else literal_y,
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fused.running_var, reference.running_var, rtol=1e-12, atol=0)
    grad = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, *fused.parameters()), grad)
    grads_ref = torch.autograd.grad(y_ref, (x, *reference.parameters()), grad)
    for name, g, g_ref in zip(['x'] + [n for n, _ in fused.named_parameters()], grads,
                              grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10, msg=name)
    assert grads[0].is_contiguous(memory_format=memory_format(channels_last))


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('cls, kwargs, _', LAYERS)
def test_gradcheck_through_the_fused_layer(cls, kwargs, _, training):
    layer = randomized(cls(8, **kwargs).double(), seed=2).train(training)
    names = [name for name, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    x = activation((3, 8, 3, 2), torch.float64, False).requires_grad_()

    def run(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))


def test_gradients_when_only_some_inputs_require_them():
    fused, reference = layer_pair(ExemplarNorm2d, 16, reduction=4)
    x = activation((2, 16, 5, 5), torch.float64, False)
    # Parameters only (x is data, as for a first layer).
    fused(x).square().sum().backward()
    reference(x).square().sum().backward()
    for p, p_ref in zip(fused.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-9, atol=1e-10)
    # x only (frozen layer), twice through a retained graph.
    fused.requires_grad_(False), reference.requires_grad_(False)
    x.requires_grad_()
    y = fused(x).square().sum()
    first = torch.autograd.grad(y, x, retain_graph=True)[0]
    second = torch.autograd.grad(y, x)[0]
    expected = torch.autograd.grad(reference(x).square().sum(), x)[0]
    torch.testing.assert_close(first, expected, rtol=1e-9, atol=1e-10)
    assert torch.equal(first, second)


@pytest.mark.parametrize('cls, kwargs, _', LAYERS)
def test_torch_compile_traces_the_fused_layer_in_one_graph(cls, kwargs, _):
    # Under compile the ops are composed with their registered fake kernels and autograd
    # formulas; aot_eager runs the traced forward and backward graphs without a compiler.
    layer = randomized(cls(16, **kwargs).double())
    x = activation((2, 16, 5, 5), torch.float64, False).requires_grad_()
    compiled = torch.compile(layer, backend='aot_eager', fullgraph=True)
    y = compiled(x)
    torch.testing.assert_close(y, layer(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(y.square().sum(), x)[0],
                               torch.autograd.grad(layer(x).square().sum(), x)[0],
                               rtol=1e-10, atol=1e-12)


#: Ten shapes varying N, H and W (none with H == W, which duck sizing would tie together, for
#: BatchNorm2d as for us).
DYNAMIC_SHAPES = [(2, 16, 8, 7), (3, 16, 8, 6), (2, 16, 9, 7), (4, 16, 5, 6), (5, 16, 10, 3),
                  (2, 16, 12, 11), (6, 16, 7, 5), (3, 16, 4, 9), (7, 16, 6, 5), (2, 16, 3, 4)]


def _compiles(layer, shapes, **compile_kwargs):
    """How many frames torch.compile compiles of layer over ``shapes`` (forward and
    backward of each, under aot_eager, whose graphs are the traced forward and backward)."""
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    counter = CompileCounterWithBackend('aot_eager')
    compiled = torch.compile(layer, backend=counter, fullgraph=True, **compile_kwargs)
    for shape in shapes:
        x = activation(shape, torch.float32, False).requires_grad_()
        compiled(x).square().sum().backward()
    return counter.frame_count


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('cls, kwargs, _', LAYERS)
def test_dynamic_shapes_compile_one_graph_as_batchnorm_does(cls, kwargs, _, training):
    # The coefficient ops take N * H * W as a SymInt, computed in the layer op from the
    # input's symbolic sizes: a new N, H or W is the same graph.
    batchnorm = _compiles(nn.BatchNorm2d(16).train(training), DYNAMIC_SHAPES, dynamic=True)
    assert batchnorm <= 2  # its frames, whatever the shapes
    assert _compiles(cls(16, **kwargs).train(training), DYNAMIC_SHAPES,
                     dynamic=True) == batchnorm


@pytest.mark.parametrize('dim', [0, 2, 3])
@pytest.mark.parametrize('cls, kwargs, _', LAYERS)
def test_mark_dynamic_on_n_h_or_w(cls, kwargs, _, dim):
    layer = randomized(cls(16, **kwargs))
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend='aot_eager', fullgraph=True)
    for size in (5, 6, 7):
        shape = [2, 16, 4, 3]
        shape[dim] = size
        x = activation(tuple(shape), torch.float32, False)
        torch._dynamo.mark_dynamic(x, dim)
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


def test_function_of_the_moments_only_gets_their_gradient():
    # channel_affine_norm with an output that ignores x's deviation still differentiates
    # through the moments: y = shift(mean, var) everywhere.
    x = activation((2, 3, 4, 4), torch.float64, False).requires_grad_()

    def run(x):
        return channel_affine_norm(x, lambda m, v: (torch.zeros_like(m), m * v))

    assert torch.autograd.gradcheck(run, (x,))


class _ActivationPasses(TorchDispatchMode):
    """Records every op that reads or writes a tensor of at least `numel` elements."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out))
                   if isinstance(t, torch.Tensor)]
        if any(t.numel() >= self.numel for t in tensors):
            self.ops.append(func.__name__)
        return out


@pytest.mark.parametrize('cls, kwargs, _', LAYERS)
def test_layer_makes_batchnorm_passes_and_saves_only_x_and_small_tensors(cls, kwargs, _):
    layer = randomized(cls(64, **kwargs))
    x = activation((2, 64, 16, 16), torch.float32, False).requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    large = [t for t in saved if t.numel() >= x.numel() // 4]
    assert large and all(t.data_ptr() == x.data_ptr() for t in large), [t.shape for t in large]
    with _ActivationPasses(x.numel()) as forward:
        y = layer(x)
    grad = torch.randn_like(y)
    with _ActivationPasses(x.numel()) as backward:
        torch.autograd.grad(y, (x, *layer.parameters()), grad)
    # The apply op's forward is the affine map, its backward the layer's (one reduction
    # pass, one elementwise pass; csrc/coefficient_op.cpp).
    apply = {ExemplarNorm2d: 'exemplar_norm_apply', SwitchableNorm2d: 'switchable_norm_apply'}
    assert forward.ops == ['channel_moments.default', f'{apply[cls]}.default']
    assert backward.ops == ['channel_affine_grad_sums.default',
                            'channel_norm_input_grad.default']


@pytest.mark.parametrize('cls, kwargs, literal', LAYERS)
@pytest.mark.parametrize('dtype', HALF)
def test_half_precision_keeps_statistics_in_float32(cls, kwargs, literal, dtype):
    layer = randomized(cls(32, **kwargs))
    x = activation((2, 32, 8, 8), dtype, False, offset=3.0).requires_grad_()
    y = layer(x)
    assert y.dtype == dtype
    expected = literal(x.detach().double(), copy.deepcopy(layer).double())
    expected = expected[0] if isinstance(expected, tuple) else expected
    torch.testing.assert_close(y.double(), expected, rtol=2e-2, atol=5e-2)
    y.float().square().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    assert all(p.grad.dtype == torch.float32 for p in layer.parameters())


def test_autocast_keeps_the_input_dtype():
    layer = randomized(ExemplarNorm2d(32))
    x = activation((2, 32, 8, 8), torch.bfloat16, True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


@pytest.mark.parametrize('shape', [(1, 32, 1, 1), (4, 32, 1, 1), (1, 32, 3, 3)])
def test_single_values_stay_finite(shape):
    layer = randomized(ExemplarNorm2d(32))
    x = torch.randn(shape, requires_grad=True)
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.running_var).all()


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match=r"impl must be one of \('op', 'reference'\), got 'cudnn'"):
        ExemplarNorm2d(32, impl='cudnn')
    with pytest.raises(ValueError, match='impl must be one of'):
        SwitchableNorm2d(32, impl='fused')


# ---------------------------------------------------------------------------------------
# GPU (test_ops_match_their_float64_formulas also runs on the GPU when there is one)


@requires_cuda_kernels
@pytest.mark.parametrize('channels_last', [False, True])
def test_cuda_ops_are_deterministic(channels_last):
    x = activation((2, 64, 128, 128), torch.float32, channels_last, 'cuda')
    dy = activation((2, 64, 128, 128), torch.float32, channels_last, 'cuda', seed=2)
    center = x.mean((2, 3))
    first = ops.channel_moments(x) + ops.channel_affine_grad_sums(dy, x, center)
    second = ops.channel_moments(x) + ops.channel_affine_grad_sums(dy, x, center)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@requires_cuda_kernels
@pytest.mark.parametrize('cls, kwargs, _', LAYERS)
def test_cuda_fused_layer_matches_reference_layer(cls, kwargs, _):
    fused, reference = layer_pair(cls, 32, **kwargs)
    fused.float().cuda(), reference.float().cuda()
    x = activation((4, 32, 17, 19), torch.float32, True, 'cuda', offset=1.0)
    x.requires_grad_()
    y, y_ref = fused(x), reference(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(y)
    for g, g_ref in zip(torch.autograd.grad(y, (x, *fused.parameters()), grad),
                        torch.autograd.grad(y_ref, (x, *reference.parameters()), grad)):
        torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(platform.machine() != 'x86_64' or sys.platform != 'linux',
                    reason='the ISA clones are built for x86-64 Linux (csrc/simd.h)')
def test_the_hot_cpu_loops_are_built_for_avx512_and_avx2_too():
    # libtorch's GroupNorm and BatchNorm run AVX2 / AVX-512 code; our loops must as well
    # (EN_SEG_CPU_DISPATCH), or the comparison measures the instruction set.
    from en_seg.ops import _C
    binary = Path(_C.__file__).read_bytes()
    for loop in (b'block_moments', b'affine_row', b'input_grad_row', b'block_grad_sums'):
        for level in (b'arch_x86_64_v4', b'arch_x86_64_v3'):
            assert re.search(loop + rb'[^\0]*\.' + level, binary), (loop, level)
