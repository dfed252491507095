"""LARS against hand-computed numbers, parameter groups, learning-rate schedule, optimisers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_backbone
from torch import nn

from byol.config import OptimConfig
from byol.models import MLP, build_backbone
from byol.optim import (
    LARS,
    build_optimizer,
    scaled_lr,
    split_decay_groups,
    warmup_cosine,
)

# ------------------------------------------------------------------------------------------
# LARS: two steps written out by hand
# ------------------------------------------------------------------------------------------


def lars_reference_step(params: list[torch.Tensor], grads: list[torch.Tensor],
                        bufs: list[torch.Tensor], lr: float, momentum: float,
                        weight_decay: float, eta: float, adapt: bool) -> None:
    """The same LARS step, one parameter at a time, written as the formula reads ."""
    for w, g, buf in zip(params, grads, bufs):
        u = g + weight_decay * w
        if adapt:
            wn, un = torch.linalg.vector_norm(w), torch.linalg.vector_norm(u)
            if wn > 0 and un > 0:
                u = u * (eta * wn / un)
        buf.mul_(momentum).add_(u)
        w.sub_(lr * buf)


def _linear_2to1() -> nn.Linear:
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0]]))
        lin.bias.copy_(torch.tensor([0.5]))
    return lin


LR, MOM, WD, ETA = 0.5, 0.9, 0.1, 0.02
GRADS = [  # (weight grad, bias grad) per step
    (torch.tensor([[0.3, 0.4]]), torch.tensor([0.2])),
    (torch.tensor([[0.0, 0.5]]), torch.tensor([-0.1])),
]


def _hand_lars() -> tuple[list[float], float]:
    """Both steps of DeepMind's LARS in plain floats."""
    # step 1, weight: u = g + wd*w = [0.3, 0.4] + 0.1*[3, 4] = [0.6, 0.8], |u| = 1, |w| = 5
    # trust ratio eta*|w|/|u| = 0.02*5/1 = 0.1 -> u = [0.06, 0.08]; buf = u
    # w1 = [3, 4] - 0.5*[0.06, 0.08] = [2.97, 3.96]
    buf = [0.06, 0.08]
    w1 = [2.97, 3.96]
    # step 2, weight: u = [0, 0.5] + 0.1*[2.97, 3.96] = [0.297, 0.896]
    u = [0.297, 0.896]
    ratio = ETA * math.hypot(*w1) / math.hypot(*u)  # 0.02 * 4.95 / 0.943941...
    buf = [MOM * b + ratio * x for b, x in zip(buf, u)]
    w2 = [w - LR * b for w, b in zip(w1, buf)]
    # bias (excluded: no decay, no trust ratio): buf 0.2, b1 = 0.5 - 0.5*0.2 = 0.4;
    # buf = 0.9*0.2 - 0.1 = 0.08, b2 = 0.4 - 0.5*0.08 = 0.36
    return w2, 0.36


def test_lars_two_steps_equal_hand_computation_and_reference():
    lin = _linear_2to1()
    groups = split_decay_groups([lin], WD)
    opt = LARS(groups, lr=LR, momentum=MOM, eta=ETA)
    ref_w, ref_b = lin.weight.detach().clone(), lin.bias.detach().clone()
    bufs_w, bufs_b = torch.zeros_like(ref_w), torch.zeros_like(ref_b)
    w1_expected = torch.tensor([[2.97, 3.96]])
    for i, (gw, gb) in enumerate(GRADS):
        lin.weight.grad, lin.bias.grad = gw.clone(), gb.clone()
        opt.step()
        lars_reference_step([ref_w], [gw], [bufs_w], LR, MOM, WD, ETA, adapt=True)
        lars_reference_step([ref_b], [gb], [bufs_b], LR, MOM, 0.0, ETA, adapt=False)
        if i == 0:
            torch.testing.assert_close(lin.weight.detach(), w1_expected, rtol=0, atol=1e-6)
            assert lin.bias.item() == pytest.approx(0.4, abs=1e-6)
        torch.testing.assert_close(lin.weight.detach(), ref_w, rtol=0, atol=1e-6)
        torch.testing.assert_close(lin.bias.detach(), ref_b, rtol=0, atol=1e-6)
    w2, b2 = _hand_lars()
    torch.testing.assert_close(lin.weight.detach(), torch.tensor([w2]), rtol=0, atol=1e-6)
    assert lin.bias.item() == pytest.approx(b2, abs=1e-6)
    # the momentum buffer of the excluded bias is 0.08 after two steps
    assert opt.state[lin.bias]["momentum_buffer"].item() == pytest.approx(0.08, abs=1e-6)


def test_lars_zero_weight_norm_skips_trust_ratio():
    p = nn.Parameter(torch.zeros(3))
    opt = LARS([{"params": [p], "weight_decay": 0.0, "lars_exclude": False}], lr=1.0, eta=1e-3)
    p.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-1.0, 2.0, -0.5]))


def test_lars_matches_reference_on_tiny_network():
    torch.manual_seed(0)
    model = nn.Sequential(tiny_backbone(), MLP(64, 32, 16))
    ref = [p.detach().clone() for p in model.parameters()]
    groups = split_decay_groups([model], 1e-2)
    opt = LARS(groups, lr=0.7, momentum=0.9, eta=1e-3)
    excluded = {id(p) for p in groups[1]["params"]}
    bufs = [torch.zeros_like(p) for p in ref]
    for step in range(2):
        grads = [torch.randn_like(p) for p in model.parameters()]
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        opt.step()
        for p, r, g, b in zip(model.parameters(), ref, grads, bufs):
            ex = id(p) in excluded
            lars_reference_step([r], [g], [b], 0.7, 0.9, 0.0 if ex else 1e-2, 1e-3, not ex)
        for p, r in zip(model.parameters(), ref):
            torch.testing.assert_close(p.detach(), r, rtol=1e-5, atol=1e-6, msg=f"step {step}")


