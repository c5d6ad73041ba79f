"""The CUDA launchers, run by the emulation, as functions of torch CPU tensors: the
emulated device memory is host memory, so a kernel reads and writes the tensors' storage.
Each mirrors its torch glue in en_seg/ops/csrc/cuda/*_cuda.cpp (the outputs it allocates,
the scratch it passes), except that outputs and scratch start as NaN bytes rather than
uninitialised, so that an element a kernel fails to write shows.
"""
import ctypes

import torch

_DTYPES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
_I64, _INT, _PTR = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p


class EmulationError(RuntimeError):
    """A launch the emulation refused or a kernel fault it found."""

    def __init__(self, code, message):
        super().__init__(f'cudaError_t {code}: {message}')
        self.code = code


def _nan_like(shape, dtype, memory_format=torch.contiguous_format):
    return torch.full(shape, float('nan'), dtype=dtype).contiguous(memory_format=memory_format)


def _ptr(tensor):
    """The address of tensor's data; the caller keeps the tensor alive across the call."""
    return _PTR(tensor.data_ptr())


class _Library:
    def __init__(self, path):
        self._lib = ctypes.CDLL(str(path))
        self._lib.emu_failure_message.restype = ctypes.c_char_p
        self._lib.emu_launch_count.restype = ctypes.c_int64

    def launches(self):
        """The kernels the last call of this library launched."""
        return self._lib.emu_launch_count()

    def _check(self, code):
        if code != 0:
            raise EmulationError(code, self._lib.emu_failure_message().decode())

    def _check_arrivals(self, launch, count=1):
        """Runs launch(arrivals) with `count` zeroed arrival counters and checks its code
        and that it left them zero (arrival.cuh's contract)."""
        arrivals = torch.zeros(count, dtype=torch.int32)
        self._check(launch(_ptr(arrivals)))
        assert not arrivals.any(), 'the launch left arrival counters non-zero'

    def _function(self, name, restype, *argtypes):
        function = getattr(self._lib, name)
        function.restype, function.argtypes = restype, list(argtypes)
        return function


class ChannelOp(_Library):
    """channel_op_kernel.cu's four launchers. Activations x, dy (N, C, H, W) of float16,
    bfloat16, float32 or float64, dense in the layout `channels_last` names (either, when
    H * W = 1 or C = 1); (N, C) coefficients and results contiguous, float32 (float64 for
    float64 x)."""

    def __init__(self, path):
        super().__init__(path)
        shape = [_INT, _I64, _I64, _I64, _INT]  # dtype, n, c, hw, channels_last
        self._scratch = self._function('emu_reduction_scratch', None, *shape, _PTR)
        self._moments = self._function('emu_channel_moments', _INT, _PTR, *shape, *[_PTR] * 4)
        self._affine = self._function('emu_channel_affine', _INT, _PTR, *shape, *[_PTR] * 4)
        self._grad_sums = self._function('emu_channel_affine_grad_sums', _INT, _PTR, _PTR,
                                         *shape, *[_PTR] * 5)
        self._norm_input_grad = self._function('emu_channel_norm_input_grad', _INT, _PTR, _PTR,
                                               *shape, *[_PTR] * 6)

    @staticmethod
    def _shape(x, channels_last):
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        assert x.is_contiguous(memory_format=memory_format), 'x is not dense in that layout'
        n, c, h, w = x.shape
        return [_DTYPES[x.dtype], n, c, h * w, int(channels_last)], memory_format

    @staticmethod
    def _stats(x):
        return _nan_like(x.shape[:2], torch.float64 if x.dtype == torch.float64 else torch.float32)

    def scratch_sizes(self, dtype, n, c, hw, channels_last):
        """(workspace bytes, arrival counters) of a reduction of x (dtype a torch dtype)."""
        sizes = torch.zeros(2, dtype=torch.int64)
        self._scratch(_DTYPES[dtype], n, c, hw, int(channels_last), _ptr(sizes))
        return tuple(sizes.tolist())

    def _reduce(self, launch, shape, *args):
        """Runs a reduction's launcher with NaN-filled scratch and zeroed arrival counters
        (checked as _check_arrivals does)."""
        sizes = torch.zeros(2, dtype=torch.int64)
        self._scratch(*shape, _ptr(sizes))
        workspace = torch.full((int(sizes[0]),), 0xff, dtype=torch.uint8)
        self._check_arrivals(lambda arrivals: launch(*args, _ptr(workspace), arrivals),
                             int(sizes[1]))

    def channel_moments(self, x, channels_last):
        """(mean, var) over H * W per (n, c), var biased."""
        shape, _ = self._shape(x, channels_last)
        mean, var = self._stats(x), self._stats(x)
        self._reduce(self._moments, shape, _ptr(x), *shape, _ptr(mean), _ptr(var))
        return mean, var

    def channel_affine(self, x, channels_last, center, scale, shift):
        """y = scale * (x - center) + shift per (n, c), like x."""
        shape, memory_format = self._shape(x, channels_last)
        y = _nan_like(x.shape, x.dtype, memory_format)
        self._check(self._affine(_ptr(x), *shape, *map(_ptr, (center, scale, shift, y))))
        return y

    def channel_affine_grad_sums(self, dy, x, channels_last, center):
        """(Σ dy, Σ dy (x - center)) over H * W per (n, c)."""
        shape, _ = self._shape(x, channels_last)
        sum_dy, sum_dy_xc = self._stats(x), self._stats(x)
        self._reduce(self._grad_sums, shape, _ptr(dy), _ptr(x), *shape, _ptr(center),
                     _ptr(sum_dy), _ptr(sum_dy_xc))
        return sum_dy, sum_dy_xc

    def channel_norm_input_grad(self, dy, x, channels_last, mean, scale, sum_dy, grad_mean,
                                grad_var):
        """dx = scale * dy + (grad_mean - scale * sum_dy + 2 grad_var (x - mean)) / (H * W)
        per (n, c), like x."""
        shape, memory_format = self._shape(x, channels_last)
        dx = _nan_like(x.shape, x.dtype, memory_format)
        self._check(self._norm_input_grad(
            _ptr(dy), _ptr(x), *shape,
            *map(_ptr, (mean, scale, sum_dy, grad_mean, grad_var, dx))))
        return dx


