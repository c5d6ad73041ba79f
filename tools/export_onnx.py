"""Export a segmentor to ONNX and check the file with onnxruntime against PyTorch.

The graph maps (N, 3, H, W) normalized images (``inputs``) to the decode head's logits
(``logits``, en_seg/utils/onnx_export.py); EN and SN layers become plain ONNX operators,
their ratio branch included. Example::

    python tools/export_onnx.py CONFIG work_dirs/run/iter_80000.pth model.onnx --dynamic

The model is built and its checkpoint loaded by mmseg's ``init_model`` (weights-only, see
en_seg.checkpoint), in evaluation mode. ``none`` as the checkpoint exports the config's
random initialisation. The exported file is then run by onnxruntime on a random input of
the export shape (and, with ``--dynamic``, on one of another batch size and image size),
and the tool exits with an error where its logits differ from PyTorch's by more than
``--atol + --rtol * max |logit|``. Needs ``pip install 'en-seg[onnx]'``.
"""
import argparse
import os.path as osp
from typing import Optional, Sequence, Tuple

import torch
from mmengine.config import Config, DictAction
from mmseg.apis import init_model

import en_seg  # noqa: F401  (registers EN, SN and the weights-only checkpoint loading)
from en_seg.checkpoint import CheckpointError
from en_seg.utils.norm_cfg_check import check_norm_cfgs
from en_seg.utils.onnx_export import (INSTALL_HINT, SegmentorLogits, export_onnx,
                                      missing_packages, onnxruntime_logits)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a segmentor to ONNX (en-seg)')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint',
                        help="checkpoint file written by tools/train.py, or 'none' for the "
                             "config's random initialisation")
    parser.add_argument('out', help='the ONNX file to write')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help="the input's height and width (default: the config's "
                             'model.data_preprocessor.size, its crop size)')
    parser.add_argument('--dynamic', action='store_true',
                        help='leave batch size, height and width of the graph free')
    parser.add_argument('--dynamo', action=argparse.BooleanOptionalAction, default=True,
                        help="torch's torch.export-based exporter (default) or, with "
                             '--no-dynamo, the TorchScript-based one')
    parser.add_argument('--opset', type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument('--atol', type=float, default=1e-4,
                        help='absolute tolerance of the onnxruntime check (default: 1e-4)')
    parser.add_argument('--rtol', type=float, default=1e-3,
                        help='tolerance relative to the largest logit (default: 1e-3)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. model.decode_head.num_classes=19')
    return parser.parse_args()


def input_shape(cfg: Config, shape: Optional[Sequence[int]]) -> Tuple[int, int]:
    """--shape, or else the config's crop size."""
    if shape is not None:
        return tuple(shape)
    size = cfg.model.get('data_preprocessor', {}).get('size')
    if size is None:
        raise SystemExit('the config sets no model.data_preprocessor.size: give the input '
                         'size with --shape H W')
    return tuple(size)


def main() -> None:
    args = parse_args()
    missing = missing_packages(args.dynamo)
    if missing:
        raise SystemExit(f'tools/export_onnx.py needs {", ".join(missing)}: {INSTALL_HINT}')
    if args.checkpoint.lower() != 'none' and not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint {args.checkpoint} does not exist')

    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    try:
        check_norm_cfgs(cfg)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    height, width = input_shape(cfg, args.shape)
    checkpoint = None if args.checkpoint.lower() == 'none' else args.checkpoint
    try:
        segmentor = init_model(cfg, checkpoint, device='cpu')
    except CheckpointError as error:
        raise SystemExit(str(error)) from None
    except KeyError as error:
        if error.args != ('meta',):
            raise
        raise SystemExit(f"checkpoint {checkpoint} has no 'meta' entry, which mmseg's "
                         "init_model reads: save it as tools/train.py does, or as "
                         "{'meta': {}, 'state_dict': ...}") from None
    model = SegmentorLogits(segmentor).eval()

    generator = torch.Generator().manual_seed(0)
    # A dynamic dimension is traced at a size other than 1, which torch.export would fix.
    sample = torch.randn(2 if args.dynamic else 1, 3, height, width, generator=generator)
    exporter = 'dynamo' if args.dynamo else 'TorchScript'
    print(f'exporting {args.config} ({checkpoint or "random initialisation"}) at '
          f'{tuple(sample.shape)}{", N, H, W dynamic" if args.dynamic else ""} with the '
          f'{exporter} exporter', flush=True)
    export_onnx(model, sample, args.out, dynamo=args.dynamo, dynamic=args.dynamic,
                opset=args.opset)
    print(f'wrote {args.out} ({osp.getsize(args.out) / 2**20:.1f} MiB)')

    checks = [sample]
    if args.dynamic:
        # Another batch size and image size than the traced ones.
        checks.append(torch.randn(1, 3, height + 32, width + 32, generator=generator))
    failed = False
    for inputs, actual in zip(checks, onnxruntime_logits(args.out, *checks)):
        with torch.no_grad():
            expected = model(inputs)
        difference = (actual - expected).abs().max().item()
        tolerance = args.atol + args.rtol * expected.abs().max().item()
        within = difference <= tolerance  # False for a NaN difference too
        print(f'onnxruntime vs PyTorch at {tuple(inputs.shape)}: max abs difference '
              f'{difference:.3g} (tolerance {tolerance:.3g}) {"OK" if within else "FAILED"}')
        failed |= not within
    if failed:
        raise SystemExit(f'{args.out} does not reproduce the PyTorch model within the '
                         'tolerance: onnxruntime computed other logits (raise --atol / '
                         '--rtol only if the difference is rounding)')


if __name__ == '__main__':
    main()
