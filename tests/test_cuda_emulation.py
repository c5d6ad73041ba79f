"""The CUDA kernels (en_seg/ops/csrc/cuda/*.cu) run on the CPU by an emulation
(tests/cuda_emulation): every CUDA thread a fiber, barriers and shuffles real meeting
points of a block's or a warp's fibers, shared memory NaN bytes when a block starts. Every
launcher runs in three scheduling orders (forward, reversed, shuffled threads and blocks)
and must give the same bits in each, equal to the CPU kernels (en_seg.ops._C) to the
dtype's tolerance where the two sum in different orders and bit for bit to the PyTorch
formula where nothing is summed. A last test reruns the module under AddressSanitizer and
UndefinedBehaviorSanitizer. The rest of the module checks the emulation itself
(tests/cuda_emulation/probe_kernels.cu).

Run: ``make cuda-emulation`` (or ``.venv/bin/python -m pytest tests/test_cuda_emulation.py``).
Needs g++ (C++20); without it the module is skipped.

The tests fail for a kernel with a barrier or a shuffle offset wrong. CUDA_EMULATION_SRC
builds the kernels from a copy of en_seg/ops/csrc/cuda (in a copy of csrc, whose
ratio_math.h they include). From the repository root, deleting each ``__syncthreads();``
of the kernel files in turn must make every run fail (none prints NOT CAUGHT but
arrival.cuh's 1: it keeps a block's writes before its arrival for the other blocks, which
the emulation runs after it, never beside it)::

    for f in channel_op_kernel.cu ratio_block.cuh coefficient_op_kernel.cu arrival.cuh; do
      src=en_seg/ops/csrc/cuda/$f copy=/tmp/csrc/cuda/$f
      for n in $(seq $(grep -c '__syncthreads();' $src)); do
        rm -rf /tmp/csrc && cp -r en_seg/ops/csrc /tmp/csrc
        awk -v n=$n '/__syncthreads\\(\\);/ && ++k == n {next} 1' $src > $copy
        CUDA_EMULATION_SRC=/tmp/csrc/cuda .venv/bin/python -m pytest -x -q \\
          tests/test_cuda_emulation.py -k 'not sanitizers' >/dev/null && echo "NOT CAUGHT: $f $n"
      done
    done

and so must each shift of a shuffle offset, and the last block's broadcast and reset,
e.g. (one at a time, on a fresh copy)::

    sed -i 's|offset = kWarp / 2;|offset = kWarp / 4;|' /tmp/csrc/cuda/channel_op_kernel.cu
    sed -i 's|m.mean, offset)|m.mean, offset + 1)|' /tmp/csrc/cuda/channel_op_kernel.cu
    sed -i 's|s.dy_xc, offset)|s.dy_xc, offset - 1)|' /tmp/csrc/cuda/channel_op_kernel.cu
    sed -i 's|sum, offset)|sum, offset / 2)|' /tmp/csrc/cuda/ratio_op_kernel.cu
    sed -i 's|v\\[j\\], offset)|v[j], offset / 2)|' /tmp/csrc/cuda/coefficient_op_kernel.cu
    sed -i 's|return __syncthreads_or(last);|return last;|' /tmp/csrc/cuda/arrival.cuh
    sed -i 's|\*counter = 0u;||' /tmp/csrc/cuda/arrival.cuh

followed by the pytest line above.
"""
import os
import subprocess
import sys

import pytest
import torch

import en_seg.ops.coefficient_op  # noqa: F401  (registers torch.ops.en_seg.*, the CPU kernels)
from cuda_emulation import build, kernels
from cuda_emulation.kernels import EmulationError, Probe
from reference import (HUGE_SCALES, assert_moments_follow_var_mean, huge_activation,
                       ratio_inputs)

ops = torch.ops.en_seg
pytestmark = pytest.mark.skipif(
    build.CXX is None, reason='g++ not found: the CUDA emulation compiles the kernels with it')

