"""Pretrain -> ``byol export --format torchvision`` -> fine-tune in plain torchvision.

    python examples/export_finetune.py my_labelled_images/ runs/ft
    python examples/export_finetune.py my_labelled_images/ runs/ft --steps 20 --epochs 1

The data is a folder with one sub-folder per class. Pretraining uses a stock ResNet-18 (width
64, the standard stem) so that the exported file loads into ``torchvision.models.resnet18``;
the fine-tuning below uses nothing from byol.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

import byol
from byol.weights.export import export_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="folder with one sub-folder per class")
    ap.add_argument("out", help="run folder")
    ap.add_argument("--steps", type=int, default=0, help="pretraining steps (0: the recipe's)")
    ap.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs")
    ap.add_argument("--size", type=int, default=64, help="image side")
    args = ap.parse_args()

    # 1. pretrain a stock ResNet-18 (byol pretrain --data DATA --set model.width=64 ...)
    overrides = {"model": {"arch": "resnet18", "width": 64, "small_stem": False},
                 "augment__image_size": args.size, "log__progress": False}
    if args.steps:
        overrides["train__max_steps"] = args.steps
    result = byol.pretrain(data=args.data, out=args.out, quiet=True, **overrides)

    # 2. export (byol export RUN/last.pt --format torchvision)
    pth = Path(args.out) / "resnet18_byol.pth"
    export_checkpoint(result["last"], pth, "torchvision")

    # 3. plain torchvision from here on
    net = torchvision.models.resnet18(weights=None)
    net.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
    aug = byol.load_checkpoint(result["last"])["config"]["augment"]  # the pretraining's stats
    gray = len(aug["mean"]) == 1  # a gray model was exported for 3 copies of the gray image
    data = torchvision.datasets.ImageFolder(args.data, transforms.Compose([
        *([transforms.Grayscale(3)] if gray else []), transforms.Resize(args.size),
        transforms.CenterCrop(args.size), transforms.ToTensor(),
        transforms.Normalize(aug["mean"] * (3 if gray else 1), aug["std"] * (3 if gray else 1))]))
    net.fc = nn.Linear(net.fc.in_features, len(data.classes))
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()
    for epoch in range(args.epochs):
        correct = total = 0
        for x, y in loader:
            logits = net(x)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        print(f"fine-tune epoch {epoch + 1}: loss {loss.item():.4f}, train accuracy "
              f"{100 * correct / total:.1f}%")
    torch.save(net.state_dict(), Path(args.out) / "resnet18_finetuned.pth")
    print(f"fine-tuned weights in {Path(args.out) / 'resnet18_finetuned.pth'}")


if __name__ == "__main__":
    main()
