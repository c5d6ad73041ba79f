"""The compiled ratio op ``en_seg::exemplar_ratios`` (docs/method.md#ratio-branch, steps 2-6,
paper Sec. 3.3) against the pure-PyTorch reference, its registration for autograd and
torch.compile, its build, and ExemplarNorm2d's use of it."""
import ast
import copy
import importlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

from en_seg.models import ExemplarNorm2d
from en_seg.ops import library, ratio_op
from en_seg.ops.ratio_op import exemplar_ratios
from en_seg.ops.reference import exemplar_ratios as exemplar_ratios_reference
from reference import ratio_inputs

CSRC = Path(ratio_op.__file__).parent / 'csrc'
NVCC = shutil.which('nvcc')
CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason='needs a CUDA device')

# (N, K, C, r): K = 2, 3, 4; r = 1, 8, 32; C from 32 to 2048; N from 1 to 64.
CASES = [(1, 2, 32, 32), (2, 3, 256, 32), (5, 4, 96, 8), (64, 3, 64, 1),
         (16, 2, 2048, 32), (2, 4, 2048, 1), (64, 3, 512, 8), (7, 3, 32, 8)]
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5}


def op():
    """The op itself, which returns (ratios, activations)."""
    assert library.EXTENSION_AVAILABLE, (
        'en_seg.ops._C is not built; run `pip install --no-build-isolation -e .` (or '
        '`make test`) before the tests')
    return torch.ops.en_seg.exemplar_ratios.default


def op_ratios(*inputs):
    """The op's ratios λ alone, as the reference returns them."""
    return op()(*inputs)[0]


def ratios_and_grads(fn, inputs, seed=1):
    """fn(*inputs) and the gradients of every input for a fixed upstream gradient."""
    ratios = fn(*inputs)
    grad = torch.randn(ratios.shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64).to(ratios)
    return [ratios.detach(), *torch.autograd.grad(ratios, inputs, grad)]