#: Which build of the emulation runs: 'plain', or 'sanitized' in the sanitizers' rerun.
VARIANT = os.environ.get('CUDA_EMULATION_VARIANT', 'plain')
#: The scheduling orders every launcher runs in (the sanitized rerun takes one).
ORDERS = os.environ.get('CUDA_EMULATION_ORDERS', 'forward reversed shuffled').split()

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (N, C, H, W): H·W = 1; N = 1 with C not a multiple of 32 (one warp a row); H·W larger
# than one block's pass (256 threads x 4) and than one channels_last segment (128 rows);
# the widest: full 256-thread rows split in 3 segments, 72 channels_last segments of 128
# rows (9 a thread row in the merge), 3 channel tiles; C = 64 with odd rows. H·W (channels first) or C (channels_last)
# divisible by 16 bytes' values takes the 16-byte packs.
SHAPES = [(2, 3, 1, 1), (1, 37, 7, 9), (2, 5, 40, 77), (1, 70, 100, 91), (2, 64, 6, 7)]
SHAPE_IDS = ['hw=1', 'n=1,c=37', 'hw>block', 'widest', 'c=64']
# (N, K, C, r, P): one group; C and P not multiples of 32; the widest (K = 8, K² = 64 Gram
# entries, P = kMaxHidden, 2048 groups per block of 256 threads); K = 1; an odd group width
# (CGNet's C = 35 takes r = 7).
RATIO_CASES = [(1, 2, 32, 32, 100), (3, 3, 40, 8, 150), (2, 8, 2048, 1, 4096),
               (2, 1, 64, 1, 50), (2, 3, 35, 7, 150)]
RATIO_TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def libraries():
    return build.build_libraries(VARIANT)


@pytest.fixture(scope='module')
def channel_op(libraries):
    return kernels.ChannelOp(libraries['channel_op'])


@pytest.fixture(scope='module')
def ratios(libraries):
    return kernels.RatioOp(libraries['ratio_op'])


@pytest.fixture(scope='module')
def coefficient_ops(libraries):
    return kernels.CoefficientOp(libraries['coefficient_op'])


@pytest.fixture(scope='module')
def probe(libraries):
    return Probe(libraries['probe'])


@pytest.fixture
def in_every_order(monkeypatch):
    """run() in every order of ORDERS; returns the first order's result after checking
    that the others gave the same bits."""
    def run_all(run):
        results = {}
        for order in ORDERS:
            monkeypatch.setenv('CUDA_EMULATION_ORDER', order)
            results[order] = run()
        first, *others = ORDERS
        for order in others:
            for a, b in zip(results[first], results[order]):
                assert torch.equal(a, b), f'{order} order differs from {first}'
        return results[first]
    return run_all


def stats_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def tolerance(dtype):
    """(rtol, atol) of statistics accumulated in stats_dtype(dtype) in another order."""
    return (1e-12, 1e-12) if dtype == torch.float64 else (1e-5, 1e-5)


def activation(shape, dtype, channels_last, seed, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + offset).to(dtype)
    return x.contiguous(memory_format=torch.channels_last if channels_last else
                        torch.contiguous_format)


def coefficients(shape, dtype, count):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(shape[:2], generator=gen, dtype=stats_dtype(dtype))
            for _ in range(count)]


def per_row(t):
    return t[:, :, None, None]