class RatioOp(_Library):
    """ratio_op_kernel.cu's two launchers, on contiguous float32 tensors shaped as
    the op en_seg::exemplar_ratios takes them (csrc/module.cpp)."""

    def __init__(self, path):
        super().__init__(path)
        sizes = [_I64, _I64, _I64, _I64, _INT]  # n, c, r, hidden, k
        self._saved_values = self._function('emu_saved_values', _I64, *sizes)
        self._workspace = self._function('emu_exemplar_ratios_backward_workspace', _I64, *sizes)
        self._forward = self._function('emu_exemplar_ratios_forward', _INT, *sizes, _PTR, _PTR,
                                       _PTR)
        self._backward = self._function('emu_exemplar_ratios_backward', _INT, *sizes, _PTR,
                                        _PTR, _PTR)

    @staticmethod
    def _sizes(means, conv_w, fc1_w):
        n, k, c = means.shape
        return [n, c, conv_w.shape[1], fc1_w.shape[0], k]

    @staticmethod
    def _pointers(tensors):
        assert all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
        return (_PTR * len(tensors))(*(t.data_ptr() for t in tensors))

    def forward(self, pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b):
        """(ratios (N, K), activations (N, K + K² + P + K·C/r + K·C))."""
        sizes = self._sizes(means, conv_w, fc1_w)
        inputs = (pooled, means, rstds, conv_w, fc1_w, fc1_b, fc2_w, fc2_b)
        n, k = sizes[0], sizes[4]
        ratios = _nan_like((n, k), torch.float32)
        activations = _nan_like((n, self._saved_values(*sizes)), torch.float32)
        self._check(self._forward(*sizes, self._pointers(inputs), _ptr(ratios),
                                  _ptr(activations)))
        return ratios, activations

    def backward(self, grad, activations, rstds, conv_w, fc1_w, fc2_w):
        """The gradients of the forward's 8 inputs, shaped like them."""
        means_shape = rstds.shape
        sizes = self._sizes(rstds, conv_w, fc1_w)
        n, c, _, hidden, k = sizes
        shapes = [(n, c), means_shape, means_shape, conv_w.shape, fc1_w.shape, (hidden,),
                  fc2_w.shape, (k,)]
        grads = [_nan_like(shape, torch.float32) for shape in shapes]
        workspace = _nan_like((self._workspace(*sizes),), torch.float32)
        inputs = (grad, activations, rstds, conv_w, fc1_w, fc2_w)
        self._check(self._backward(*sizes, self._pointers(inputs), self._pointers(grads),
                                   _ptr(workspace)))
        return grads