# ------------------------------------------------------------------------------------------
# parameter groups
# ------------------------------------------------------------------------------------------


def _expected_excluded(names: list[str]) -> set[str]:
    """Independent rule by name: ResNet BN (bn*, downsample.1) and the MLP's BN (index 1) and
    Linear biases."""
    out = set()
    for n in names:
        if n.startswith("0."):  # the ResNet
            last = n.split(".")[-2]
            if last.startswith("bn") or ".downsample.1." in n:
                out.add(n)
        else:  # the MLP: 1.0 = Linear, 1.1 = BN, 1.3 = Linear without bias
            if n.startswith("1.1.") or n == "1.0.bias":
                out.add(n)
    return out


def test_split_decay_groups_excludes_exactly_biases_and_norms():
    model = nn.Sequential(build_backbone("resnet18", width=8), MLP(64, 32, 16))
    named = dict(model.named_parameters())
    groups = split_decay_groups([model], 1e-6)
    assert len(groups) == 2
    regular, excluded = groups
    by_id = {id(p): n for n, p in named.items()}
    ex_names = {by_id[id(p)] for p in excluded["params"]}
    reg_names = {by_id[id(p)] for p in regular["params"]}
    assert ex_names == _expected_excluded(list(named))
    assert ex_names | reg_names == set(named) and not ex_names & reg_names
    # ResNet-18: 20 BatchNorms (bn1, 2 per block x 8, 3 downsample) x 2 + MLP BN 2 + 1 bias
    assert len(ex_names) == 43
    # 20 convs + 2 Linear weights
    assert len(reg_names) == 22
    assert "0.layer2.0.downsample.1.weight" in ex_names
    assert "0.layer2.0.downsample.1.bias" in ex_names
    assert "0.layer2.0.downsample.0.weight" in reg_names
    assert all(n.endswith("weight") for n in reg_names)
    assert regular["weight_decay"] == 1e-6 and regular["lars_exclude"] is False
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"] is True


def test_split_decay_groups_no_exclusion_and_shared_params():
    model = nn.Sequential(build_backbone("resnet18", width=8), MLP(64, 32, 16))
    groups = split_decay_groups([model], 1e-6, exclude_bias_and_norm=False)
    assert len(groups) == 1
    assert len(groups[0]["params"]) == len(list(model.parameters())) == 65
    # a module passed twice (or nested) counts each parameter once
    groups = split_decay_groups([model, model[1]], 1e-6)
    assert sum(len(g["params"]) for g in groups) == 65


# ------------------------------------------------------------------------------------------
# learning rate
# ------------------------------------------------------------------------------------------


def test_warmup_cosine_values():
    total, warm, peak = 110, 10, 2.0
    assert warmup_cosine(0, total, warm, peak) == pytest.approx(0.2)
    assert warmup_cosine(4, total, warm, peak) == pytest.approx(1.0)
    assert warmup_cosine(9, total, warm, peak) == pytest.approx(2.0)  # last warmup step
    assert warmup_cosine(10, total, warm, peak) == pytest.approx(2.0)  # start of cosine
    assert warmup_cosine(60, total, warm, peak) == pytest.approx(1.0)  # middle of the cosine
    assert warmup_cosine(35, total, warm, peak) == pytest.approx(1.0 + math.cos(math.pi / 4))
    assert warmup_cosine(110, total, warm, peak) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(500, total, warm, peak) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(110, total, warm, peak, final=0.1) == pytest.approx(0.1)
    assert warmup_cosine(60, total, warm, peak, final=0.1) == pytest.approx(1.05)
    # no warmup
    assert warmup_cosine(0, 100, 0, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(50, 100, 0, 1.0) == pytest.approx(0.5)


def test_scaled_lr():
    assert scaled_lr(0.3, 4096) == pytest.approx(4.8)
    assert scaled_lr(0.2, 4096) == pytest.approx(3.2)
    assert scaled_lr(1.0, 256) == pytest.approx(1.0)
    assert scaled_lr(0.45, 512) == pytest.approx(0.9)


# ------------------------------------------------------------------------------------------
# build_optimizer
# ------------------------------------------------------------------------------------------


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3, bias=False))


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_build_optimizer(name):
    cfg = OptimConfig(name=name, weight_decay=1e-4, momentum=0.8, betas=(0.85, 0.99), eta=2e-3)
    model = _model()
    opt = build_optimizer([model], cfg, lr=0.05)
    expected_type = {"lars": LARS, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[name]
    assert type(opt) is expected_type
    assert [len(g["params"]) for g in opt.param_groups] == [2, 3]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    assert all(g["lr"] == 0.05 for g in opt.param_groups)
    if name == "lars":
        assert [g["lars_exclude"] for g in opt.param_groups] == [False, True]
        assert opt.param_groups[0]["eta"] == 2e-3 and opt.param_groups[0]["momentum"] == 0.8
    elif name == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.8
    else:
        assert opt.param_groups[0]["betas"] == (0.85, 0.99)
    # the Linear bias before the BN gets a ~zero gradient: check the others move
    moving = [model[0].weight, model[1].weight, model[1].bias, model[3].weight]
    before = [p.detach().clone() for p in moving]
    loss = model(torch.randn(6, 4)).square().mean()
    loss.backward()
    opt.step()
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, moving))