def assert_close_scaled(actual, expected, rtol, atol):
    """Equal to rtol and atol relative to expected's largest magnitude (at least 1)."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale)


layouts = pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
shapes = pytest.mark.parametrize('shape', SHAPES, ids=SHAPE_IDS)
dtypes = pytest.mark.parametrize('dtype', DTYPES, ids=str)


# ------------------------------------------------------------------------------------------
# The kernels against the CPU kernels and the PyTorch formulas


@dtypes
@shapes
@layouts
def test_channel_moments(channel_op, in_every_order, shape, dtype, channels_last):
    x = activation(shape, dtype, channels_last, seed=0, offset=3.0)
    mean, var = in_every_order(lambda: channel_op.channel_moments(x, channels_last))
    expected_mean, expected_var = torch.ops.en_seg.channel_moments(x)
    rtol, atol = tolerance(dtype)
    assert_close_scaled(mean, expected_mean, rtol, atol)
    assert_close_scaled(var, expected_var, rtol, atol)


@pytest.mark.parametrize('dtype, scale', HUGE_SCALES)
@shapes
@layouts
def test_channel_moments_near_overflow_follow_var_mean(channel_op, in_every_order, shape,
                                                       dtype, scale, channels_last):
    x = huge_activation(shape, dtype, scale, channels_last)
    mean, var = in_every_order(lambda: channel_op.channel_moments(x, channels_last))
    assert_moments_follow_var_mean(x, mean, var, scale)


@dtypes
@shapes
@layouts
def test_channel_affine_grad_sums(channel_op, in_every_order, shape, dtype,
                                  channels_last):
    x = activation(shape, dtype, channels_last, seed=0, offset=3.0)
    dy = activation(shape, dtype, channels_last, seed=5)
    center, = coefficients(shape, dtype, 1)
    sums = in_every_order(
        lambda: channel_op.channel_affine_grad_sums(dy, x, channels_last, center))
    rtol, atol = tolerance(dtype)
    for actual, expected in zip(sums, torch.ops.en_seg.channel_affine_grad_sums(dy, x, center)):
        assert_close_scaled(actual, expected, rtol, atol)


@dtypes
@shapes
@layouts
def test_channel_affine(channel_op, in_every_order, shape, dtype, channels_last):
    x = activation(shape, dtype, channels_last, seed=0)
    center, scale, shift = coefficients(shape, dtype, 3)
    y, = in_every_order(
        lambda: [channel_op.channel_affine(x, channels_last, center, scale, shift)])
    # Each operation rounded in the statistics' dtype, the result to x's: the kernel's order.
    expected = per_row(scale) * (x.to(center.dtype) - per_row(center)) + per_row(shift)
    assert torch.equal(y, expected.to(dtype))
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else
                           torch.contiguous_format)


#: The emulated GPU's multiprocessors (bindings/channel_op.cpp), and the blocks of 256
#: threads each holds at once: a reduction splits rows until its grid fills the GPU once.
MULTIPROCESSORS, RESIDENT_BLOCKS = 132, 8


@pytest.mark.parametrize('shape, channels_last, segments, fills', [
    ((2, 32, 256, 512), False, 17, True),  # the stem at batch 2, 512x1024: 64 rows
    ((1, 70, 100, 91), False, 3, True),    # 'widest': as far as 4096-value segments allow
    ((2, 5, 40, 77), False, 1, False),     # rows too short to split
    ((8, 256, 64, 64), False, 1, True),    # enough rows to fill the GPU
    ((2, 64, 256, 256), True, 256, True),  # 2 samples x 1 channel tile: the most segments
    ((2, 2048, 64, 64), True, 32, True),   # 16 tiles: segments of 128 rows
    ((8, 512, 64, 64), True, 32, True),
    ((2, 512, 1, 1), True, 1, False),      # the ASPP image pool: 1024 values
])
def test_reductions_split_rows_to_fill_the_gpu(channel_op, shape, channels_last, segments,
                                               fills):
    """Segments, seen through the scratch the launcher asks for: (N, segments, 2, C) float32
    partial results (none for an unsplit channels-first row) and an arrival counter per
    split row or per sample's channel tile. The grid has a block for every multiprocessor
    wherever the shape has the values for it, and is not split further than about one
    GPU-full of blocks."""
    n, c, h, w = shape
    workspace, arrivals = channel_op.scratch_sizes(torch.float32, n, c, h * w, channels_last)
    if channels_last:
        assert (workspace, arrivals) == (n * segments * 2 * c * 4, n * -(-c // 32))
        blocks = n * segments * -(-c // 128)  # float32: 4 channels a thread, 32 threads
    else:
        split = segments > 1
        assert (workspace, arrivals) == (n * c * segments * 2 * 4 * split, n * c * split)
        blocks = n * c * segments
    assert (blocks >= MULTIPROCESSORS) == fills
    assert segments == 1 or blocks < 2 * MULTIPROCESSORS * RESIDENT_BLOCKS


@dtypes
@shapes
@layouts
def test_channel_norm_input_grad(channel_op, in_every_order, shape, dtype, channels_last):
    x = activation(shape, dtype, channels_last, seed=0)
    dy = activation(shape, dtype, channels_last, seed=5)
    mean, scale, sum_dy, grad_mean, grad_var = coefficients(shape, dtype, 5)
    dx, = in_every_order(lambda: [channel_op.channel_norm_input_grad(
        dy, x, channels_last, mean, scale, sum_dy, grad_mean, grad_var)])
    # The kernel's coefficients and order, each operation rounded in the statistics' dtype.
    acc = mean.dtype
    inv_m = torch.tensor(1, dtype=acc) / (shape[2] * shape[3])
    x_scale, shift = 2 * grad_var * inv_m, (grad_mean - scale * sum_dy) * inv_m
    expected = (per_row(scale) * dy.to(acc) + per_row(x_scale) * (x.to(acc) - per_row(mean))
                + per_row(shift))
    assert torch.equal(dx, expected.to(dtype))


def float_ratio_inputs(n, k, c, r, hidden):
    """The forward's 8 float32 inputs, as tests/test_ratio_op.py makes them."""
    return [t.detach() for t in ratio_inputs(n, k, c, r, torch.float32, hidden=hidden)]


