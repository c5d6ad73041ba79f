"""Started by tests/test_integration.py under torchrun with 2 CPU processes (gloo).

Proves the distributed contract of our launch: gradients are averaged across processes
while every process keeps its own EN running statistics (no synchronisation).
"""
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.registry import MODEL_WRAPPERS

from en_seg.utils.launch import prepare_launch
from en_seg.models import ExemplarNorm2d


def main() -> None:
    # A short collective timeout: a lost peer fails the test instead of hanging it.
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(timeout=120))))
    prepare_launch(cfg)
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), ExemplarNorm2d(32, reduction=8))
    wrapped = MODEL_WRAPPERS.build(cfg.model_wrapper_cfg, default_args=dict(module=model))
    x = torch.randn(2, 3, 8, 8) * (rank + 1) + 3 * rank
    wrapped(x).square().mean().backward()
    norm = model[1]
    stats = [torch.zeros(32) for _ in range(2)]
    dist.all_gather(stats, norm.running_mean)
    grads = [torch.zeros_like(norm.weight) for _ in range(2)]
    dist.all_gather(grads, norm.weight.grad)
    if rank == 0:
        assert not torch.allclose(stats[0], stats[1]), 'running statistics were synchronised'
        torch.testing.assert_close(grads[0], grads[1])
        print('per-process statistics, averaged gradients: OK', flush=True)
    # Tear down in order: DDP's reducer first, while the process group still has another
    # owner. Freed last at exit, the reducer would destroy the gloo group with the GIL held
    # and wait on a gloo thread that needs the GIL (a deadlock seen here).
    dist.barrier()
    del wrapped
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
