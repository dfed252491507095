"""The public face: the README's training loop runs with the names ``byol`` exports."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import byol


def test_readme_loop_trains_with_public_names():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"### From Python.*?```python\n(.*?)```", text, re.S).group(1)
    assert "import" in code and all(
        name in byol.__all__ for name in re.search(r"from byol import (.*)", code)[1].split(", "))
    # the same loop, shrunk: a narrow small-stem ResNet-18 and tiny heads
    code = code.replace('build_backbone("resnet50")',
                        'build_backbone("resnet18", small_stem=True, width=8)')
    code = code.replace("proj_hidden_dim=4096, proj_dim=256, pred_hidden_dim=4096",
                        "proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    scope["augment"].size = 16
    torch.manual_seed(0)
    batches = [torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8) for _ in range(2)]
    before = [p.detach().clone() for p in scope["model"].target.parameters()]
    scope["train"](batches, steps=2)
    after = list(scope["model"].target.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.isfinite(p).all() for p in after)
