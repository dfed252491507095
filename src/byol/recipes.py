"""The training recipe of a run without a config: one pure function, retuned in one place.

:func:`choose_recipe` maps (device, dataset size, image size, channels, labels) to ``--set``
overrides and one reason per choice. It reads no files and no global state, so the rules can be
tested, printed and retuned on their own:

* **CPU and small data** (< :data:`SMALL_DATA` images): the ``fmnist_quick`` preset's network
  and optimiser as they stood before its sixth pass (a width-16 ResNet-10, 512/128 heads, LARS
  at base lr 1.0 with trust coefficient 0.02, tau 0.9, batch 64; the preset has since moved to
  stride 1, batch 128, tau 0.99 and 50-100% crops, which won on Fashion-MNIST and generated
  shapes but lost 15 kNN points on generated textures at equal wall time), bounded by ``train.time_budget`` (:data:`CPU_BUDGET`)
  instead of a number of epochs, so the run ends in bounded time on any dataset; the small
  stem's conv at stride 2 from :data:`STRIDE2_FROM` px (a quarter of the compute per image, so
  several epochs fit the budget; the last stage still sees at least 2x2).
* **Otherwise** (a GPU, or a large dataset): the ``fmnist_full`` settings (a width-64 ResNet-18,
  4096/256 heads, LARS at 1.0, 200 epochs, batch 512); ResNet-50 with the paper's lr, decay
  and tau when the images are >= :data:`LARGE_SIDE` px and there are many of them.
* **Image size**: the small-image stem (3x3 stride-1 conv, no max-pool) below
  :data:`SMALL_STEM_BELOW` px, crops of at least 20% of the image and bilinear resampling there
  too; the paper's blur (kernel 10% of the side) down to :data:`NO_BLUR_BELOW` px (the recipe
  study: removing it at 28 px cost 3.8 kNN points), none below (a 3-px kernel at sigma up to 2
  erases most of a tiny image).
* **Labels**: the kNN monitor runs on a bounded bank and query set so the end of the run can say
  whether pretraining beat the same network at random init.
"""

from __future__ import annotations

import math
from typing import Any

SMALL_DATA = 200_000  # images: below this a CPU gets the fast recipe
CPU_BUDGET = "10m"  # train.time_budget of the CPU recipe
SMALL_STEM_BELOW = 64  # px
NO_BLUR_BELOW = 24  # px
STRIDE2_FROM = 28  # px: the CPU recipe's small stem at stride 2 from here to SMALL_STEM_BELOW
LARGE_SIDE = 128  # px: ResNet-50 from here on large data
WARMUP_STEPS = 500  # optimiser steps of lr warmup in the CPU recipe: about a tenth of the steps
# its budget buys on a 2-core CPU (a shorter warm-up let one fmnist_quick seed in three fall away)
CHECKPOINT_STEPS = 1000  # optimiser steps between checkpoints (rounded to whole epochs)


