"""Your own backbone (torchvision or timm) in the BYOL module, with your own training loop.

    python examples/custom_backbone.py --steps 100 --image-size 64
    python examples/custom_backbone.py --timm convnext_atto --steps 100

Any network that maps images to a [batch, features] tensor works: give it a ``num_features``
attribute and pass it to ``byol.BYOL``. The images here are random uint8 tensors so the script
runs anywhere; feed your own DataLoader of uint8 [B, C, H, W] batches instead.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from byol import BYOL, LARS, BYOLAugment, tau_schedule, warmup_cosine
from byol.config import AugmentConfig


def make_backbone(timm_name: str | None) -> nn.Module:
    if timm_name:
        import timm

        # num_classes=0: pooled features; timm models carry num_features already
        return timm.create_model(timm_name, pretrained=False, num_classes=0)
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.num_features = net.fc.in_features
    net.fc = nn.Identity()  # pooled 512-d features
    return net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timm", help="a timm model name instead of torchvision's resnet18")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="custom_backbone.pth", help="where to save the backbone")
    args = ap.parse_args()
    dev = torch.device(args.device)

    model = BYOL(make_backbone(args.timm), proj_hidden_dim=1024, proj_dim=128,
                 pred_hidden_dim=1024).to(dev)
    augment = BYOLAugment(AugmentConfig(image_size=args.image_size))
    optimizer = LARS(model.online_parameters(), lr=0.0, momentum=0.9, weight_decay=1e-6)
    peak_lr, warmup = 0.3 * args.batch / 256, max(1, args.steps // 10)
    g = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        images = torch.randint(0, 256, (args.batch, 3, args.image_size + 8,
                                        args.image_size + 8), dtype=torch.uint8, generator=g)
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, args.steps, warmup, peak_lr)
        v1, v2 = augment(images.to(dev))
        loss, _ = model(v1, v2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_target(tau_schedule(step, args.steps, tau_base=0.99))
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f}")
    torch.save(model.online.backbone.state_dict(), args.out)
    print(f"saved the pretrained backbone to {args.out}")


if __name__ == "__main__":
    main()
