"""The CUDA build on a GPU: every op's CUDA kernel registered, gradcheck through the EN /
SN layers on the device, the layers under bfloat16 autocast, ``torch.compile`` and
CUDA-graph capture and replay of their forward + backward.

Needs torch and en_seg's ops and layers only (no OpenMMLab); skipped without a GPU.
tests/test_ratio_op.py and tests/test_channel_op.py hold the other CUDA tests (kernels
against the CPU kernels and the references, opcheck and gradcheck of each op,
determinism).
"""
import copy

import pytest
import torch

from en_seg.models import ExemplarNorm2d, SwitchableNorm2d
from reference import randomized

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

ops = torch.ops.en_seg
LAYERS = [(ExemplarNorm2d, dict(reduction=4)), (SwitchableNorm2d, {})]
LAYER_IDS = ['EN', 'SN']


def activation(shape, dtype=torch.float32, channels_last=False, seed=0):
    """A CUDA activation of standard-normal values plus 1, in ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) + 1).to('cuda', dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def cuda_layer(cls, kwargs, c=16, seed=0):
    """A float32 training-mode layer on the GPU, its parameters off their initial values."""
    return randomized(cls(c, **kwargs), seed).cuda().train()


def forward_backward(layer, x, grad):
    """y = layer(x) and the gradients of x and of every parameter for dL/dy = grad."""
    y = layer(x)
    return [y, *torch.autograd.grad(y, (x, *layer.parameters()), grad)]


def assert_all_close(actual, expected, tol):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


def test_every_op_has_a_cuda_kernel():
    names = [name for name in torch._C._dispatch_get_all_op_names()
             if name.startswith('en_seg::')]
    assert names, 'en_seg.ops._C registers no op'
    missing = [name for name in names
               if not torch._C._dispatch_has_kernel_for_dispatch_key(name, 'CUDA')]
    assert not missing, f'built without CUDA kernels for {missing}'


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('cls, kwargs', LAYERS, ids=LAYER_IDS)
def test_gradcheck_through_the_fused_layer(cls, kwargs, training):
    layer = randomized(cls(8, **kwargs).double(), seed=2).cuda().train(training)
    names = [name for name, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    x = activation((3, 8, 3, 2), torch.float64).requires_grad_()

    def run(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('cls, kwargs', LAYERS, ids=LAYER_IDS)
def test_bfloat16_autocast_matches_float32_on_the_same_values(cls, kwargs, channels_last):
    # What the layer meets in a bf16 autocast network: bf16 activations and gradients,
    # float32 weights. Statistics and sums stay float32, so only y and dX are rounded.
    layer = cuda_layer(cls, kwargs)
    shape = (4, 16, 9, 11)
    x = activation(shape, torch.bfloat16, channels_last).requires_grad_()
    grad = activation(shape, torch.bfloat16, channels_last, seed=3)
    expected = forward_backward(copy.deepcopy(layer), x.detach().float().requires_grad_(),
                                grad.float())
    with torch.autocast('cuda', dtype=torch.bfloat16):
        y = layer(x)
    # Backward outside autocast, as torch recommends (it would run (N, C) matmuls in bf16).
    actual = [y, *torch.autograd.grad(y, (x, *layer.parameters()), grad)]
    assert actual[0].dtype == actual[1].dtype == torch.bfloat16
    assert actual[0].is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_all_close([t.float() for t in actual[:2]], expected[:2], tol=2e-2)
    assert_all_close(actual[2:], expected[2:], tol=1e-4)


@pytest.mark.parametrize('backend', ['aot_eager', 'inductor'])
@pytest.mark.parametrize('cls, kwargs', LAYERS, ids=LAYER_IDS)
def test_torch_compile_forward_and_backward(cls, kwargs, backend):
    layer = cuda_layer(cls, kwargs)
    compiled = torch.compile(copy.deepcopy(layer), backend=backend, fullgraph=True)
    for channels_last in (False, True):
        x = activation((2, 16, 7, 5), channels_last=channels_last).requires_grad_()
        grad = activation((2, 16, 7, 5), seed=4)
        assert_all_close(forward_backward(compiled, x, grad),
                         forward_backward(layer, x, grad), tol=1e-4)


@pytest.mark.parametrize('cls, kwargs', LAYERS, ids=LAYER_IDS)
def test_torch_compile_reduce_overhead_replays_cuda_graphs(cls, kwargs):
    # inductor's CUDA graph trees check the memory pool of each capture.
    layer = cuda_layer(cls, kwargs)
    compiled = torch.compile(copy.deepcopy(layer), mode='reduce-overhead', fullgraph=True)
    for step in range(4):
        x = activation((2, 16, 7, 5), channels_last=True, seed=step).requires_grad_()
        grad = activation((2, 16, 7, 5), seed=10 + step)
        assert_all_close(forward_backward(compiled, x, grad),
                         forward_backward(layer, x, grad), tol=1e-4)


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('cls, kwargs', LAYERS, ids=LAYER_IDS)
def test_cuda_graph_replays_forward_and_backward(cls, kwargs, channels_last):
    # make_graphed_callables captures the forward and the backward (after warm-up passes
    # that update the running statistics) on a stream of its own, whose arrival counters
    # (csrc/cuda/arrival_counters.h) are made during the capture; each replay must match an
    # eager twin on new data. channels_last reductions count arrivals too.
    layer = cuda_layer(cls, kwargs)
    eager = copy.deepcopy(layer)
    shape = (2, 16, 7, 5)
    graphed = torch.cuda.make_graphed_callables(
        layer, (activation(shape, channels_last=channels_last).requires_grad_(),))
    eager.load_state_dict(layer.state_dict())
    for step in range(3):
        x = activation(shape, channels_last=channels_last, seed=10 + step).requires_grad_()
        grad = activation(shape, seed=20 + step)
        assert_all_close(forward_backward(graphed, x, grad),
                         forward_backward(eager, x, grad), tol=1e-5)
    torch.testing.assert_close(layer.running_var, eager.running_var)
