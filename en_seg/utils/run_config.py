"""The command-line options and config handling that tools/train.py and tools/test.py share."""
import argparse
import os
import os.path as osp
from typing import Optional

from mmengine.config import Config, DictAction

from .norm_cfg_check import check_norm_cfgs


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add mmsegmentation's shared flags: --work-dir, --cfg-options, --launcher and the
    --local_rank / --local-rank that torch.distributed.launch passes."""
    parser.add_argument('--work-dir', help='where logs (and checkpoints) are written')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_cfg.max_iters=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_run_config(args: argparse.Namespace) -> Config:
    """Read ``args.config`` and apply the shared flags, as mmsegmentation's tools do.

    The work dir is, in order: ``--work-dir``, the config's ``work_dir``, or
    ``./work_dirs/<config name>``.

    Raises:
        SystemExit: with one line naming the problem, for a ``norm_cfg`` type that is not
            a registered norm layer (:func:`~.norm_cfg_check.check_norm_cfgs`).
    """
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    try:
        check_norm_cfgs(cfg)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    work_dir: Optional[str] = args.work_dir or cfg.get('work_dir')
    cfg.work_dir = work_dir or osp.join('./work_dirs',
                                        osp.splitext(osp.basename(args.config))[0])
    return cfg