def _batch_for(num_images: int, wanted: int) -> int:
    """``wanted``, or the largest power of two that leaves at least two steps per epoch."""
    if num_images >= 2 * wanted:
        return wanted
    return max(2, 2 ** int(math.log2(max(2, num_images // 2))))


def choose_recipe(device_type: str, num_images: int, image_size: int, channels: int,
                  labeled: bool = False) -> tuple[dict[str, Any], list[str]]:
    """``(overrides, reasons)``: dotted config keys -> values, and why, in words."""
    o: dict[str, Any] = {}
    why: list[str] = []
    cpu_small = device_type == "cpu" and num_images < SMALL_DATA
    o["model.in_chans"] = channels
    if cpu_small:
        batch = _batch_for(num_images, 64)
        steps_per_epoch = max(1, num_images // batch)
        o.update({
            "model.arch": "resnet10", "model.width": 16, "model.proj_hidden_dim": 512,
            "model.proj_dim": 128, "model.pred_hidden_dim": 512, "optim.name": "lars",
            "optim.base_lr": 1.0, "optim.eta": 0.02, "optim.weight_decay": 1.0e-5,
            "optim.warmup_epochs": round(min(10.0, WARMUP_STEPS / steps_per_epoch), 3),
            "train.batch_size": batch, "train.tau_base": 0.9, "train.epochs": 1000,
            "train.time_budget": CPU_BUDGET,
        })
        why.append(f"CPU and {num_images} images (< {SMALL_DATA}): the fast CPU recipe "
                   f"(ResNet-10 width 16, its small stem at stride 2 at 28-63 px, LARS eta 0.02, "
                   f"tau 0.9), batch {batch}, ending after train.time_budget={CPU_BUDGET}")
    else:
        big = num_images >= SMALL_DATA and image_size >= LARGE_SIDE
        batch = _batch_for(num_images, 256 if big else 512)
        steps_per_epoch = max(1, num_images // batch)
        epochs = 200 if num_images < SMALL_DATA else 100
        if big:
            o.update({"model.arch": "resnet50", "model.width": 64, "optim.base_lr": 0.2,
                      "optim.weight_decay": 1.5e-6, "train.tau_base": 0.996})
        else:
            o.update({"model.arch": "resnet18", "model.width": 64, "optim.base_lr": 1.0,
                      "optim.weight_decay": 1.0e-5, "train.tau_base": 0.99})
        o.update({"model.proj_hidden_dim": 4096, "model.proj_dim": 256,
                  "model.pred_hidden_dim": 4096, "optim.name": "lars",
                  "optim.warmup_epochs": 10.0, "train.epochs": epochs, "train.batch_size": batch})
        where = "a GPU" if device_type != "cpu" else f"{num_images} images (a large dataset)"
        why.append(f"{where}: the GPU recipe ({o['model.arch']} width 64, 4096/256 heads, LARS "
                   f"base lr {o['optim.base_lr']}), {epochs} epochs of batch {batch}")
        if device_type == "cpu":
            why.append("this is slow on a CPU: bound it with --set train.time_budget=2h (or "
                       "fewer --epochs)")
    small = image_size < SMALL_STEM_BELOW
    o["model.small_stem"] = small
    stride2 = cpu_small and small and image_size >= STRIDE2_FROM
    o["model.stem_stride"] = 2 if stride2 else 1
    o["augment.interpolation"] = "bilinear" if small else "bicubic"
    scale = [0.2, 1.0] if small else [0.08, 1.0]
    for v in ("view1", "view2"):
        o[f"augment.{v}.crop_scale"] = scale
    why.append(f"{image_size} px images: " + ("the small-image stem" + (
        " at stride 2 (a quarter of the compute per image)" if stride2 else "")
        + ", crops of 20-100% of the image" if small else "the standard stem and crops"))
    if image_size < NO_BLUR_BELOW:
        o["augment.view1.blur_p"] = 0.0
        o["augment.view2.blur_p"] = 0.0
        why.append(f"no blur below {NO_BLUR_BELOW} px")
    save_every = max(1, CHECKPOINT_STEPS // steps_per_epoch)
    o["log.save_every"] = save_every
    if labeled:
        gpu = device_type != "cpu"
        # queries at most a fifth of the images: held out of the bank when there is no test set
        queries = min(2000 if gpu else 500, max(1, num_images // 5))
        o.update({"log.knn_every": 0, "log.knn_every_steps": 500 if gpu else 200,
                  "log.knn_bank": 10000 if gpu else 2000, "log.knn_queries": queries})
        why.append(f"labels found: kNN monitor every {o['log.knn_every_steps']} steps on "
                   f"{o['log.knn_bank']} bank / {o['log.knn_queries']} query images, from step 0 "
                   "(the random init) to the end")
    else:
        o.update({"log.knn_every": 0, "log.knn_every_steps": 0})
        why.append("no labels: no kNN monitor")
    return o, why
