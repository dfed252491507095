"""Faults injected into pretraining runs: a killed job, a full disk, a diverging loss, a collapsed
representation, a damaged checkpoint, a dead DataLoader worker, a dead torchrun worker. In each
case the run either finishes or stops with one clear line, and no checkpoint is lost."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, tiny_overrides

from byol import engine, runfolder
from byol.checkpoint import FORMAT, CheckpointError, atomic_save, load_checkpoint
from byol.cli import main as cli_main
from byol.engine import Trainer, TrainingError

DET = {"train.deterministic": True, "train.threads": 1}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               PYTHONWARNINGS="ignore", **extra)
    return env


def _pretrain_args(out, **extra) -> list[str]:
    args = ["pretrain", "--source", "synthetic", "--out", str(out)]
    for item in tiny_overrides(out, **extra):
        args += ["--set", item]
    return args


def _metric_steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, f"tensors differ: {differ[:5]}"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for k in sa:
        for name, t in sa[k].items():
            assert torch.equal(t, sb[k][name]), (k, name)


def _no_temp_files(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


def _inject(trainer: Trainer, at_steps: set[int], value: float = float("inf")) -> None:
    """Make the views of the given (1-based) optimiser steps contain ``value``."""
    calls = [0]
    views = trainer.feeder.views

    def poisoned(idx, seed):
        calls[0] += 1
        v1, v2 = views(idx, seed)
        if calls[0] in at_steps:
            v1 = v1.clone()
            v1[0, 0, 0, 0] = value
        return v1, v2

    trainer.feeder.views = poisoned


# ------------------------------------------------------------------------------------------
# a killed job: SIGTERM to `byol pretrain`, then --resume == the uninterrupted run
# ------------------------------------------------------------------------------------------


def test_sigterm_saves_prints_resume_command_and_resume_is_exact(tmp_path):
    out = tmp_path / "killed"
    # 32 images / 8 = 4 steps per epoch x 100 epochs: far longer than the test waits
    run = {**DET, "data.synthetic_size": 32, "train.batch_size": 8, "train.epochs": 100,
           "log.log_every": 1, "log.save_every": 1000, "optim.warmup_epochs": 1}
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "byol", *_pretrain_args(out, **run)],
                                stdout=subprocess.DEVNULL, stderr=err, env=_env())
        try:
            deadline = time.monotonic() + 120
            while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text()):
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, "no metrics line within 120 s"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = err_path.read_text()
    assert rc == 130, stderr
    assert "Traceback" not in stderr
    ckpt = load_checkpoint(out / "last.pt")
    k = ckpt["step"]
    assert 0 < k < 400
    assert "SIGTERM received" in stderr
    assert f"Resume with: byol pretrain --config {out / 'config.yaml'} --resume {out}" in stderr
    assert _metric_steps(out) == list(range(1, k + 1))

    # the printed command, run to step k + 3 ...
    final = k + 3
    assert cli_main(["pretrain", "--config", str(out / "config.yaml"), "--resume", str(out),
                     "--set", f"train.max_steps={final}"]) == 0
    # ... equals an uninterrupted run to step k + 3, tensor for tensor
    straight = tmp_path / "straight"
    assert cli_main(_pretrain_args(straight, **run, **{"train.max_steps": final})) == 0
    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(straight / "last.pt")
    assert a["step"] == final
    _assert_same_state(a, b)
    assert _metric_steps(out) == _metric_steps(straight) == list(range(1, final + 1))


# ------------------------------------------------------------------------------------------
# a full disk while saving
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["write", "rename", "last_link"])
def test_full_disk_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, capsys, where):
    """The second save (step 4) fails with ENOSPC midway; the step-2 checkpoint survives, no
    temporary file is left, the CLI prints one line (exit 2), and --resume finishes the run."""
    out = tmp_path / "run"
    run = {"data.synthetic_size": 32, "train.epochs": 2, "log.save_every": 1}  # 2 steps/epoch
    real_save, real_replace = torch.save, os.replace
    saves = [0]

    def failing_save(obj, f, *a, **kw):
        saves[0] += 1
        if saves[0] == 2:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **kw)

    def failing_replace(src, dst, *a, **kw):
        name = Path(dst).name
        target = "ckpt_00000004.pt" if where == "rename" else "last.pt"
        if name == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *a, **kw)

    if where == "write":
        monkeypatch.setattr(torch, "save", failing_save)
    else:
        first_done = [False]

        def replace_after_first(src, dst, *a, **kw):
            if first_done[0]:
                return failing_replace(src, dst, *a, **kw)
            if Path(dst).name == "last.pt":
                first_done[0] = True
            return real_replace(src, dst, *a, **kw)

        monkeypatch.setattr(os, "replace", replace_after_first)

    assert cli_main(_pretrain_args(out, **run)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("byol: error: cannot write checkpoint")
    assert "No space left on device" in err[0]
    assert f"{out / 'last.pt'} is intact" in err[0] and f"--resume {out}" in err[0]
    assert _no_temp_files(out) == []
    prev = load_checkpoint(out / "last.pt")
    assert prev["step"] == 2
    assert all(torch.isfinite(v).all() for v in prev["model"].values() if v.is_floating_point())
    if where == "last_link":  # the new checkpoint itself was complete
        assert load_checkpoint(out / "ckpt_00000004.pt")["step"] == 4
    else:
        assert not (out / "ckpt_00000004.pt").exists()

    monkeypatch.undo()
    assert cli_main(_pretrain_args(out, **run) + ["--resume", str(out)]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 4
    assert _no_temp_files(out) == []


def test_atomic_save_failure_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    atomic_save({"v": 1}, path)

    def broken(obj, f, *a, **kw):
        f.write(b"garbage")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        atomic_save({"v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]


def test_metrics_write_failure_warns_and_training_goes_on(tmp_path, monkeypatch, caplog):
    def no_space_for_metrics(path, *a, **kw):
        if str(path).endswith("metrics.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return open(path, *a, **kw)

    monkeypatch.setattr(runfolder, "open", no_space_for_metrics, raising=False)
    with caplog.at_level(logging.WARNING, logger="byol"):
        result = Trainer(tiny_config(tmp_path, **{"train.max_steps": 4})).train()
    assert result["steps"] == 4
    warns = [r for r in caplog.records if "metrics.jsonl" in r.getMessage()]
    assert len(warns) == 1  # once, not per row
    assert [r["step"] for r in load_checkpoint(tmp_path / "last.pt")["history"]] == [2, 4]


# ------------------------------------------------------------------------------------------
# keep_last and damaged checkpoints
# ------------------------------------------------------------------------------------------


def test_keep_last_prunes_old_checkpoints(tmp_path):
    cfg = tiny_config(tmp_path, **{"data.synthetic_size": 32, "train.epochs": 5,
                                   "log.save_every": 1, "log.keep_last": 2})
    Trainer(cfg).train()
    names = sorted(p.name for p in tmp_path.glob("ckpt_*.pt"))
    assert names == ["ckpt_00000008.pt", "ckpt_00000010.pt"]
    assert os.path.samefile(tmp_path / "last.pt", tmp_path / "ckpt_00000010.pt")
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 10
    assert _no_temp_files(tmp_path) == []


def test_damaged_last_checkpoint_falls_back_to_previous(tmp_path, caplog):
    cfg = tiny_config(tmp_path, **{"data.synthetic_size": 32, "train.epochs": 2,
                                   "log.save_every": 1})
    Trainer(cfg).train()
    newest = tmp_path / "ckpt_00000004.pt"
    assert os.path.samefile(newest, tmp_path / "last.pt")
    with open(newest, "r+b") as f:  # damages both names of the file (a hard link)
        f.truncate(100)
    with caplog.at_level(logging.WARNING, logger="byol"):
        tr = Trainer(tiny_config(tmp_path, **{"data.synthetic_size": 32, "train.epochs": 2}),
                     resume=str(tmp_path))
    assert tr.state.step == 2
    assert any("skipping unreadable checkpoint" in r.getMessage() for r in caplog.records)
    assert tr.train()["steps"] == 4
    # a damaged file named explicitly is an error, not a silent fallback
    with open(tmp_path / "ckpt_00000002.pt", "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match="ckpt_00000002.pt"):
        Trainer(cfg, resume=str(tmp_path / "ckpt_00000002.pt"))


def test_resume_from_weights_only_checkpoint_is_refused(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    ckpt = {"format": FORMAT, "config": cfg.to_dict(), "model": {}, "step": 0, "epoch": 0}
    atomic_save(ckpt, tmp_path / "imported.pt")
    with pytest.raises(TrainingError, match="optimizer, step_in_epoch.*not resumed"):
        Trainer(cfg, resume=str(tmp_path / "imported.pt"))


# ------------------------------------------------------------------------------------------
# a diverging loss
# ------------------------------------------------------------------------------------------

EPOCHS3 = {"data.synthetic_size": 32, "train.epochs": 3, "log.save_every": 1}  # 2 steps/epoch


def test_nonfinite_loss_stops_naming_step_and_keeps_last_good_checkpoint(tmp_path):
    tr = Trainer(tiny_config(tmp_path, **EPOCHS3, **{"log.log_every": 1}))
    _inject(tr, {5})
    with pytest.raises(TrainingError, match=r"at step 5 .*last good checkpoint") as e:
        tr.train()
    assert "nan" in str(e.value) or "inf" in str(e.value)
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["step"] == 4
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pt")) == ["ckpt_00000002.pt",
                                                                    "ckpt_00000004.pt"]
    assert _metric_steps(tmp_path) == [1, 2, 3, 4]


def test_nonfinite_loss_between_logs_is_never_saved(tmp_path):
    """log_every (6) is longer than an epoch (2 steps): the NaN of step 3 must be caught by the
    end-of-epoch save at step 4, not written into the newest checkpoint."""
    tr = Trainer(tiny_config(tmp_path, **EPOCHS3, **{"log.log_every": 6}))
    _inject(tr, {3})
    with pytest.raises(TrainingError, match=r"non-finite.* at step 4: .*not saving"):
        tr.train()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert not (tmp_path / "ckpt_00000004.pt").exists()


def test_huge_learning_rate_diverges_cleanly(tmp_path, capsys):
    args = _pretrain_args(tmp_path, **{"optim.name": "sgd", "optim.base_lr": 1e30,
                                       "optim.warmup_epochs": 0, "log.log_every": 1})
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("byol: error: the loss became")
    assert "at step" in err[0] and "optim.base_lr" in err[0]


def test_nonfinite_skip_drops_exactly_that_step(tmp_path):
    cfg = tiny_config(tmp_path, **EPOCHS3, **DET, **{"log.log_every": 2,
                                                     "train.nonfinite": "skip"})
    tr = Trainer(cfg)
    _inject(tr, {3})
    snaps = []
    step = tr.train_step

    def recording(micro, lr, tau):
        before = {k: v.clone() for k, v in tr.model.state_dict().items()}
        opt_before = {id(p): {n: t.clone() for n, t in s.items()}
                      for p, s in tr.optimizer.state.items()}
        res = step(micro, lr, tau)
        snaps.append((before, opt_before, tr.last_step_skipped))
        return res

    tr.train_step = recording
    result = tr.train()
    assert result["steps"] == 6 and result["skipped_steps"] == 1
    assert [s[2] for s in snaps] == [False, False, True, False, False, False]
    after = {k: v for k, v in tr.model.state_dict().items()}
    for i, (before, opt_before, _skipped) in enumerate(snaps):
        nxt = snaps[i + 1][0] if i + 1 < len(snaps) else after
        same = [k for k in before if torch.equal(before[k], nxt[k])]
        if i == 2:  # the poisoned step changed nothing: online, target, BN statistics
            assert len(same) == len(before)
            opt_next = {id(p): s for p, s in tr.optimizer.state.items()} if i + 1 == len(snaps) \
                else snaps[i + 1][1]
            for pid, state in opt_before.items():
                for n, t in state.items():
                    assert torch.equal(t, opt_next[pid][n])
        else:  # the others trained
            assert sum(k.startswith("online.") for k in same) < 10
            assert sum(k.startswith("target.") and "num_batches" not in k for k in same) < 10
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped"]) for r in rows] == [(2, 0), (4, 1), (6, 0)]
    assert all(r["loss"] is not None and r["loss"] == r["loss"] for r in rows)


def test_nonfinite_skip_gives_up_when_every_step_is_bad(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "MAX_CONSECUTIVE_SKIPS", 3)
    tr = Trainer(tiny_config(tmp_path, **EPOCHS3, **{"train.nonfinite": "skip"}))
    _inject(tr, set(range(1, 100)), float("nan"))
    with pytest.raises(TrainingError, match="3 optimiser steps in a row up to step 3"):
        tr.train()


def test_stop_mode_adds_no_per_step_check(tmp_path, monkeypatch):
    """The default (nonfinite=stop) keeps the hot path free of the per-step host sync."""

    def forbidden(self, loss):
        raise AssertionError("per-step finiteness check in nonfinite=stop mode")

    monkeypatch.setattr(Trainer, "_finite_step", forbidden)
    assert Trainer(tiny_config(tmp_path, **{"train.max_steps": 3})).train()["steps"] == 3


# ------------------------------------------------------------------------------------------
# a collapsing representation
# ------------------------------------------------------------------------------------------


def test_collapse_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(engine, "_normalised_std", lambda z: 1e-5)
    with caplog.at_level(logging.WARNING, logger="byol"):
        Trainer(tiny_config(tmp_path, **{"train.max_steps": 4})).train()
    warns = [r.getMessage() for r in caplog.records if "possible collapse" in r.getMessage()]
    assert len(warns) == 2  # at each log (steps 2 and 4)
    assert "step 2" in warns[0] and "0.0000" in warns[0]


def test_no_collapse_warning_when_healthy(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="byol"):
        Trainer(tiny_config(tmp_path, **{"train.max_steps": 2})).train()
    assert not [r for r in caplog.records if "possible collapse" in r.getMessage()]


# ------------------------------------------------------------------------------------------
# a dead DataLoader worker
# ------------------------------------------------------------------------------------------


def test_dead_dataloader_worker_is_a_clear_error(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from byol.data import FolderViewsDataset

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(16):
        (data / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            data / f"c{i % 2}" / f"{i}.png")
    parent = os.getpid()
    real = FolderViewsDataset.__getitem__

    def dying(self, i):
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, i)

    monkeypatch.setattr(FolderViewsDataset, "__getitem__", dying)
    cfg = tiny_config(tmp_path / "out", **{"data.source": "folder", "data.path": str(data),
                                           "data.in_memory": False, "data.num_workers": 1,
                                           "train.batch_size": 8, "train.max_steps": 1})
    with pytest.raises(TrainingError, match="data loading worker died.*--resume"):
        Trainer(cfg).train()


# ------------------------------------------------------------------------------------------
# torchrun: a dead worker process, and a signal reaching one process only
# ------------------------------------------------------------------------------------------


def _torchrun(out, restarts: int, **extra) -> list[str]:
    run = {**DET, "train.batch_size": 8, "train.epochs": 3, "log.log_every": 1,
           "log.save_every": 1, **extra}
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "--max-restarts", str(restarts), "--monitor-interval", "0.2", "-m", "byol",
            *_pretrain_args(out, **run), "--resume", "auto"]


def test_torchrun_worker_killed_job_completes_from_checkpoint(tmp_path):
    """Rank 1 dies (os._exit) after step 6 of 12 on the first attempt; torchrun restarts both
    processes, --resume auto continues from the step-4 checkpoint, and the job exits 0."""
    out = tmp_path / "ddp"
    # torch 2.14's torchrun keeps one shared TCPStore across restart rounds without an
    # attempt prefix, so the restarted gloo group can read the dead attempt's addresses
    # ("Gloo connectFullMesh failed ... Connection refused"); opting out of the shared store
    # gives each attempt a fresh one (see docs/RELIABILITY.md)
    env = _env(BYOL_FAULT_KILL_AT_STEP="6")
    proc = subprocess.run(_torchrun(out, restarts=1), capture_output=True, text=True,
                          timeout=240, env=env)
    log_text = proc.stdout + proc.stderr
    assert proc.returncode == 0, log_text[-4000:]
    assert "resumed from" in log_text and "at step 4" in log_text
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 12 and ckpt["world_size"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    # metrics: the first attempt's rows 1..m, then the re-run from the checkpoint, 5..12
    steps = _metric_steps(out)
    cut = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    first, second = steps[:cut], steps[cut:]
    assert first == list(range(1, len(first) + 1)) and 4 <= len(first) <= 6
    assert second == list(range(5, 13))
    assert [r["step"] for r in ckpt["history"]] == list(range(1, 13))
    # only rank 0 wrote files
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ckpt_00000004.pt", "ckpt_00000008.pt", "ckpt_00000012.pt", "config.yaml",
                     "last.pt", "metrics.jsonl", "train_result.json"]
    assert json.loads((out / "train_result.json").read_text())["steps"] == 12


def _children_with_rank(parent: int, rank: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            found.append(int(d.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_torchrun_signal_to_one_process_stops_all_at_the_same_step(tmp_path):
    """SIGTERM reaches rank 1 only: both processes agree (at the next log step) to stop, rank 0
    saves and prints the resume command; nobody hangs in a mismatched collective."""
    out = tmp_path / "ddp_sig"
    cmd = _torchrun(out, restarts=0, **{"train.epochs": 100, "log.save_every": 1000})
    err_path = tmp_path / "err.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, env=_env())
        try:
            deadline = time.monotonic() + 180
            while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text()):
                assert proc.poll() is None, err_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no metrics line within 180 s"
                time.sleep(0.05)
            ranks1 = _children_with_rank(proc.pid, 1)
            assert len(ranks1) == 1
            os.kill(ranks1[0], signal.SIGTERM)
            proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = err_path.read_text()
    assert "SIGTERM received" in text and f"--resume {out}" in text, text[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert 0 < ckpt["step"] < 400 and ckpt["world_size"] == 2
    assert _metric_steps(out) == list(range(1, ckpt["step"] + 1))
