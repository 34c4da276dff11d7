"""python -m i2i.data.synthetic DATASET OUT_DIR [options]: write a procedural dataset (afhq, cityscapes, nirvis)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

from i2i.data.synthetic import ANIMALS, make_afhq, make_cityscapes, make_nirvis


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m i2i.data.synthetic", description="Write a procedural dataset in a real dataset's layout.")
    sets = parser.add_subparsers(dest="dataset", required=True)
    afhq = sets.add_parser("afhq", help="three animal-face domains in the AFHQ layout")
    afhq.add_argument("out_dir", type=Path)
    afhq.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    afhq.add_argument("--n-train", type=int, default=300, help="training images per domain (default 300)")
    afhq.add_argument("--n-val", type=int, default=30, help="validation images per domain (default 30)")
    afhq.add_argument("--seed", type=int, default=0)
    afhq.add_argument("--domains", nargs="+", default=list(ANIMALS), choices=list(ANIMALS))
    cityscapes = sets.add_parser("cityscapes", help="street scenes in the Cityscapes layout (real labelIds)")
    cityscapes.add_argument("out_dir", type=Path)
    cityscapes.add_argument("--width", type=int, default=256, help="image width in pixels (default 256)")
    cityscapes.add_argument("--height", type=int, default=128, help="image height in pixels (default 128)")
    cityscapes.add_argument("--n-train", type=int, default=200, help="training frames (default 200)")
    cityscapes.add_argument("--n-val", type=int, default=40, help="validation frames (default 40)")
    cityscapes.add_argument("--seed", type=int, default=0)
    nirvis = sets.add_parser("nirvis", help="NIR/VIS faces in the CASIA NIR-VIS 2.0 layout with protocols")
    nirvis.add_argument("out_dir", type=Path)
    nirvis.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    nirvis.add_argument("--identities", type=int, default=80, help="number of subjects (default 80)")
    nirvis.add_argument("--folds", type=int, default=2, help="protocol folds 1..N, plus dev (default 2)")
    nirvis.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.dataset == "afhq":
            root = make_afhq(args.out_dir, img_size=args.size, n_train=args.n_train, n_val=args.n_val,
                             seed=args.seed, domains=args.domains)
        elif args.dataset == "cityscapes":
            root = make_cityscapes(args.out_dir, n_train=args.n_train, n_val=args.n_val, width=args.width,
                                   height=args.height, seed=args.seed)
        else:
            root = make_nirvis(args.out_dir, n_identities=args.identities, img_size=args.size, n_folds=args.folds,
                               seed=args.seed)
    except ValueError as error:  # DatasetError included: a clear one-line message, no traceback
        parser.exit(2, f"error: {error}\n")
    names = {"afhq": "AFHQ", "cityscapes": "Cityscapes", "nirvis": "CASIA NIR-VIS 2.0"}
    print(f"synthetic {names[args.dataset]} set ready at {root} ({time.perf_counter() - start:.1f} s)")
    return root


if __name__ == "__main__":
    main()
