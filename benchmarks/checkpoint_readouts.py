"""Read-outs of one Fashion-MNIST checkpoint: full-bank kNN k=20 of the online encoder, its EMA
target, the online encoder's layer3 pooled (layer4 dropped) and the online encoder with its
BatchNorm statistics re-estimated on 10k clean train images; with ``--crops``, the online
encoder, the same network at its random init and raw pixels under the standard evaluation crop
(resize by 256/224, center crop) and on the images as they are (ratio 1).

    python benchmarks/checkpoint_readouts.py runs/fmnist_cpu1h/last.pt --json readouts.json
    python benchmarks/checkpoint_readouts.py runs/fmnist_quick/last.pt --crops
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
from torch import nn

from byol.checkpoint import load_backbone
from byol.data import open_source
from byol.eval.features import extract_features
from byol.eval.knn import knn_classify
from byol.eval.transforms import eval_transform

FMNIST = "/usr/share/datasets/fashion-mnist"


def knn20(backbone: nn.Module, cfg, train, test, resize_ratio: float = 256 / 224) -> float:
    a = cfg.augment
    kw = dict(image_size=a.image_size, mean=a.mean, std=a.std, progress=False, batch_size=1024,
              resize_ratio=resize_ratio)
    f1 = extract_features(backbone, train, **kw)["pooled"]
    f2 = extract_features(backbone, test, **kw)["pooled"]
    return knn_classify(f1, train.labels, f2, test.labels, ks=(20,))["k=20"]["top1"]


def reestimate_bn(backbone: nn.Module, cfg, train, n: int = 10000, seed: int = 0) -> nn.Module:
    """A copy whose BatchNorm running statistics are the plain average over ``n`` train images
    under the evaluation crop (train mode, no gradients)."""
    net = copy.deepcopy(backbone)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    idx = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))[:n]
    a = cfg.augment
    x = eval_transform(train.images[idx], a.image_size, a.mean, a.std)
    net.train()
    with torch.no_grad():
        for i in range(0, len(x), 256):
            net(x[i : i + 256])
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default=FMNIST, help="the Fashion-MNIST IDX folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--crops", action="store_true",
                    help="instead: byol / random init / raw pixels under both evaluation crops")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = open_source("fashion_mnist", args.data, "train")
    test = open_source("fashion_mnist", args.data, "test")
    online, cfg = load_backbone(args.checkpoint, "online")
    if args.crops:
        out = crops(online, cfg, train, test)
    else:
        out = readouts(args.checkpoint, online, cfg, train, test)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


def crops(online: nn.Module, cfg, train, test) -> dict[str, float]:
    from byol.eval.features import PixelBackbone
    from byol.models import build_byol

    torch.manual_seed(cfg.train.seed)
    nets = {"byol": online, "random init": build_byol(cfg.model).backbone,
            "raw pixels": PixelBackbone(cfg.model.in_chans)}
    return {f"{who}, {name}": knn20(net, cfg, train, test, ratio)
            for name, ratio in (("standard crop", 256 / 224), ("as they are", 1.0))
            for who, net in nets.items()}


def readouts(path: str, online: nn.Module, cfg, train, test) -> dict[str, float]:
    out = {}
    out["online"] = knn20(online, cfg, train, test)
    out["target"] = knn20(load_backbone(path, "target")[0], cfg, train, test)
    if hasattr(online, "layer4"):
        cut = copy.deepcopy(online)
        cut.layer4 = nn.Identity()
        out["online_layer3"] = knn20(cut, cfg, train, test)
    out["online_bn_reestimated"] = knn20(reestimate_bn(online, cfg, train), cfg, train, test)
    return out


if __name__ == "__main__":
    main()
