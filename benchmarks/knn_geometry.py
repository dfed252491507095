"""What the kNN probe leaves unread: the same features, centred or standardised first.

The kNN probe (k=20, T=0.07, cosine similarity of the pooled backbone features) reads a
network's features as they are. Pooled ResNet features follow a ReLU, so they are all
non-negative and share a large common direction, which every cosine similarity includes. This
diagnostic scores the Fashion-MNIST test images three ways with the library's own evaluation
crop and kNN: as they are (the protocol, reported everywhere else), centred by the mean of the
bank (the 60k training images' features), and standardised per dimension by the bank's mean
and standard deviation. The statistics come from the training images only; the test images are
scored once. Not a protocol: a measure of how much the cosine geometry hides
(docs/RESULTS.md, tenth pass).

    python benchmarks/knn_geometry.py runs/fmnist_cpu1h/last.pt [more checkpoints]
"""

from __future__ import annotations

import argparse

import torch


@torch.no_grad()
def features(backbone, images: torch.Tensor, mean, std, batch: int = 1000) -> torch.Tensor:
    from byol.eval.transforms import eval_transform

    out = [backbone(eval_transform(images[i:i + batch], images.shape[-1], mean, std)).flatten(1)
           for i in range(0, len(images), batch)]
    return torch.cat(out).float()


def main() -> None:
    from byol.api import load_backbone
    from byol.data.formats import read_mnist_like
    from byol.eval.knn import knn_classify

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = read_mnist_like("fashion_mnist", args.data, "train", 0)
    test = read_mnist_like("fashion_mnist", args.data, "test", 0)
    xtr, ytr, xte, yte = train.images, train.labels, test.images, test.labels
    print("| checkpoint | features | as they are (the protocol) | centred | standardised |")
    print("|---|---|---|---|---|")
    for ck in args.checkpoints:
        aug = torch.load(ck, map_location="cpu", weights_only=True)["config"]["augment"]
        bb = load_backbone(ck, format="byol").eval()
        ftr = features(bb, xtr, aug["mean"], aug["std"])
        fte = features(bb, xte, aug["mean"], aug["std"])
        mu, sd = ftr.mean(0), ftr.std(0).clamp_min(1e-6)  # the bank's statistics only

        def top1(a, b):
            return knn_classify(a, ytr, b, yte, ks=(20,), temperature=0.07)["k=20"]["top1"]

        row = [top1(ftr, fte), top1(ftr - mu, fte - mu), top1((ftr - mu) / sd, (fte - mu) / sd)]
        print(f"| {ck} | {ftr.shape[1]} | " + " | ".join(f"{v:.2f}" for v in row) + " |",
              flush=True)


if __name__ == "__main__":
    main()
