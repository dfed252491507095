"""Your own folder of images -> BYOL pretraining with no config -> embeddings -> neighbours.

    python examples/own_folder.py my_images/ runs/mine            # 10 minutes on a CPU
    python examples/own_folder.py my_images/ runs/mine --steps 50  # a quick look

The reader, image size, normalisation statistics and recipe are chosen from the data and
printed; RUN/config.yaml keeps them. Then every image is embedded and the nearest neighbours of
the first few images are printed.
"""

from __future__ import annotations

import argparse

import numpy as np

import byol


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="folder of images (class sub-folders optional) or a .npz")
    ap.add_argument("out", help="run folder")
    ap.add_argument("--steps", type=int, default=0, help="stop after N steps (0: the recipe's)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    overrides = {"log__progress": False}
    if args.steps:
        overrides["train__max_steps"] = args.steps
    result = byol.pretrain(data=args.data, out=args.out, device=args.device, **overrides)
    print(f"checkpoint {result['last']} after {result['steps']} steps")

    emb = byol.embed(result["last"], args.data, f"{args.out}/embeddings.npz",
                     device=args.device, progress=False)
    x = emb["embeddings"] / np.linalg.norm(emb["embeddings"], axis=1, keepdims=True)
    sims = x @ x.T
    for i in range(min(3, len(x))):
        order = [j for j in np.argsort(-sims[i]) if j != i][:3]
        print(emb["paths"][i], "->", ", ".join(emb["paths"][j] for j in order))
    print(f"{len(x)} embeddings of {x.shape[1]} dims in {', '.join(emb['files'])}")


if __name__ == "__main__":
    main()
