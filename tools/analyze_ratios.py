"""Read what Exemplar Normalization learned: its ratios per layer, class and image.

``collect`` runs a trained segmentor over a dataset split (the config's val or test
dataloader) and writes, into ``--out``: ``ratios.csv`` (image, layer, normalizer,
ratio), ``pixel_shares.csv``, ``summary.json`` and the figures of paper Figs. 4, 6, 7
and 8 as PNG and SVG. ``dynamics`` plots the ratios that ``ENRatioLoggerHook`` logged
during a training run (paper Fig. 5). Examples::

    python tools/analyze_ratios.py collect CONFIG work_dirs/run/iter_80000.pth \\
        --out work_dirs/run/ratios --classes wall sky person --images ADE_val_00000001
    python tools/analyze_ratios.py dynamics work_dirs/run --out work_dirs/run/ratios
"""
import argparse
import copy
import os.path as osp
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner, load_checkpoint
from mmseg.apis import init_model
from torch import nn
from torch.utils.data import DataLoader

from en_seg.analysis.recording import collect_ratios, image_names
from en_seg.analysis.report import lookup_names, write_dynamics_report, write_report


#: Splits whose dataloader the analysis reads: ``<split>_dataloader`` in the config.
SPLITS = ('val', 'test')


def init_segmentor(config: str, checkpoint: str, device: str = 'cpu',
                   cfg_options: Optional[dict] = None) -> nn.Module:
    """The config's segmentor in evaluation mode with a ``tools/train.py`` checkpoint.

    The model is built by ``mmseg.apis.init_model`` (no pretrained backbone weights),
    then the checkpoint (mmengine format, weights under ``state_dict``) is loaded
    strictly, weights-only (:mod:`en_seg.checkpoint`).

    Args:
        config: path of the config file.
        checkpoint: path of the checkpoint file.
        device: where the model runs, e.g. ``'cpu'`` or ``'cuda:0'``. Default: 'cpu'.
        cfg_options: config overrides, as ``--cfg-options`` of the tools.

    Returns:
        The model, with its merged config as ``model.cfg``.

    Raises:
        FileNotFoundError: for a missing config or checkpoint.
        en_seg.checkpoint.CheckpointError: the checkpoint is unreadable or refused.
        ValueError: if the checkpoint has no EN layer (no ``*.ratio_fc2.weight``), e.g. a
            BatchNorm one: the EN layers would keep their initial, uniform ratios.
        RuntimeError: if the checkpoint's weights do not match the config's model.
    """
    for what, path in (('config', config), ('checkpoint', checkpoint)):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} file {path!r} does not exist')
    model = init_model(config, checkpoint=None, device='cpu', cfg_options=cfg_options)
    state = load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    state = state.get('state_dict', state)
    # EN layers load BatchNorm weights, keeping their initial ratio branch
    # (docs/method.md#loading-a-batchnorm-checkpoint), so the strict load alone does not
    # notice a checkpoint without ratio branches.
    if not any(key.endswith('ratio_fc2.weight') for key in state):
        raise ValueError(
            f'checkpoint {checkpoint!r} holds no EN layer (no *.ratio_fc2.weight key), so '
            'its ratios would be the initial 1/K: pass a checkpoint trained with '
            "norm_cfg=dict(type='EN'), together with that training's config")
    return model.to(device)


def build_split_dataloader(cfg: Config, split: str = 'val') -> DataLoader:
    """The dataloader of ``cfg.<split>_dataloader``, one image per batch.

    Batches hold one image because mmseg pads the images of a batch to a common size,
    and padding would change the IN and LN statistics, hence the ratios.

    Args:
        cfg: a full mmseg config (``model.cfg`` of :func:`init_segmentor`), whose
            default scope is set (``init_model`` does it).
        split: 'val' or 'test'. Default: 'val'.

    Raises:
        ValueError: for another split, or a config without that dataloader.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    key = f'{split}_dataloader'
    if cfg.get(key) is None:
        raise ValueError(f'the config has no {key}: choose another split, or inherit a '
                         'dataset config (e.g. configs/_base_/datasets/ade20k.py)')
    dataloader = copy.deepcopy(cfg[key])
    dataloader['batch_size'] = 1
    return Runner.build_dataloader(dataloader)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {value}')
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Analyse the ratios of EN layers (en-seg)')
    commands = parser.add_subparsers(dest='command', required=True)
    collect = commands.add_parser(
        'collect', help='ratios of every EN layer for every image of a split, and figures')
    collect.add_argument('config', help='config file of the trained model')
    collect.add_argument('checkpoint', help='checkpoint file written by tools/train.py')
    collect.add_argument('--out', required=True, help='directory for table and figures')
    collect.add_argument('--split', choices=SPLITS, default='val',
                         help='the config dataloader to read (default: val)')
    collect.add_argument('--classes', nargs='+', metavar='CLASS',
                         help='classes for the per-class figure, as the dataset names '
                              'them (default: the 4 with the most pixels)')
    collect.add_argument('--images', nargs='+', metavar='IMAGE',
                         help='images for the per-image figure, as named in ratios.csv '
                              '(default: 4 spread over the split)')
    collect.add_argument('--max-images', type=positive_int,
                         help='analyse only the first N images of the split')
    collect.add_argument('--device',
                         default='cuda:0' if torch.cuda.is_available() else 'cpu',
                         help='device to run the model on (default: cuda:0 if available)')
    collect.add_argument('--cfg-options', nargs='+', action=DictAction,
                         help='override config keys, e.g. val_dataloader.num_workers=0')
    dynamics = commands.add_parser(
        'dynamics', help='plot the ratios ENRatioLoggerHook logged during training')
    dynamics.add_argument('work_dir', help='work_dir of the training run (or a '
                                           'vis_data/scalars.json file)')
    dynamics.add_argument('--out', required=True, help='directory for the figure')
    return parser.parse_args(argv)


def check_choices(dataset, args: argparse.Namespace) -> None:
    """Reject unknown --classes and --images before the long run over the split."""
    if args.classes:
        lookup_names(dataset.metainfo['classes'], args.classes, 'class')
    if args.images:
        count = len(dataset) if args.max_images is None else min(len(dataset),
                                                                 args.max_images)
        paths = [dataset.get_data_info(i)['img_path'] for i in range(count)]
        lookup_names(image_names(paths), args.images, 'image')


def collect(args: argparse.Namespace) -> Dict[str, List[str]]:
    model = init_segmentor(args.config, args.checkpoint, args.device, args.cfg_options)
    dataloader = build_split_dataloader(model.cfg, args.split)
    dataset = dataloader.dataset
    check_choices(dataset, args)
    table = collect_ratios(model, dataloader, dataset.metainfo['classes'],
                           ignore_index=dataset.ignore_index, max_images=args.max_images)
    meta = dict(config=osp.abspath(args.config), checkpoint=osp.abspath(args.checkpoint),
                split=args.split, dataset=type(dataset).__name__)
    return write_report(table, args.out, args.classes, args.images, meta)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, List[str]]:
    """Run the command line; returns the written files by kind."""
    args = parse_args(argv)
    if args.command == 'collect':
        outputs = collect(args)
    else:
        outputs = write_dynamics_report(args.work_dir, args.out)
    for kind, paths in outputs.items():
        print(f'{kind}: {", ".join(paths)}')
    return outputs


if __name__ == '__main__':
    main()