def assert_close_scaled(actual, expected, tol):
    """Each tensor equal to `tol` relative to its largest magnitude (at least 1)."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(a, e, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
def test_opcheck_passes_on_cpu(dtype):
    torch.library.opcheck(op(), ratio_inputs(3, 3, 64, 8, dtype))


def backward_inputs(n, k, c, r, dtype=torch.float64, device='cpu'):
    """The backward op's 6 inputs: an upstream gradient, the forward's activations, rstds
    and the three weights."""
    inputs = [t.detach() for t in ratio_inputs(n, k, c, r, dtype, device)]
    activations = op()(*inputs)[1]
    grad = torch.randn(n, k, generator=torch.Generator().manual_seed(1), dtype=dtype)
    _, _, rstds, conv_w, fc1_w, _, fc2_w, _ = inputs
    return [grad.to(device), activations, rstds, conv_w, fc1_w, fc2_w]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=str)
def test_backward_opcheck_passes_on_cpu(dtype):
    torch.library.opcheck(torch.ops.en_seg.exemplar_ratios_backward.default,
                          backward_inputs(3, 3, 64, 8, dtype))


@requires_cuda
def test_opcheck_passes_on_cuda():
    torch.library.opcheck(op(), ratio_inputs(3, 3, 64, 8, torch.float32, 'cuda'))
    torch.library.opcheck(torch.ops.en_seg.exemplar_ratios_backward.default,
                          backward_inputs(3, 3, 64, 8, torch.float32, 'cuda'))


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize('n, k, c, r', CASES)
def test_forward_and_gradients_equal_the_reference(n, k, c, r, dtype):
    inputs = ratio_inputs(n, k, c, r, dtype)
    assert_close_scaled(ratios_and_grads(op_ratios, inputs),
                        ratios_and_grads(exemplar_ratios_reference, inputs), TOLERANCES[dtype])


def saved_layout(k, c, r):
    """The column ranges of λ, v, h, z and pooled - means in a row of the activations, for
    π = 50 (csrc/ratio_math.h, SavedLayout)."""
    sizes = {'ratios': k, 'gram': k * k, 'hidden': 50 * k, 'z': k * (c // r), 'centred': k * c}
    layout, start = {}, 0
    for name, size in sizes.items():
        layout[name] = slice(start, start + size)
        start += size
    return layout, start


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize('n, k, c, r', CASES[:4])
def test_activations_hold_every_sample_s_ratios_gram_hidden_units_z_and_centred_stats(
        n, k, c, r, dtype):
    # From docs/method.md#ratio-branch, steps 2-6, written here independently of the kernels.
    pooled, means, rstds, conv_w, fc1_w, fc1_b, *_ = inputs = ratio_inputs(n, k, c, r, dtype)
    centred = pooled[:, None] - means
    z = (centred * rstds).reshape(n, k, c // r, r).mul(conv_w.reshape(c // r, r)).sum(-1)
    v = torch.einsum('nag,nbg->nab', z, z).reshape(n, k * k)
    h = torch.tanh(F.linear(v, fc1_w, fc1_b))
    ratios, activations = op()(*inputs)
    layout, total = saved_layout(k, c, r)
    assert activations.shape == (n, total) and activations.dtype == dtype
    assert not activations.requires_grad and ratios.requires_grad
    expected = {'ratios': ratios, 'gram': v, 'hidden': h, 'z': z.transpose(1, 2),
                'centred': centred}
    assert_close_scaled([activations[:, layout[name]] for name in expected],
                        [value.detach().reshape(n, -1) for value in expected.values()],
                        TOLERANCES[dtype])


def test_float32_tanh_is_within_2e_7_of_torch_including_saturation_and_nan():
    # With fc1's weight zero the hidden units are tanh(b1): b1 spans [-30, 30], beyond the
    # kernel's clamp at |x| = 9, and holds 0, ±1e-6 and a NaN.
    inputs = [t.detach() for t in ratio_inputs(2, 3, 64, 8, torch.float32)]
    fc1_b = torch.cat([torch.linspace(-30, 30, 145), torch.tensor([0, 1e-6, -1e-6, 9, -9])])
    inputs[4], inputs[5] = torch.zeros_like(inputs[4]), fc1_b
    hidden = saved_layout(3, 64, 8)[0]['hidden']
    activations = op()(*inputs)[1]
    torch.testing.assert_close(activations[:, hidden], torch.tanh(fc1_b).expand(2, -1),
                               rtol=0, atol=2e-7)
    inputs[5] = fc1_b.clone().index_fill_(0, torch.tensor([7]), float('nan'))
    assert op()(*inputs)[1][:, hidden.start + 7].isnan().all()


def test_ratios_are_a_softmax_over_normalizers():
    ratios = op_ratios(*ratio_inputs(16, 3, 256, 32))
    assert (ratios > 0).all()
    torch.testing.assert_close(ratios.sum(1), torch.ones(16, dtype=torch.float64))


def test_gradcheck_in_float64():
    assert torch.autograd.gradcheck(op_ratios, ratio_inputs(3, 3, 16, 4))


def test_gradients_are_bit_identical_across_runs_and_thread_counts():
    # 64 samples of 3 x 512 values: enough work for the kernels to split samples over
    # threads, whose per-sample parameter gradients must be summed in a fixed order.
    inputs = ratio_inputs(64, 3, 512, 8, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = ratios_and_grads(op_ratios, inputs)
        second = ratios_and_grads(op_ratios, inputs)
        torch.set_num_threads(1)
        serial = ratios_and_grads(op_ratios, inputs)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, second, serial):
        assert torch.equal(a, b) and torch.equal(a, c)


@requires_cuda
@pytest.mark.parametrize('n, k, c, r', CASES)
def test_cuda_kernel_equals_cpu_kernel_and_reference(n, k, c, r):
    assert library.CUDA_KERNELS_AVAILABLE, (
        'en_seg.ops._C has no CUDA kernels; rebuild with a CUDA torch and nvcc on the PATH')
    inputs = ratio_inputs(n, k, c, r, torch.float32)
    cuda_inputs = [t.detach().cuda().requires_grad_() for t in inputs]
    on_cuda = [t.cpu() for t in ratios_and_grads(op_ratios, cuda_inputs)]
    assert_close_scaled(on_cuda, ratios_and_grads(op_ratios, inputs), 1e-5)
    assert_close_scaled(on_cuda, ratios_and_grads(exemplar_ratios_reference, inputs), 1e-5)


@requires_cuda
def test_cuda_gradients_are_bit_identical_across_runs():
    inputs = ratio_inputs(64, 3, 2048, 8, torch.float32, 'cuda')
    for a, b in zip(ratios_and_grads(op_ratios, inputs), ratios_and_grads(op_ratios, inputs)):
        assert torch.equal(a, b)


@pytest.mark.parametrize('index, shape, dtype, match', [
    (2, (2, 3, 32), None,
     r'rstds has shape \[2, 3, 32\], expected \(N, K, C\) = \[2, 3, 64\]'),
    (3, (8, 4, 1), None, r'conv_w has shape \[8, 4, 1\], expected \(C / r, r, 1\) with '
                         r'\(C / r\) \* r = C = 64'),
    (4, (150, 4), None, r'fc1_w has shape \[150, 4\], expected \(P, K \* K\) = \[150, 9\]'),
    (7, (4,), None, r'fc2_b has shape \[4\], expected \(K,\) = \[3\]'),
    (7, (3,), torch.float32, r'fc2_b has dtype Float but pooled has Double'),
], ids=['rstds-shape', 'conv_w-shape', 'fc1_w-shape', 'fc2_b-shape', 'fc2_b-dtype'])
def test_bad_inputs_are_rejected_naming_the_tensor_and_shapes(index, shape, dtype, match):
    inputs = ratio_inputs(2, 3, 64, 8)
    inputs[index] = torch.zeros(shape, dtype=dtype or torch.float64)
    with pytest.raises(RuntimeError, match=match):
        op()(*inputs)


def test_more_normalizers_than_the_kernels_hold_are_rejected():
    with pytest.raises(RuntimeError, match=r'expected \(N, K, C\) with 1 <= K <= 8'):
        op()(*ratio_inputs(2, 9, 32, 8))


@pytest.mark.parametrize('index, shape, match', [
    (0, (2, 2), r'grad has shape \[2, 2\], expected \(N, K\) = \[2, 3\]'),
    (1, (2, 159), r'activations has shape \[2, 159\], expected '
                  r'\(N, K \+ K \* K \+ P \+ K \* C / r \+ K \* C\) = \[2, 378\]'),
    (2, (2, 64), r'rstds has shape \[2, 64\], expected \(N, K, C\)'),
], ids=['grad', 'activations', 'rstds'])
def test_backward_op_rejects_inputs_of_the_wrong_shape(index, shape, match):
    inputs = backward_inputs(2, 3, 64, 8)
    inputs[index] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.en_seg.exemplar_ratios_backward(*inputs)


def test_op_and_its_backward_compile_into_one_graph():
    inputs = ratio_inputs(4, 3, 64, 8, torch.float32)

    def ratios(*tensors):
        return exemplar_ratios(*tensors) * 2

    compiled = torch.compile(ratios, backend='aot_eager', fullgraph=True)
    assert_close_scaled(ratios_and_grads(compiled, inputs), ratios_and_grads(ratios, inputs),
                        1e-6)


def randomized_layer(dtype):
    """An ExemplarNorm2d whose ratios are far from uniform and whose γ, β and running
    statistics are not at their initial values. fc1 is scaled so that tanh is not
    saturated: there 1 - tanh² loses all float32 digits, whichever implementation."""
    torch.manual_seed(0)
    layer = ExemplarNorm2d(64, reduction=8).to(dtype)
    with torch.no_grad():
        layer.ratio_fc1.weight.mul_(0.05)
        for param in (layer.ratio_fc1.bias, layer.ratio_fc2.weight, layer.ratio_fc2.bias):
            nn.init.normal_(param, std=0.5)
        layer.weight.normal_(1, 0.2)
        layer.bias.normal_(0, 0.2)
        layer.running_mean.normal_(0, 0.3)
        layer.running_var.uniform_(0.5, 1.5)
    return layer


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize('training', [True, False])
def test_layer_outputs_and_gradients_do_not_depend_on_the_ratio_implementation(
        dtype, training):
    with_op = randomized_layer(dtype).train(training)
    with_reference = copy.deepcopy(with_op)
    with_reference.impl = 'reference'
    x = torch.randn(4, 64, 5, 5, dtype=dtype) * 2 + 1
    results = []
    for layer in (with_op, with_reference):
        x_in = x.clone().requires_grad_()
        y = layer(x_in)
        grads = torch.autograd.grad(y, [x_in, *layer.parameters()], torch.cos(x))
        results.append([y.detach(), layer.last_ratios, layer.running_mean, *grads])
    assert_close_scaled(results[0], results[1], TOLERANCES[dtype])


def test_layer_uses_the_op_by_default_and_rejects_unknown_implementations():
    assert ExemplarNorm2d(8).impl == 'op'
    with pytest.raises(ValueError, match=r"impl must be one of \('op', 'reference'\), "
                                         r"got 'cuda'"):
        ExemplarNorm2d(8, impl='cuda')
    with pytest.raises(ValueError, match='impl must be one of'):
        exemplar_ratios(*ratio_inputs(2, 3, 32, 8), impl='fast')


def test_unbuilt_extension_falls_back_to_the_reference_with_one_warning(monkeypatch):
    # The one rule of en_seg.ops.library decides for every op of the family.
    monkeypatch.setattr(library, 'EXTENSION_AVAILABLE', False)
    monkeypatch.setattr(library, '_BUILT_DEVICES', ())
    monkeypatch.setattr(library, '_warned', set())
    layer = randomized_layer(torch.float32)
    reference = copy.deepcopy(layer)
    reference.impl = 'reference'
    x = torch.randn(2, 64, 3, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        outputs = [layer(x), layer(x)]
        reference(x)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert 'pip install --no-build-isolation -e .' in message and 'make install' in message
    assert torch.equal(outputs[1], reference(x))


def test_an_extension_built_from_older_sources_is_not_used(monkeypatch):
    # Its ops may lack a schema the Python side registers for: the whole library is left
    # alone, and the warning says why.
    monkeypatch.setattr(library._C, 'SCHEMA_VERSION', library.SCHEMA_VERSION - 1)
    try:
        importlib.reload(library)
        assert not library.EXTENSION_AVAILABLE and not library.CUDA_KERNELS_AVAILABLE
        assert not library.available(torch.empty(2, 3, 4, 4))
        with pytest.warns(UserWarning, match=r'built from older sources \(schema version '
                                             rf'{library.SCHEMA_VERSION - 1}, expected'):
            assert not library.use_ops('op', torch.empty(2, 3, 4, 4))
    finally:
        monkeypatch.undo()
        importlib.reload(library)
    assert library.EXTENSION_AVAILABLE and library.available(torch.empty(2, 3, 4, 4))


def test_the_ops_run_where_the_rule_says(monkeypatch):
    x = torch.empty(2, 8, 3, 3)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        assert library.available(x.to(dtype)), dtype
    assert not library.available(x.to(torch.int64))
    assert not library.use_ops('reference', x)
    with pytest.raises(ValueError, match='impl must be one of'):
        library.use_ops('fused', x)
    monkeypatch.setattr(torch.compiler, 'is_exporting', lambda: True)
    assert not library.available(x)


@pytest.mark.skipif(NVCC is None, reason='nvcc not found')
@pytest.mark.parametrize('source', sorted((CSRC / 'cuda').glob('*.cu')), ids=lambda p: p.name)
def test_cuda_translation_unit_compiles_for_sm80_and_sm90(source, tmp_path):
    # The flags of torch's extension build, without -I: a .cu must compile on its own,
    # with CUDA headers only.
    command = [NVCC, '-c', str(source), '-o', str(tmp_path / 'kernel.o'), '-std=c++20',
               *COMMON_NVCC_FLAGS, '-gencode', 'arch=compute_80,code=sm_80',
               '-gencode', 'arch=compute_90,code=sm_90']
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(NVCC is None, reason='nvcc not found')
def test_cuda_glue_compiles_against_torch_headers(tmp_path):
    # nvcc supplies the CUDA include path to the host compiler. A CPU-only torch lacks one
    # generated header of c10/cuda (its build's macros); a stand-in lets the rest compile.
    torch_includes = include_paths()
    macros = 'c10/cuda/impl/cuda_cmake_macros.h'
    if not any((Path(path) / macros).exists() for path in torch_includes):
        stub = tmp_path / 'include' / macros
        stub.parent.mkdir(parents=True)
        stub.write_text('#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n')
        torch_includes = [*torch_includes, str(tmp_path / 'include')]
    command = [NVCC, '-c', str(CSRC / 'cuda' / 'ratio_op_cuda.cpp'),
               '-o', str(tmp_path / 'glue.o'), '-std=c++20',
               *(f'-I{path}' for path in torch_includes)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_ops_package_is_a_leaf():
    # en_seg.ops imports torch and itself only, so importing it first, in a fresh process,
    # works (it used to close an import cycle through en_seg.models).
    subprocess.run([sys.executable, '-c', 'import en_seg.ops.ratio_op'], check=True)
    for path in Path(ratio_op.__file__).parent.glob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [('.' * node.level) + (node.module or '')]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert (name.startswith('.') and not name.startswith('..')
                        or name.split('.')[0] in ('torch', 'typing', 'functools', 'warnings',
                                                  'contextlib')
                        ), f'{path.name} imports {name}'
