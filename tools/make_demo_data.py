"""Write a tiny synthetic dataset in the real ADE20K or Cityscapes directory layout.

Example::

    python tools/make_demo_data.py ade20k data/demo/ade20k --num-train 8 --num-val 4
"""
import argparse

from en_seg.utils.synthetic_data import write_ade20k_layout, write_cityscapes_layout

WRITERS = {'ade20k': write_ade20k_layout, 'cityscapes': write_cityscapes_layout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('layout', choices=sorted(WRITERS))
    parser.add_argument('root', help='dataset directory to write')
    parser.add_argument('--num-train', type=int, default=8)
    parser.add_argument('--num-val', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    root = WRITERS[args.layout](args.root, num_train=args.num_train, num_val=args.num_val,
                                seed=args.seed)
    print(f'wrote a {args.layout}-layout dataset to {root}')


if __name__ == '__main__':
    main()
