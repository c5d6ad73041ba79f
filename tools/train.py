"""Train a segmentor, or the ImageNet classifier that pre-trains its backbone, with
mmengine's Runner, the plug-in registered; the config's ``default_scope`` (``mmseg`` or
``mmpretrain``) picks the toolbox.

Same flags as mmsegmentation's ``tools/train.py``. Example::

    python tools/train.py configs/exemplar_norm/deeplabv3_r50-d8_en_8xb2-80k_ade20k-512x512.py
    python tools/train.py configs/exemplar_norm/resnet50-v1c_en_8xb32_in1k.py
    bash tools/dist_train.sh CONFIG 8 [--amp] [--resume] [--cfg-options ...]
"""
import argparse
import os
import os.path as osp

import torch
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from en_seg.checkpoint import CheckpointError
from en_seg.utils.launch import prepare_launch
from en_seg.utils.run_config import add_run_arguments, load_run_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a segmentor or classifier (en-seg)')
    parser.add_argument('config', help='training config file path')
    parser.add_argument('--resume', action='store_true',
                        help='resume from the latest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (EN keeps its statistics in fp32)')
    add_run_arguments(parser)
    return parser.parse_args()


def check_work_dir(work_dir: str, resume: bool) -> None:
    """Refuse to write a new run over checkpoints of an earlier one."""
    if resume or not osp.isdir(work_dir):
        return
    if any(name.endswith('.pth') for name in os.listdir(work_dir)):
        raise SystemExit(
            f'{work_dir} already holds checkpoints of an earlier run and a new run would '
            'overwrite them: pass --resume to continue that run, or choose another '
            '--work-dir')


def main() -> None:
    args = parse_args()
    cfg = load_run_config(args)
    check_work_dir(cfg.work_dir, args.resume)
    if args.amp:
        if not torch.cuda.is_available():
            raise SystemExit("--amp needs a GPU: mmengine's AmpOptimWrapper trains on CUDA "
                             '(or NPU, MLU, MUSA) devices only; train without --amp here')
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print('The config already trains with AmpOptimWrapper; --amp changes nothing.')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.resume = args.resume
    prepare_launch(cfg)
    # A config may name its own runner, as in mmsegmentation's tools.
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    try:
        runner.train()
    except CheckpointError as error:  # from load_from or --resume
        raise SystemExit(str(error)) from None


if __name__ == '__main__':
    main()
