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
import os.path as osp
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.config import DictAction

from en_seg.analysis.collect import collect_ratios, image_names
from en_seg.analysis.loading import SPLITS, build_split_dataloader, init_segmentor
from en_seg.analysis.report import lookup_names, write_dynamics_report, write_report


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
