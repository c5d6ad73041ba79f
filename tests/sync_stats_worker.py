"""Started by tests/test_sync_stats.py under torchrun with 2 CPU processes (gloo).

Runs every case of the file ``CASES`` (written by the test) with this process's share of
the batch and saves what it saw to ``OUT/rank{rank}.pt``; the test compares the two ranks
with one process on the whole batch. Usage: sync_stats_worker.py CASES OUT.
"""
import datetime
import os.path as osp
import sys
import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from en_seg.models import ExemplarNorm2d, SwitchableNorm2d

LAYERS = {'EN': ExemplarNorm2d, 'SN': SwitchableNorm2d}


def run_case(case, rank, groups):
    """One layer, built with sync_stats=True, through the case's steps on this rank."""
    layer = LAYERS[case['layer']](case['channels'], sync_stats=True,
                                  process_group=groups[case['group']][rank],
                                  **case['kwargs']).double()
    layer.load_state_dict(case['state'])
    layer.train(case['train'])
    if case['norm_eval']:
        layer.bn_member_mode.eval()
    # Under DDP, as in training: its gradient all-reduces interleave with the layer's.
    model = (DistributedDataParallel(layer, broadcast_buffers=False)
             if case['backward'] else layer)
    seen = {'outputs': [], 'input_grads': [], 'param_grads': [], 'warnings': []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for x, weight in zip(case['inputs'][rank], case['weights'][rank]):
            x = x.clone().requires_grad_(case['backward'])
            layer.zero_grad(set_to_none=True)
            y = model(x)
            seen['outputs'].append(y.detach())
            if case['backward']:
                (y * weight).sum().backward()
                seen['input_grads'].append(x.grad)
                seen['param_grads'].append({name: p.grad for name, p in
                                            layer.named_parameters()})
    seen['warnings'] = [str(w.message) for w in caught if str(w.message).startswith('en_seg')]
    seen['buffers'] = {name: b.clone() for name, b in layer.named_buffers()}
    return seen


def main() -> None:
    cases_path, out = sys.argv[1:]
    # A short collective timeout: a lost peer fails the test instead of hanging it.
    dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    # Every process creates every group, in the same order, as new_group requires.
    groups = {'default': [None, None], 'both': [dist.new_group([0, 1])] * 2,
              'own': [dist.new_group([0]), dist.new_group([1])]}
    cases = torch.load(cases_path, weights_only=True)
    results = {name: run_case(case, rank, groups) for name, case in cases.items()}
    torch.save(results, osp.join(out, f'rank{rank}.pt'))
    # DDP's reducers are gone with run_case; the group is torn down while both live.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
