"""The training engine: gradient accumulation, EMA cadence, lr scaling, the CLI run end to end,
and exact resume."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import tiny_byol, tiny_config, tiny_overrides
from torch import nn

from byol import engine
from byol.checkpoint import load_checkpoint
from byol.cli import main as cli_main
from byol.config import load_config
from byol.engine import Trainer
from byol.models.byol import BYOL, tau_schedule
from byol.optim import warmup_cosine

IDENTITY_VIEWS = {
    f"augment.{v}.{k}": val
    for v in ("view1", "view2")
    for k, val in (("crop_scale", "[1.0,1.0]"), ("crop_ratio", "[1.0,1.0]"), ("flip_p", 0),
                   ("jitter_p", 0), ("grayscale_p", 0), ("blur_p", 0), ("solarize_p", 0))
}


# ------------------------------------------------------------------------------------------
# (a) gradient accumulation, EMA cadence, learning-rate scaling
# ------------------------------------------------------------------------------------------


def test_accumulated_gradients_equal_big_batch_gradient():
    """Sum over 4 micro-batches of grad(loss / 4) == grad(loss of the 4x batch) when no layer
    couples the samples (BatchNorm in eval mode)."""
    model = tiny_byol(fuse_views=True)
    with torch.no_grad():
        for p in model.target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    big = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    v1, v2 = torch.rand(32, 3, 8, 8, generator=g), torch.rand(32, 3, 8, 8, generator=g)
    for a, b in zip(v1.chunk(4), v2.chunk(4)):
        loss, _ = model(a, b)
        (loss / 4).backward()
    loss_big, _ = big(v1, v2)
    loss_big.backward()
    for p, q in zip(model.online_parameters(), big.online_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    assert max(float(p.grad.abs().max()) for p in big.online_parameters()) > 1e-3


def _bn_frozen_build(real_build):
    """build_byol whose BatchNorms stay in eval mode even under model.train()."""

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        train = model.train

        def train_keeping_bn_eval(mode: bool = True):
            train(mode)
            for m in norms:
                m.eval()
            return model

        model.train = train_keeping_bn_eval
        return model

    return build


@pytest.mark.parametrize("fuse", [False, True])
def test_trainer_accumulation_equals_big_batch(monkeypatch, tmp_path, fuse):
    """Through the engine: 8 x 4 accumulated == 32 x 1 after two optimiser steps (identity
    augmentations, BN frozen, so the micro-batches carry exactly the samples of the big one)."""
    monkeypatch.setattr(engine, "build_byol", _bn_frozen_build(engine.build_byol))
    states = []
    for batch, acc in ((8, 4), (32, 1)):
        cfg = tiny_config(tmp_path / f"b{batch}", **IDENTITY_VIEWS, **{
            "train.batch_size": batch, "train.accumulate": acc, "train.max_steps": 2,
            "optim.warmup_epochs": 0, "train.deterministic": True,
            # SGD: the step is proportional to the gradient (LARS would hide a scale error)
            "optim.name": "sgd", "optim.base_lr": 2.0, "train.fuse_views": fuse})
        tr = Trainer(cfg)
        assert tr.model.fuse_views is fuse
        assert tr.global_batch == 32 and tr.steps_per_epoch == 2
        init = copy.deepcopy(tr.model.state_dict())
        tr.train()
        states.append((init, {k: v.clone() for k, v in tr.model.state_dict().items()}))
    (init_a, a), (init_b, b) = states
    for k in init_a:
        assert torch.equal(init_a[k], init_b[k])  # same seed, same initial weights
    moved = 0
    for k in a:
        if k.startswith(("online.", "predictor.")) and a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
            moved += int(not torch.equal(a[k], init_a[k]))
    assert moved > 20


def test_update_target_once_per_optimizer_step(monkeypatch, tmp_path):
    calls, forwards = [], []
    real_update, real_forward = BYOL.update_target, BYOL.forward

    def counting_update(self, tau):
        calls.append(tau)
        return real_update(self, tau)

    def counting_forward(self, v1, v2):
        forwards.append(len(v1))
        return real_forward(self, v1, v2)

    monkeypatch.setattr(BYOL, "update_target", counting_update)
    monkeypatch.setattr(BYOL, "forward", counting_forward)
    cfg = tiny_config(tmp_path, **{"train.batch_size": 4, "train.accumulate": 4,
                                   "train.max_steps": 3})
    tr = Trainer(cfg)
    result = tr.train()
    assert result["steps"] == 3
    assert len(calls) == 3
    assert forwards == [4] * 12  # 3 optimiser steps x 4 micro-batches of 4
    total = tr.total_steps
    assert total == 4 * 2  # 64 images / (4 x 4) per step, 2 epochs
    assert calls == pytest.approx([tau_schedule(k, total, 0.99) for k in range(3)])


def test_peak_lr_uses_global_batch(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.batch_size": 8, "train.accumulate": 4,
                                   "optim.base_lr": 0.5})
    tr = Trainer(cfg)
    assert tr.global_batch == 32
    assert tr.peak_lr == pytest.approx(0.5 * 8 * 4 / 256)
    assert all(g["lr"] == pytest.approx(tr.peak_lr) for g in tr.optimizer.param_groups)
    assert tr.steps_per_epoch == 64 // 32
    assert tr.warmup_steps == round(0.5 * 2)


# ------------------------------------------------------------------------------------------
# (b) end to end through the CLI, then --resume
# ------------------------------------------------------------------------------------------


def _cli_args(out, **extra) -> list[str]:
    args = ["pretrain", "--source", "synthetic", "--out", str(out), "--epochs", "2"]
    for item in tiny_overrides(out, **extra):
        args += ["--set", item]
    return args


def _metrics(path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_cli_pretrain_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    extra = {"train.max_steps": 4, "log.tensorboard": True, "optim.base_lr": 0.4}
    assert cli_main(_cli_args(out, **extra)) == 0
    assert "done: 4 steps" in capsys.readouterr().out
    assert (out / "last.pt").is_file()
    assert (out / "config.yaml").is_file()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    saved_cfg = load_config(str(out / "config.yaml"))
    assert saved_cfg.train.max_steps == 4 and saved_cfg.model.width == 8
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 4 and ckpt["epoch"] == 1 and ckpt["step_in_epoch"] == 0
    assert {k.split(".")[0] for k in ckpt["model"]} == {"online", "predictor", "target"}
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [2, 4]
    total, warm, peak = 8, 2, 0.4 * 16 / 256  # 64 / 16 = 4 steps per epoch, 0.5 epoch warmup
    for r in rows:
        assert math.isfinite(r["loss"]) and 0.0 <= r["loss"] <= 8.0
        k = r["step"] - 1  # the row reports the lr / tau of its last step
        assert r["lr"] == pytest.approx(warmup_cosine(k, total, warm, peak))
        assert r["tau"] == pytest.approx(tau_schedule(k, total, 0.99))
        assert r["z_std"] > 0
    result = json.loads((out / "train_result.json").read_text())
    assert result["steps"] == 4 and math.isfinite(result["final_loss"])

    # resume to step 6
    extra["train.max_steps"] = 6
    assert cli_main(_cli_args(out, **extra) + ["--resume", str(out)]) == 0
    ckpt2 = load_checkpoint(out / "last.pt")
    assert ckpt2["step"] == 6 and ckpt2["epoch"] == 1 and ckpt2["step_in_epoch"] == 2
    assert [r["step"] for r in _metrics(out)] == [2, 4, 6]
    assert [r["step"] for r in ckpt2["history"]] == [2, 4, 6]
    changed = [k for k in ckpt["model"] if not torch.equal(ckpt["model"][k], ckpt2["model"][k])]
    assert any(k.startswith("online.") for k in changed)
    assert any(k.startswith("target.") for k in changed)
    assert sorted(p.name for p in out.glob("ckpt_*.pt"))[-1] == "ckpt_00000006.pt"


# ------------------------------------------------------------------------------------------
# (c) interrupted + resumed == uninterrupted, bit for bit
# ------------------------------------------------------------------------------------------


def test_resume_is_bitwise_identical(tmp_path):
    det = {"train.deterministic": True, "train.threads": 1}
    straight = tiny_config(tmp_path / "a", **det, **{"train.max_steps": 6})
    Trainer(straight).train()
    first = tiny_config(tmp_path / "b", **det, **{"train.max_steps": 3})
    Trainer(first).train()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 3
    second = tiny_config(tmp_path / "b", **det, **{"train.max_steps": 6})
    Trainer(second, resume=str(tmp_path / "b")).train()
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    diffs = {k: float((a["model"][k].double() - b["model"][k].double()).abs().max())
             for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])}
    assert not diffs, f"resumed run differs: {diffs}"
    # the momentum buffers too
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"])
    # and the run really trained between the interruption and the end
    mid = load_checkpoint(tmp_path / "b" / "ckpt_00000003.pt")
    assert mid["step"] == 3
    assert any(not torch.equal(mid["model"][k], b["model"][k]) for k in b["model"]
               if k.startswith("online."))
    ca = [r["loss"] for r in a["history"] if r["step"] == 6]
    cb = [r["loss"] for r in b["history"] if r["step"] == 6]
    assert ca and cb and math.isfinite(ca[0])


def test_resume_with_other_model_settings_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.max_steps": 1})
    Trainer(cfg).train()
    other = tiny_config(tmp_path, **{"train.max_steps": 2, "model.width": 16})
    with pytest.raises(engine.TrainingError, match="model settings"):
        Trainer(other, resume=str(tmp_path))
