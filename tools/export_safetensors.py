"""Write a trained model's weights as a ``.safetensors`` file, the format to share them in.

The file holds the checkpoint's ``state_dict`` (weights and buffers, running statistics
included) and, in its header, the dataset's ``meta['dataset_meta']`` (class names,
palette) as JSON; not the optimizer, message hub or schedulers. Safetensors has no code
and a bounded parser: whoever loads it runs nothing of the sender's. Every entry point
that takes a checkpoint path takes the file (en_seg.checkpoint)::

    python tools/export_safetensors.py work_dirs/run/iter_80000.pth
    python tools/test.py CONFIG work_dirs/run/iter_80000.safetensors

The checkpoint is read as any other (weights-only, within en_seg.checkpoint.LoadLimits).
"""
import argparse
import os.path as osp

import en_seg  # noqa: F401  (registers the weights-only checkpoint loading)
from en_seg.checkpoint import CheckpointError, load_from_local, save_safetensors


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write a checkpoint's weights as safetensors (en-seg)")
    parser.add_argument('checkpoint', help='checkpoint file written by tools/train.py')
    parser.add_argument('out', nargs='?',
                        help='the file to write (default: the checkpoint\'s path with the '
                             'suffix .safetensors)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out = args.out or osp.splitext(args.checkpoint)[0] + '.safetensors'
    if osp.abspath(out) == osp.abspath(args.checkpoint):
        raise SystemExit(f'{out} is the checkpoint itself: name another file to write')
    try:
        checkpoint = load_from_local(args.checkpoint, map_location='cpu')
    except CheckpointError as error:
        raise SystemExit(str(error)) from None
    if not isinstance(checkpoint, dict):
        raise SystemExit(f'checkpoint {args.checkpoint} holds no dict of weights')
    state_dict = checkpoint.get('state_dict', checkpoint)
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
    try:
        save_safetensors(state_dict, out, meta.get('dataset_meta'))
    except TypeError as error:
        raise SystemExit(f'checkpoint {args.checkpoint}: {error}') from None
    print(f'wrote {out}: {len(state_dict)} tensors'
          f'{", with dataset_meta" if meta.get("dataset_meta") else ""}')


if __name__ == '__main__':
    main()