class CoefficientOp(_Library):
    """coefficient_op_kernel.cu's four launchers, on contiguous float32 tensors shaped as the
    ops en_seg::exemplar_coefficients, switchable_coefficients and their backward ops take
    them (csrc/module.cpp); the running statistics are updated in place."""

    def __init__(self, path):
        super().__init__(path)
        sizes = [_I64, _I64, _I64, _I64, _INT]  # n, c, r, hidden, k
        running = [_PTR, _PTR, _PTR, _INT, _INT, ctypes.c_float, ctypes.c_float]
        self._exemplar_saved = self._function('emu_exemplar_saved_values', _I64, *sizes)
        self._exemplar_forward_workspace = self._function('emu_exemplar_forward_workspace',
                                                          _I64, *sizes)
        self._exemplar_backward_workspace = self._function('emu_exemplar_backward_workspace',
                                                           _I64, *sizes)
        self._exemplar = self._function('emu_exemplar_coefficients', _INT, *sizes[:4], _PTR,
                                        _INT, _INT, ctypes.c_float, _PTR, *running, _PTR, _PTR)
        self._exemplar_backward = self._function('emu_exemplar_coefficients_backward', _INT,
                                                 *sizes[:4], _PTR, _INT, _INT, _PTR, _PTR,
                                                 _PTR, _PTR)
        self._switchable_saved = self._function('emu_switchable_saved_values', _I64, _I64,
                                                _I64, _INT)
        self._switchable_backward_workspace = self._function(
            'emu_switchable_backward_workspace', _I64, _I64, _I64, _PTR, _INT)
        self._switchable = self._function('emu_switchable_coefficients', _INT, _I64, _I64,
                                          _PTR, _INT, _INT, ctypes.c_float, _PTR, *running,
                                          _PTR)
        self._switchable_backward = self._function('emu_switchable_coefficients_backward',
                                                   _INT, _I64, _I64, _PTR, _INT, _INT, _PTR,
                                                   _PTR, _PTR, _PTR)

    @staticmethod
    def _pointers(tensors):
        assert all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
        return (_PTR * len(tensors))(*(t.data_ptr() for t in tensors))

    @staticmethod
    def _running(running_mean, running_var, num_batches_tracked, update, momentum, count):
        """The running statistics' arguments, as csrc/cuda/coefficient_op_cuda.cpp makes them."""
        return [_PTR(None if running_mean is None else running_mean.data_ptr()),
                _PTR(None if running_var is None else running_var.data_ptr()),
                _PTR(num_batches_tracked.data_ptr() if update else None), int(update),
                int(momentum is None), 0.0 if momentum is None else momentum,
                count / (count - 1) if count > 1 else 1.0]

    @staticmethod
    def _update(codes, batch_stats, running_mean):
        return 2 in codes and batch_stats and running_mean is not None

    def exemplar(self, mean, var, weight, bias, conv_w, fc1_w, fc1_b, fc2_w, fc2_b,
                 running_mean, running_var, num_batches_tracked, codes, batch_stats,
                 momentum, eps, count):
        """(scale, shift, ratios, saved), as en_seg::exemplar_coefficients."""
        (n, c), k = mean.shape, len(codes)
        sizes = [n, c, conv_w.shape[1], fc1_w.shape[0], k]
        codes_t = torch.tensor(codes, dtype=torch.int64)
        outputs = [_nan_like((n, c), torch.float32), _nan_like((n, c), torch.float32),
                   _nan_like((n, k), torch.float32),
                   _nan_like((self._exemplar_saved(*sizes),), torch.float32)]
        workspace = _nan_like((self._exemplar_forward_workspace(*sizes),), torch.float32)
        inputs = (mean, var, weight, bias, conv_w, fc1_w, fc1_b, fc2_w, fc2_b)
        update = self._update(codes, batch_stats, running_mean)
        self._check(self._exemplar(
            *sizes[:4], _ptr(codes_t), k, int(batch_stats), eps, self._pointers(inputs),
            *self._running(running_mean, running_var, num_batches_tracked, update, momentum,
                           count),
            self._pointers(outputs), _ptr(workspace)))
        return outputs

    def exemplar_backward(self, grad_scale, grad_shift, saved, weight, conv_w, fc1_w, fc2_w,
                          codes, batch_stats):
        """The gradients of mean, var and the seven parameters, as
        en_seg::exemplar_coefficients_backward."""
        (n, c), k = grad_scale.shape, len(codes)
        hidden = fc1_w.shape[0]
        sizes = [n, c, conv_w.shape[1], hidden, k]
        shapes = [(n, c), (n, c), (k, c), (k, c), conv_w.shape, fc1_w.shape, (hidden,),
                  fc2_w.shape, (k,)]
        grads = [_nan_like(shape, torch.float32) for shape in shapes]
        workspace = _nan_like((self._exemplar_backward_workspace(*sizes),), torch.float32)
        inputs = (grad_scale, grad_shift, saved, weight, conv_w, fc1_w, fc2_w)
        codes_t = torch.tensor(codes, dtype=torch.int64)
        self._check_arrivals(lambda arrivals: self._exemplar_backward(
            *sizes[:4], _ptr(codes_t), k, int(batch_stats), self._pointers(inputs),
            self._pointers(grads), _ptr(workspace), arrivals))
        return grads

    def switchable(self, mean, var, weight, bias, mean_weight, var_weight, running_mean,
                   running_var, num_batches_tracked, codes, batch_stats, momentum, eps, count):
        """(scale, shift, saved), as en_seg::switchable_coefficients."""
        (n, c), k = mean.shape, len(codes)
        codes_t = torch.tensor(codes, dtype=torch.int64)
        outputs = [_nan_like((n, c), torch.float32), _nan_like((n, c), torch.float32),
                   _nan_like((self._switchable_saved(n, c, k),), torch.float32)]
        inputs = (mean, var, weight, bias, mean_weight, var_weight)
        update = self._update(codes, batch_stats, running_mean)
        self._check(self._switchable(
            n, c, _ptr(codes_t), k, int(batch_stats), eps, self._pointers(inputs),
            *self._running(running_mean, running_var, num_batches_tracked, update, momentum,
                           count),
            self._pointers(outputs)))
        return outputs

    def switchable_backward(self, grad_scale, grad_shift, saved, weight, codes, batch_stats):
        """The gradients of mean, var, weight, bias, mean_weight, var_weight, as
        en_seg::switchable_coefficients_backward."""
        (n, c), k = grad_scale.shape, len(codes)
        codes_t = torch.tensor(codes, dtype=torch.int64)
        shapes = [(n, c), (n, c), (c,), (c,), (k,), (k,)]
        grads = [_nan_like(shape, torch.float32) for shape in shapes]
        workspace = _nan_like((self._switchable_backward_workspace(n, c, _ptr(codes_t), k),),
                              torch.float32)
        inputs = (grad_scale, grad_shift, saved, weight)
        self._check_arrivals(lambda arrivals: self._switchable_backward(
            n, c, _ptr(codes_t), k, int(batch_stats), self._pointers(inputs),
            self._pointers(grads), _ptr(workspace), arrivals))
        return grads


