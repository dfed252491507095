"""``byol embed``: embeddings of every image of a folder or array file."""

from __future__ import annotations

import argparse
from typing import Any

from .common import RAW, command

EPILOG = """examples:
  byol embed runs/mine/last.pt --data my_images/ --out runs/mine/embeddings.npz
  byol embed runs/mine/last.pt --data train.npz --head projector --device cuda
"""


def cmd_embed(args: argparse.Namespace) -> int:
    from ..embedding import embed

    res = embed(args.checkpoint, args.data, args.out, source=args.source, split=args.split,
                head=args.head, which=args.which, batch_size=args.batch_size,
                device=args.device, precision=args.precision, progress=not args.quiet,
                num_workers=args.workers, limit=args.limit)
    n, dim = res["embeddings"].shape
    print(f"embedded {n} images ({dim} dims, {args.head}); wrote {', '.join(res['files'])}")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("embed", help="write embeddings of every image of a folder or array",
                       description="Embeddings (pooled backbone features, or the projector's) "
                       "of every image, with file paths and labels, as .npz (and Parquet when "
                       "pyarrow is installed).", epilog=EPILOG, formatter_class=RAW)
    p.add_argument("checkpoint", help="byol checkpoint (RUN/last.pt)")
    p.add_argument("--data", required=True, help="folder or file of images (reader detected)")
    p.add_argument("--source", help="force the reader (folder, unlabeled_folder, numpy, ...)")
    p.add_argument("--split", default="train", help="split of a dataset with splits")
    p.add_argument("--out", "-o", default="embeddings.npz", help="output .npz (default "
                   "embeddings.npz; Parquet next to it with pyarrow)")
    p.add_argument("--head", choices=("backbone", "projector"), default="backbone",
                   help="pooled backbone features (default) or the projector's output")
    p.add_argument("--which", choices=("online", "target"), default="online")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (folders)")
    p.add_argument("--limit", type=int, default=0, help="the first N images only (0: all)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    command(p, cmd_embed, "byol embed")
