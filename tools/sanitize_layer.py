"""A small workload of every CUDA kernel of en_seg, for compute-sanitizer.

Runs EN and SN layers' forward + backward (training and evaluation) on the GPU in float32
and bfloat16 autocast, NCHW and channels_last, at shapes that take each kernel's paths: odd
plane sizes, H * W = 1, and a channels_last plane long enough to be split into segments.
tools/gpu_check.sh runs it under ``compute-sanitizer --tool memcheck`` and ``--tool
racecheck``; set PYTORCH_NO_CUDA_MEMORY_CACHING=1 for memcheck, so that every tensor is its
own allocation and an access past its end is caught. Needs torch and en_seg only.

Exits 1 where en_seg.ops._C has no CUDA kernels (the workload would test nothing), and on
non-finite gradients.
"""
import sys

import torch

from en_seg.models import ExemplarNorm2d, SwitchableNorm2d
from en_seg.ops import CUDA_KERNELS_AVAILABLE

# (N, C, H, W): odd sizes; one value per plane; a channels_last sample of 128 * 129 rows,
# which the reductions split into 64 segments.
SHAPES = ((2, 32, 5, 7), (3, 64, 1, 1), (2, 32, 128, 129))


def run(layer: torch.nn.Module, x: torch.Tensor) -> bool:
    """One forward (under bfloat16 autocast for a bfloat16 x) and backward; whether every
    gradient is finite."""
    x = x.detach().requires_grad_()
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=x.dtype == torch.bfloat16):
        y = layer(x)
    grads = torch.autograd.grad(y.float().square().sum(), (x, *layer.parameters()))
    return all(bool(torch.isfinite(g).all()) for g in grads)


def main() -> int:
    if not CUDA_KERNELS_AVAILABLE:
        print('en_seg.ops._C has no CUDA kernels: build it with a CUDA torch first',
              file=sys.stderr)
        return 1
    torch.manual_seed(0)
    failures = []
    for shape in SHAPES:
        for cls in (ExemplarNorm2d, SwitchableNorm2d):
            layer = cls(shape[1]).cuda()
            for training in (True, False):
                layer.train(training)
                for dtype in (torch.float32, torch.bfloat16):
                    for memory_format in (torch.contiguous_format, torch.channels_last):
                        x = torch.randn(shape, device='cuda', dtype=dtype)
                        if not run(layer, x.to(memory_format=memory_format)):
                            failures.append(f'{cls.__name__} {shape} {dtype} '
                                            f'{memory_format} training={training}')
    torch.cuda.synchronize()
    for failure in failures:
        print(f'non-finite gradients: {failure}', file=sys.stderr)
    print(f'{len(SHAPES) * 16} forward + backward passes, {len(failures)} failed')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