class Probe(_Library):
    """probe_kernels.cu: kernels that exercise the emulation itself. Outputs are int32
    tensors (unsigned values reinterpreted) unless said otherwise."""

    def __init__(self, path):
        super().__init__(path)
        dim3 = [ctypes.c_uint] * 3
        self._builtins = self._function('emu_probe_builtins', _INT, *dim3, *dim3, _PTR)
        self._shuffle = self._function('emu_probe_shuffle', _INT, _INT, _INT, ctypes.c_uint,
                                       ctypes.c_uint, _INT, _PTR)
        self._shuffle_types = self._function('emu_probe_shuffle_types', _INT, _PTR, _PTR)
        self._shared_poison = self._function('emu_probe_shared_poison', _INT, ctypes.c_uint,
                                             _PTR)
        self._atomics = self._function('emu_probe_atomics', _INT, ctypes.c_uint,
                                       ctypes.c_uint, *[_PTR] * 5)
        self._order = self._function('emu_probe_order', _INT, ctypes.c_uint, ctypes.c_uint,
                                     _PTR, _PTR)
        self._fault = self._function('emu_probe_fault', _INT, _INT, _PTR)
        self._launch = self._function('emu_probe_launch', _INT, *dim3, *dim3, ctypes.c_size_t)
        self._conversions = {
            name: self._function(f'emu_{name}', None, _PTR, _PTR, _I64)
            for name in ('float_to_half', 'half_to_float', 'float_to_bfloat16',
                         'bfloat16_to_float')}

    #: The shuffles of probe_kernels.cu's shuffle_kernel, by its `kind` argument.
    SHUFFLES = ('index', 'up', 'down', 'xor')

    def builtins(self, grid, block):
        """(blocks, threads, 6): threadIdx.xyz and blockIdx.xyz of every thread, blocks and
        threads in CUDA's linear order (x fastest)."""
        blocks, threads = grid[0] * grid[1] * grid[2], block[0] * block[1] * block[2]
        out = torch.full((blocks, threads, 6), -1, dtype=torch.int32)
        self._check(self._builtins(*grid, *block, _ptr(out)))
        return out

    def shuffle(self, kind, threads, mask, arg, width):
        """(threads,): what lane t of `mask` receives of the values 100 + t by the shuffle
        `kind` (one of SHUFFLES); -1 for threads outside the mask."""
        out = torch.full((threads,), -1, dtype=torch.int32)
        self._check(self._shuffle(threads, self.SHUFFLES.index(kind), mask, arg, width,
                                  _ptr(out)))
        return out

    def shuffle_types(self, doubles, halves):
        """Shuffles 32 float64 values by xor 1 and 32 float16 values down by 1, in place."""
        self._check(self._shuffle_types(_ptr(doubles), _ptr(halves)))

    def shared_poison(self, blocks):
        """(blocks, 2): the first word of dynamic and of static shared memory as each block
        first reads it."""
        out = torch.zeros((blocks, 2), dtype=torch.int32)
        self._check(self._shared_poison(blocks, _ptr(out)))
        return out

    def atomics(self, blocks, threads):
        """The counters of atomics_kernel after `blocks` blocks of `threads` threads:
        ints (3,), uints (3,) int64-valued, ulls (1,), floats (2,), doubles (1,)."""
        ints = torch.tensor([0, 0, -1], dtype=torch.int32)
        uints = torch.tensor([2 ** 32 - 1, 0, 0], dtype=torch.int64).to(torch.int32)
        ulls = torch.zeros(1, dtype=torch.int64)
        floats, doubles = torch.zeros(2), torch.zeros(1, dtype=torch.float64)
        self._check(self._atomics(blocks, threads, *map(_ptr, (ints, uints, ulls, floats,
                                                               doubles))))
        return ints, uints.to(torch.int64) % 2 ** 32, ulls, floats, doubles

    def order(self, blocks, threads):
        """(blocks, threads): the turn in which every thread first ran."""
        ticket, out = torch.zeros(1, dtype=torch.int32), torch.full((blocks, threads), -1,
                                                                    dtype=torch.int32)
        self._check(self._order(blocks, threads, _ptr(ticket), _ptr(out)))
        return out

    #: The faulty kernels of probe_kernels.cu's emu_probe_fault, by its `which` argument.
    FAULTS = ('skipped barrier', 'crossed wait', 'split barrier', 'exited lane')

    def fault(self, which):
        """Launches the faulty kernel `which` (one of FAULTS): raises EmulationError."""
        scratch = torch.zeros(64, dtype=torch.int32)
        self._check(self._fault(self.FAULTS.index(which), _ptr(scratch)))

    def launch(self, grid, block, shared_bytes=0):
        """Launches an empty kernel; raises EmulationError if the configuration is illegal."""
        self._check(self._launch(*grid, *block, shared_bytes))

    def convert(self, name, values):
        """values through the header's conversion `name` (float_to_half, half_to_float,
        float_to_bfloat16 or bfloat16_to_float); 16-bit floats travel as int16 bits."""
        to_float = name.endswith('to_float')
        out = torch.empty(values.shape, dtype=torch.float32 if to_float else torch.int16)
        self._conversions[name](_ptr(values), _ptr(out), values.numel())
        return out