@pytest.mark.parametrize('n, k, c, r, hidden', RATIO_CASES)
def test_exemplar_ratios_forward(ratios, in_every_order, n, k, c, r, hidden):
    inputs = float_ratio_inputs(n, k, c, r, hidden)
    outputs = in_every_order(lambda: ratios.forward(*inputs))
    for actual, expected in zip(outputs, torch.ops.en_seg.exemplar_ratios(*inputs)):
        assert_close_scaled(actual, expected, RATIO_TOLERANCE, RATIO_TOLERANCE)


@pytest.mark.parametrize('n, k, c, r, hidden', RATIO_CASES)
def test_exemplar_ratios_backward(ratios, in_every_order, n, k, c, r, hidden):
    pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b = float_ratio_inputs(
        n, k, c, r, hidden)
    activations = torch.ops.en_seg.exemplar_ratios(pooled, means, rstds, conv_w, fc1_w, fc1_b,
                                                   fc2_w, fc2_b)[1]
    grad = torch.randn(n, k, generator=torch.Generator().manual_seed(1))
    inputs = (grad, activations, rstds, conv_w, fc1_w, fc2_w)
    grads = in_every_order(lambda: ratios.backward(*inputs))
    for actual, expected in zip(grads, torch.ops.en_seg.exemplar_ratios_backward(*inputs)):
        assert_close_scaled(actual, expected, RATIO_TOLERANCE, RATIO_TOLERANCE)


# (N, C, r, P): one sample; C beyond one block's 256 threads and not a multiple of 32; the
# group width HRNet's C = 72 takes.
COEFFICIENT_SIZES = [(1, 32, 32, 6), (3, 40, 8, 150), (2, 600, 8, 30), (2, 72, 24, 150)]
# (pool codes, batch_stats, running statistics kept, momentum): training with BN's update,
# the cumulative average, evaluation on the running statistics, no running statistics,
# pools without BN or LN.
COEFFICIENT_MODES = [((0, 1, 2), True, True, 0.1), ((2, 0), True, True, None),
                     ((0, 1, 2), False, True, 0.1), ((1, 2), True, False, 0.1),
                     ((0, 1), True, True, 0.1), ((2,), True, True, 0.1), ((1,), True, True, 0.1)]
