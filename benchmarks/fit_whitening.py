"""Fit ``model.feature_whiten`` on a finished checkpoint, as ``byol pretrain`` does at its end.

The eleventh pass's hour (docs/RESULTS.md) was pretrained before the option existed, with the
pooled-feature BatchNorm through a throwaway switch: this applies the engine's own fit
(:func:`byol.models.whitening.fit_feature_whitening` on the ``WHITEN_IMAGES`` training images
drawn from ``train.seed``, online and target backbones) to such a checkpoint and writes a new
one whose config has the option set. ``model.feature_bn`` is read from the state keys.

    python benchmarks/fit_whitening.py runs/hour/last.pt runs/hour_white/last.pt 0.01
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from byol.checkpoint import atomic_save, load_checkpoint
    from byol.config import config_from_dict
    from byol.data.feeders import build_feeder
    from byol.models.byol import build_byol
    from byol.models.whitening import WHITEN_IMAGES, fit_feature_whitening

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("shrink", type=float, help="model.feature_whiten, e.g. 0.01")
    args = ap.parse_args()
    ck = load_checkpoint(args.checkpoint)
    m = ck["config"]["model"]
    m["feature_bn"] = any(".feat_norm." in k for k in ck["model"])
    m["feature_whiten"] = args.shrink
    cfg = config_from_dict(ck["config"], where=args.checkpoint)
    model = build_byol(cfg.model)
    missing, unexpected = model.load_state_dict(ck["model"], strict=False)
    if unexpected or not all(".feat_whiten." in k for k in missing):
        raise SystemExit(f"{args.checkpoint}: state does not fit: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    source, _ = build_feeder(cfg, torch.device("cpu"))
    a = cfg.augment
    t0 = time.perf_counter()
    for net in (model.online.backbone, model.target.backbone):
        n = fit_feature_whitening(net, source, images=WHITEN_IMAGES, seed=cfg.train.seed,
                                  image_size=a.image_size, mean=a.mean, std=a.std,
                                  device=torch.device("cpu"))
    print(f"fitted on the pooled features of {n} training images in "
          f"{time.perf_counter() - t0:.1f} s")
    ck["model"] = model.state_dict()
    atomic_save(ck, args.out)


if __name__ == "__main__":
    main()
