"""What the kNN probe leaves unread: the same features, centred or standardised first.

The kNN probe (k=20, T=0.07, cosine similarity of the pooled backbone features) reads a
network's features as they are. Pooled ResNet features follow a ReLU, so they are all
non-negative and share a large common direction, which every cosine similarity includes. This
diagnostic scores the Fashion-MNIST test images three ways with the library's own evaluation
crop and kNN: as they are (the protocol, reported everywhere else), centred by the mean of the
bank (the 60k training images' features), and standardised per dimension by the bank's mean
and standard deviation. The statistics come from the training images only; the test images are
scored once. Not a protocol: a measure of how much the cosine geometry hides
(docs/RESULTS.md, tenth pass). With ``--whiten S ...`` it adds the features ZCA-whitened with
shrinkage S (model.feature_whiten's layer, fitted as the engine fits it: on 10,000 training
images drawn from the run's seed; a checkpoint that has its own fitted whitening is read before
it); ``--random`` and ``--pixels`` add the same readings for each checkpoint's network at random
init and for raw pixels (eleventh pass).

    python benchmarks/knn_geometry.py runs/fmnist_cpu1h/last.pt [more checkpoints]
    python benchmarks/knn_geometry.py CKPT --whiten 0.1 0.01 0.001 --random --pixels
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
    from byol.models import build_backbone
    from byol.models.whitening import WHITEN_IMAGES, FeatureWhitening

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--whiten", type=float, nargs="*", default=[],
                    help="shrinkages of a ZCA whitening to add as columns")
    ap.add_argument("--random", action="store_true", help="rows for the networks at random init")
    ap.add_argument("--pixels", action="store_true", help="a row for raw pixels")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = read_mnist_like("fashion_mnist", args.data, "train", 0)
    test = read_mnist_like("fashion_mnist", args.data, "test", 0)
    xtr, ytr, xte, yte = train.images, train.labels, test.images, test.labels
    heads = ["as they are (the protocol)", "centred", "standardised"] + [
        f"whitened {w:g}" for w in args.whiten]
    print("| checkpoint | features | " + " | ".join(heads) + " |")
    print("|---" * (len(heads) + 2) + "|")

    def row(name, fn, mean, std, seed):
        ftr, fte = features(fn, xtr, mean, std), features(fn, xte, mean, std)
        mu, sd = ftr.mean(0), ftr.std(0).clamp_min(1e-6)  # the bank's statistics only

        def top1(a, b):
            return knn_classify(a, ytr, b, yte, ks=(20,), temperature=0.07)["k=20"]["top1"]

        vals = [top1(ftr, fte), top1(ftr - mu, fte - mu), top1((ftr - mu) / sd, (fte - mu) / sd)]
        g = torch.Generator().manual_seed(seed)  # the engine's fit: 10,000 training images
        idx = torch.randperm(len(ftr), generator=g)[:WHITEN_IMAGES].sort().values
        for w in args.whiten:
            layer = FeatureWhitening(ftr.shape[1], w)
            layer.fit(ftr[idx])
            vals.append(top1(layer(ftr), layer(fte)))
        print(f"| {name} | {ftr.shape[1]} | " + " | ".join(f"{v:.2f}" for v in vals) + " |",
              flush=True)

    for ck in args.checkpoints:
        cfg = torch.load(ck, map_location="cpu", weights_only=True)["config"]
        aug, m, seed = cfg["augment"], cfg["model"], cfg["train"]["seed"]
        bb = load_backbone(ck, format="byol").eval()
        if getattr(bb, "feat_whiten", None) is not None and bb.feat_whiten.is_fitted:
            # a checkpoint of model.feature_whiten: read the features before its fitted map
            # (the --whiten columns refit it; "whitened S" with the run's S is its own reading)
            bb.feat_whiten.is_fitted = False
        row(ck, bb, aug["mean"], aug["std"], seed)
        if args.random:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                rnd = build_backbone(m["arch"], m["in_chans"], m["small_stem"], m["width"],
                                     m.get("stem_stride", 1), m.get("last_stage_width", 0),
                                     m.get("feature_bn", False)).eval()
            row(f"{ck} at random init", rnd, aug["mean"], aug["std"], seed)
    if args.pixels:
        row("raw pixels", lambda x: x, (0.5,), (0.25,), 0)


if __name__ == "__main__":
    main()