MODE_IDS = ['train', 'cumulative', 'eval', 'untracked', 'no-BN', 'BN', 'LN']


def coefficient_case(n, c, k, seed=0):
    """The moments and running statistics the coefficient ops take (float32)."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, c, generator=gen) + 1
    var = torch.rand(n, c, generator=gen) + 0.2
    running = [torch.randn(c, generator=gen), torch.rand(c, generator=gen) + 0.5,
               torch.tensor(3)]
    return mean, var, running


def with_running(running, kept, run):
    """run(running_mean, running_var, num_batches_tracked) on fresh copies, then the copies."""
    copies = [t.clone() for t in running] if kept else [None, None, None]
    outputs = list(run(*copies))
    return outputs + ([t.float() for t in copies] if kept else [])


@pytest.mark.parametrize('mode', COEFFICIENT_MODES, ids=MODE_IDS)
@pytest.mark.parametrize('n, c, r, hidden', COEFFICIENT_SIZES)
def test_exemplar_coefficients(coefficient_ops, in_every_order, n, c, r, hidden, mode):
    codes, batch_stats, kept, momentum = mode
    k = len(codes)
    mean, var, running = coefficient_case(n, c, k)
    weights = float_ratio_inputs(n, k, c, r, hidden)[3:]
    gen = torch.Generator().manual_seed(3)
    gamma, beta = torch.randn(k, c, generator=gen), torch.randn(k, c, generator=gen)
    inputs = (mean, var, gamma, beta, *weights)
    tail = (codes, batch_stats, momentum, 1e-5, n * 12)
    outputs = in_every_order(lambda: with_running(
        running, kept, lambda *run: coefficient_ops.exemplar(*inputs, *run, *tail)))
    expected = with_running(running, kept,
                            lambda *run: ops.exemplar_coefficients(*inputs, *run, *tail))
    for actual, reference in zip(outputs, expected):
        assert_close_scaled(actual, reference.float(), RATIO_TOLERANCE, RATIO_TOLERANCE)
    saved = expected[3]
    grad_scale, grad_shift = torch.randn(n, c, generator=gen), torch.randn(n, c, generator=gen)
    backward = (grad_scale, grad_shift, saved, gamma, weights[0], weights[1], weights[3],
                codes, batch_stats)
    grads = in_every_order(lambda: coefficient_ops.exemplar_backward(*backward))
    for actual, reference in zip(grads, ops.exemplar_coefficients_backward(*backward)):
        assert_close_scaled(actual, reference, RATIO_TOLERANCE, RATIO_TOLERANCE)


@pytest.mark.parametrize('mode', COEFFICIENT_MODES, ids=MODE_IDS)
@pytest.mark.parametrize('n, c', [(1, 32), (3, 40), (2, 600)])
def test_switchable_coefficients(coefficient_ops, in_every_order, n, c, mode):
    codes, batch_stats, kept, momentum = mode
    k = len(codes)
    mean, var, running = coefficient_case(n, c, k, seed=1)
    gen = torch.Generator().manual_seed(4)
    params = (torch.randn(c, generator=gen), torch.randn(c, generator=gen),
              torch.randn(k, generator=gen), torch.randn(k, generator=gen))
    inputs = (mean, var, *params)
    tail = (codes, batch_stats, momentum, 1e-5, n * 12)
    outputs = in_every_order(lambda: with_running(
        running, kept, lambda *run: coefficient_ops.switchable(*inputs, *run, *tail)))
    expected = with_running(running, kept,
                            lambda *run: ops.switchable_coefficients(*inputs, *run, *tail))
    for actual, reference in zip(outputs, expected):
        assert_close_scaled(actual, reference.float(), RATIO_TOLERANCE, RATIO_TOLERANCE)
    grad_scale, grad_shift = torch.randn(n, c, generator=gen), torch.randn(n, c, generator=gen)
    backward = (grad_scale, grad_shift, expected[2], params[0], codes, batch_stats)
    grads = in_every_order(lambda: coefficient_ops.switchable_backward(*backward))
    for actual, reference in zip(grads, ops.switchable_coefficients_backward(*backward)):
        assert_close_scaled(actual, reference, RATIO_TOLERANCE, RATIO_TOLERANCE)


#: Kernels of our own a training layer step launches, in every layout: forward moments,
#: coefficients, apply; backward grad sums, the coefficients' backward, dx. Split rows and
#: channels_last segments are merged in the tails of the reductions, the coefficients'
#: per-channel backward in the tail of its per-sample one (arrival.cuh). cuDNN's BatchNorm
#: launches 2 to 4 (docs/cuda_sass.md); before the coefficient kernels were fused, EN took
#: (6, 7) and SN (4, 5), plus a merge kernel per reduction where rows were split.
STEP_LAUNCHES = (3, 3)


@pytest.mark.parametrize('layer', ['EN', 'SN'])
@pytest.mark.parametrize('hw, channels_last', [
    ((8, 8), False),
    ((128, 64), False),  # rows split in 2 segments
    ((8, 8), True),
])
def test_a_training_layer_step_launches_three_kernels_forward_and_three_backward(
        channel_op, coefficient_ops, layer, hw, channels_last):
    n, c, r, hidden, codes = 2, 40, 8, 150, (0, 1, 2)
    x = activation((n, c, *hw), torch.float32, channels_last, seed=0)
    dy = activation((n, c, *hw), torch.float32, channels_last, seed=1)
    launches = []

    def run(library, call, *args):
        outputs = call(*args)
        launches.append(library.launches())
        return outputs

    mean, var = run(channel_op, channel_op.channel_moments, x, channels_last)
    _, _, running = coefficient_case(n, c, len(codes))
    gen = torch.Generator().manual_seed(3)
    tail = (codes, True, 0.1, 1e-5, n * hw[0] * hw[1])
    if layer == 'EN':
        weights = float_ratio_inputs(n, len(codes), c, r, hidden)[3:]
        gamma, beta = torch.randn(3, c, generator=gen), torch.randn(3, c, generator=gen)
        outputs = run(coefficient_ops, coefficient_ops.exemplar, mean, var, gamma, beta,
                      *weights, *running, *tail)
        saved = outputs[3]
        backward = (coefficient_ops.exemplar_backward, *coefficients((n, c), torch.float32, 2),
                    saved, gamma, weights[0], weights[1], weights[3], codes, True)
    else:
        params = (torch.randn(c, generator=gen), torch.randn(c, generator=gen),
                  torch.randn(3, generator=gen), torch.randn(3, generator=gen))
        outputs = run(coefficient_ops, coefficient_ops.switchable, mean, var, *params,
                      *running, *tail)
        saved = outputs[2]
        backward = (coefficient_ops.switchable_backward,
                    *coefficients((n, c), torch.float32, 2), saved, params[0], codes, True)
    scale, shift = outputs[0], outputs[1]
    run(channel_op, channel_op.channel_affine, x, channels_last, mean, scale, shift)
    sum_dy, _ = run(channel_op, channel_op.channel_affine_grad_sums, dy, x, channels_last, mean)
    run(coefficient_ops, *backward)
    run(channel_op, channel_op.channel_norm_input_grad, dy, x, channels_last, mean, scale,
        sum_dy, shift, scale)
    assert (sum(launches[:3]), sum(launches[3:])) == STEP_LAUNCHES, launches


def test_ratio_forward_reports_a_launch_past_the_shared_memory_limit(ratios):
    # P = 12288 hidden units need 49304 bytes of shared memory; the glue allows 4096.
    inputs = float_ratio_inputs(1, 2, 32, 32, 12288)
    with pytest.raises(EmulationError, match='dynamic shared memory') as error:
        ratios.forward(*inputs)
    assert error.value.code == 1  # cudaErrorInvalidValue


@pytest.mark.skipif(VARIANT == 'sanitized', reason='this is the sanitized rerun')
def test_sanitizers_find_nothing():
    """The module again, on libraries built with -fsanitize=address,undefined (any finding
    aborts), in the shuffled order."""
    build.build_libraries('sanitized')
    env = {**os.environ, **build.sanitizer_environment(), 'CUDA_EMULATION_VARIANT': 'sanitized',
           'CUDA_EMULATION_ORDERS': 'shuffled'}
    # --capture=sys: a sanitizer writes its report to file descriptor 2, then exits.
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', __file__, '-q', '-x', '-p', 'no:cacheprovider',
         '--capture=sys', '-k', 'not sanitizers'],
        cwd=build.ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]


# ------------------------------------------------------------------------------------------
# The emulation itself


def test_builtins_are_three_dimensional(probe):
    grid, block = (2, 3, 2), (4, 2, 3)
    out = probe.builtins(grid, block)
    b = torch.arange(out.shape[0])[:, None].expand(out.shape[:2])
    t = torch.arange(out.shape[1])[None, :].expand(out.shape[:2])
    expected = torch.stack([t % block[0], t // block[0] % block[1], t // (block[0] * block[1]),
                            b % grid[0], b // grid[0] % grid[1], b // (grid[0] * grid[1])], -1)
    assert torch.equal(out, expected.to(torch.int32))


def shuffle_expected(kind, lane, arg, width):
    """The lane `lane` reads by CUDA's rules (its own where the source is outside its
    segment of `width` lanes)."""
    first = lane // width * width
    if kind == 'index':
        return first + arg % width
    if kind == 'up':
        return lane - arg if lane - first >= arg else lane
    if kind == 'down':
        return lane + arg if lane - first + arg < width else lane
    return lane ^ arg if lane ^ arg < first + width else lane


@pytest.mark.parametrize('mask, width', [(0xffffffff, 32), (0xffffffff, 8), (0xffffffff, 1),
                                         (0x0000ffff, 16)], ids=['w32', 'w8', 'w1', 'half'])
@pytest.mark.parametrize('kind, arg', [('index', 5), ('index', 37), ('up', 3), ('down', 1),
                                       ('down', 6), ('xor', 1), ('xor', 12)])
def test_shuffles_follow_cuda(probe, kind, arg, mask, width):
    out = probe.shuffle(kind, 64, mask, arg, width)
    expected = [100 + 32 * (t // 32) + shuffle_expected(kind, t % 32, arg, width)
                if mask >> (t % 32) & 1 else -1 for t in range(64)]
    assert out.tolist() == expected


def test_shuffles_move_every_byte(probe):
    doubles = torch.arange(32, dtype=torch.float64) * (1 + 2 ** -40)
    halves = torch.arange(32, dtype=torch.float16) / 3
    expected_doubles = doubles[torch.arange(32) ^ 1]
    expected_halves = torch.cat([halves[1:], halves[-1:]])
    probe.shuffle_types(doubles, halves.view(torch.int16))
    assert torch.equal(doubles, expected_doubles) and torch.equal(halves, expected_halves)


def test_shared_memory_is_nan_bytes_when_each_block_starts(probe):
    assert (probe.shared_poison(3) == -1).all()


def test_atomics(probe):
    blocks, threads = 3, 100
    total = blocks * threads
    ints, uints, ulls, floats, doubles = probe.atomics(blocks, threads)
    assert ints.tolist() == [total, -2 * total, total - 1]
    assert uints[0] == 7 and 1 <= uints[1] <= total and uints[2] == total - 1
    assert ulls.tolist() == [total << 33]
    assert floats.tolist() == [total / 2, 3.0] and doubles.tolist() == [total / 4]


@pytest.mark.parametrize('order', ['forward', 'reversed', 'shuffled'])
def test_scheduling_order(probe, monkeypatch, order):
    monkeypatch.setenv('CUDA_EMULATION_ORDER', order)
    tickets = probe.order(4, 64).flatten()
    forward = torch.arange(tickets.numel(), dtype=torch.int32)
    if order == 'forward':
        assert torch.equal(tickets, forward)
    elif order == 'reversed':
        assert torch.equal(tickets, forward.flip(0))
    else:
        assert torch.equal(tickets.sort().values, forward)
        assert not torch.equal(tickets, forward) and not torch.equal(tickets, forward.flip(0))
        assert torch.equal(probe.order(4, 64).flatten(), tickets)  # seeded: reproducible


@pytest.mark.parametrize('fault, message', [
    ('skipped barrier', 'pass different numbers of __syncthreads'),
    ('crossed wait', 'deadlock.*\n.*waits at __syncthreads.*\n.*waits at __shfl_down_sync'),
    ('split barrier', 'reaches a __syncthreads other than the one at .*probe_kernels.cu:'),
    ('exited lane', 'deadlock.*\n.*waits at __syncwarp.*\n.*exited'),
])
def test_faults_are_reported(probe, fault, message):
    with pytest.raises(EmulationError, match=message) as error:
        probe.fault(fault)
    assert error.value.code == 719  # cudaErrorLaunchFailure


def test_a_shuffle_reading_a_lane_outside_its_mask_is_reported(probe):
    with pytest.raises(EmulationError, match='lane 0 reads lane 16 in __shfl_down_sync, but '
                                             'mask 0x0000ffff leaves that lane out'):
        probe.shuffle('down', 32, 0x0000ffff, 16, 32)


@pytest.mark.parametrize('grid, block, shared_bytes, code', [
    ((1, 1, 1), (1025, 1, 1), 0, 9), ((1, 1, 1), (32, 32, 2), 0, 9),
    ((1, 1, 1), (1, 1, 65), 0, 9), ((0, 1, 1), (1, 1, 1), 0, 9),
    ((1, 65536, 1), (1, 1, 1), 0, 9), ((1, 1, 65536), (1, 1, 1), 0, 9),
    ((1, 1, 1), (1, 1, 1), 48 * 1024 + 1, 1),
    ((1, 65535, 1), (1, 1, 1), 0, 0), ((1, 1, 1), (1024, 1, 1), 48 * 1024, 0),
    ((1, 1, 1), (4, 4, 64), 0, 0),
])
def test_launch_limits(probe, grid, block, shared_bytes, code):
    if code == 0:
        probe.launch(grid, block, shared_bytes)
    else:
        with pytest.raises(EmulationError) as error:
            probe.launch(grid, block, shared_bytes)
        assert error.value.code == code


def all_16_bit_patterns():
    return torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16)


@pytest.mark.parametrize('dtype, name', [(torch.float16, 'half'), (torch.bfloat16, 'bfloat16')])
def test_16_bit_floats_convert_as_torch(probe, dtype, name):
    bits = all_16_bit_patterns()
    values = bits.view(dtype).float()
    torch.testing.assert_close(probe.convert(f'{name}_to_float', bits), values, rtol=0, atol=0,
                               equal_nan=True)
    # Round to nearest even: every value, the midpoints between neighbours (ties) and the
    # floats next to them, and random float bit patterns (NaNs among them).
    finite = values[values.isfinite()].sort().values
    midpoints = (finite[1:] + finite[:-1]) / 2
    floats = torch.cat([values, midpoints, midpoints.nextafter(finite[1:]),
                        midpoints.nextafter(finite[:-1]),
                        torch.randint(-2 ** 31, 2 ** 31, (1 << 20,), dtype=torch.int64)
                        .to(torch.int32).view(torch.float32)])
    converted = probe.convert(f'float_to_{name}', floats).view(dtype)
    torch.testing.assert_close(converted, floats.to(dtype), rtol=0, atol=0, equal_nan=True)
