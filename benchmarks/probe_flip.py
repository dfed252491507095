"""The fast linear probe with the paper's flip augmentation: does it read more of the features?

The BYOL paper trains its linear classifier on random crops and flips of the training images;
the library's fast probe (``byol eval linear``, ``--mode features``) caches one view of each
image, the evaluation crop. This script reads a checkpoint's features of the Fashion-MNIST
training images as they are and mirrored left-right, and fits the fast probe (lr sweep on a
held-out 10% of the training images, drawn by image) on the first view alone (the protocol),
and on both views (``train_views``); the 10,000 test images are read once, as they are.

    python benchmarks/probe_flip.py runs/fmnist_cpu1h/last.pt [more checkpoints]
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    from byol.data.formats import read_mnist_like
    from byol.eval.features import extract_features
    from byol.eval.linear import linear_probe_features
    from byol.eval.loading import load_eval_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=50)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = read_mnist_like("fashion_mnist", args.data, "train", 0)
    test = read_mnist_like("fashion_mnist", args.data, "test", 0)
    print("| checkpoint | one view (the protocol) | lr | with the mirror images | lr |")
    print("|---|---|---|---|---|")
    for ck in args.checkpoints:
        m = load_eval_model(ck)

        def feats(images: torch.Tensor, m=m) -> torch.Tensor:
            return extract_features(m.backbone, images, image_size=m.image_size, mean=m.mean,
                                    std=m.std, progress=False)["pooled"]

        ftr, fte = feats(train.images), feats(test.images)
        fflip = feats(train.images.flip(-1))
        one = linear_probe_features(ftr, train.labels, fte, test.labels, epochs=args.epochs)
        two = linear_probe_features(ftr, train.labels, fte, test.labels, epochs=args.epochs,
                                    train_views=[fflip])
        print(f"| {ck} | {one['top1']:.2f} | {one['lr']:g} | {two['top1']:.2f} | "
              f"{two['lr']:g} |", flush=True)
        print(json.dumps({"checkpoint": ck, "one": one, "flip": two}), flush=True)


if __name__ == "__main__":
    main()
