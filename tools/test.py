"""Evaluate a checkpoint: single-scale, multi-scale + flip, or both in one table.

Same flags as mmsegmentation's ``tools/test.py`` plus ``--ss-ms``. Example::

    python tools/test.py CONFIG work_dirs/run/iter_80000.pth --ss-ms
    bash tools/dist_test.sh CONFIG CHECKPOINT 8 --tta

Checkpoints load weights-only: a file that holds anything but tensors and what mmengine's
Runner saves is refused with one message, and nothing in it runs (en_seg.checkpoint).
"""
import argparse
import copy
import os.path as osp
from typing import Dict

from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from en_seg.checkpoint import CheckpointError
from en_seg.utils.launch import prepare_launch
from en_seg.utils.run_config import add_run_arguments, load_run_config
from en_seg.evaluation import format_metrics_table


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Evaluate a segmentor (en-seg)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file written by tools/train.py')
    parser.add_argument('--out', help='directory to save the predicted label maps')
    parser.add_argument('--show-dir', help='directory to save painted predictions')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--tta', action='store_true',
                      help='multi-scale + flip test (the config\'s tta_pipeline)')
    mode.add_argument('--ss-ms', action='store_true',
                      help='single-scale and multi-scale + flip, printed in one table')
    add_run_arguments(parser)
    return parser.parse_args()


def enable_tta(cfg: Config) -> None:
    """Wrap the model in the config's test-time-augmentation model, as mmseg does."""
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        raise SystemExit(f'the config lacks {missing}, needed for a multi-scale test: '
                         "inherit mmseg's default_runtime.py and a dataset config that "
                         'define them')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def enable_visualization(cfg: Config, show_dir: str) -> None:
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise SystemExit('--show-dir needs default_hooks.visualization '
                         '(SegVisualizationHook) in the config')
    hook['draw'] = True
    hook['interval'] = 1
    cfg.visualizer['save_dir'] = show_dir


def evaluate(cfg: Config, args: argparse.Namespace, tta: bool, tag: str) -> Dict[str, float]:
    cfg = copy.deepcopy(cfg)
    # An evaluation needs nothing of training; left in, the training data would still be
    # read (mmseg's visualization hook asks the runner for its iteration count).
    cfg.train_dataloader = cfg.train_cfg = cfg.optim_wrapper = cfg.param_scheduler = None
    if tta:
        enable_tta(cfg)
    if args.show_dir is not None:
        enable_visualization(cfg, osp.join(args.show_dir, tag) if args.ss_ms else
                             args.show_dir)
    if args.out is not None:
        cfg.test_evaluator['output_dir'] = osp.join(args.out, tag) if args.ss_ms else args.out
        cfg.test_evaluator['keep_results'] = True
    if args.ss_ms:
        cfg.work_dir = osp.join(cfg.work_dir, tag)
        # mmengine keeps one visualizer per name for the whole process: a second runner
        # would reuse the first one's and paint over its files.
        cfg.visualizer['name'] = f'{tag}_visualizer'
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    try:
        return runner.test()
    except CheckpointError as error:
        raise SystemExit(str(error)) from None


def main() -> None:
    args = parse_args()
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint {args.checkpoint} does not exist')
    cfg = load_run_config(args)
    cfg.load_from = args.checkpoint
    # Per-class IoU for the table; the evaluator's other settings are kept.
    if cfg.test_evaluator.get('type') == 'IoUMetric':
        cfg.test_evaluator.type = 'PerClassIoUMetric'
    prepare_launch(cfg)
    if args.ss_ms:
        columns = {'single-scale': evaluate(cfg, args, tta=False, tag='ss'),
                   'multi-scale+flip': evaluate(cfg, args, tta=True, tag='ms')}
    elif args.tta:
        columns = {'multi-scale+flip': evaluate(cfg, args, tta=True, tag='ms')}
    else:
        columns = {'single-scale': evaluate(cfg, args, tta=False, tag='ss')}
    if is_main_process():
        print(format_metrics_table(columns))


if __name__ == '__main__':
    main()
