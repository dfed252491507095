"""A newcomer's path on their own images, through the CLI: ``byol pretrain --data DIR`` with no
config -> ``byol embed`` -> ``byol export``; honest evaluation splits; the examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import save_gray_numpy_checkpoint
from PIL import Image

from byol.cli import main

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(11)
FAST = ["--device", "cpu", "--set", "log.progress=false", "--set", "log.tensorboard=false",
        "--set", "data.num_workers=0", "--set", "train.threads=1"]


def make_folder(root: Path, classes: int = 3, per_class: int = 12, side: int = 16) -> list[Path]:
    """Gray images whose brightness depends on the class, one sub-folder per class."""
    files = []
    for c in range(classes):
        for i in range(per_class):
            a = RNG.integers(0, 60, (side, side)) + 70 * c
            p = root / f"class{c}" / f"img{i:02d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a.astype(np.uint8)).save(p)
            files.append(p)
    return sorted(files)


def test_newcomer_path_pretrain_embed_export(tmp_path, capsys, caplog):
    data, run = tmp_path / "my_images", tmp_path / "run"
    files = make_folder(data)
    caplog.set_level("INFO", logger="byol")
    assert main(["pretrain", "--data", str(data), "--out", str(run), "--set",
                 "train.max_steps=3", *FAST]) == 0
    out = capsys.readouterr().out
    assert "no config given" in out and "data.source=folder" in out
    assert "augment.mean=" in out and "computed from 36 of the 36 images" in out
    text = (run / "config.yaml").read_text()
    assert text.startswith("# byol pretrain: no config given")
    cfg = yaml.safe_load(text)
    assert cfg["model"]["in_chans"] == 1 and cfg["augment"]["image_size"] == 16
    assert cfg["train"]["time_budget"] == "10m" and cfg["log"]["knn_every_steps"] > 0
    # labels exist: the end of the run compares with the same network at random init
    assert any("random init" in r.getMessage() for r in caplog.records)
    result = json.loads((run / "train_result.json").read_text())
    assert result["knn_monitor"]["step"] == 3

    assert main(["embed", str(run / "last.pt"), "--data", str(data), "--out",
                 str(run / "emb.npz"), "--device", "cpu", "--workers", "0", "-q"]) == 0
    z = np.load(run / "emb.npz")
    assert z["embeddings"].shape[0] == len(files) and np.isfinite(z["embeddings"]).all()
    assert [Path(p) for p in z["paths"]] == files  # one row per image, in path order
    assert z["labels"].tolist() == [int(f.parent.name[-1]) for f in files]
    # the same rows as Parquet (pyarrow is in the dev extra, so CI runs this part)
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(run / "emb.parquet").to_pydict()
    assert [Path(p) for p in table["path"]] == files
    assert table["label"] == z["labels"].tolist()
    np.testing.assert_allclose(np.array(table["embedding"]), z["embeddings"], rtol=0, atol=0)

    assert main(["export", str(run / "last.pt"), "--format", "safetensors", "--out",
                 str(run / "backbone.safetensors")]) == 0
    from safetensors.torch import load_file

    assert "conv1.weight" in load_file(str(run / "backbone.safetensors"))


def test_config_show_data_prints_the_choice_without_training(tmp_path, capsys):
    np.savez(tmp_path / "train.npz", x=RNG.integers(0, 256, (40, 3, 12, 12), dtype=np.uint8),
             y=np.arange(40) % 4)
    assert main(["config", "show", "--data", str(tmp_path / "train.npz"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "# byol pretrain: no config given" in out and "data.source=numpy" in out
    cfg = yaml.safe_load(out)
    assert cfg["data"]["source"] == "numpy" and cfg["model"]["in_chans"] == 3
    assert len(cfg["augment"]["mean"]) == 3 and not (tmp_path / "runs").exists()


def test_preset_on_other_data_warns_with_the_keys(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", images=np.full((20, 28, 28), 250, dtype=np.uint8))
    assert main(["config", "show", "-c", "fmnist_quick", "--data", str(tmp_path / "d.npz")]) == 0
    captured = capsys.readouterr()
    assert "--set augment.mean=[0.9804]" in captured.err and "augment.std" in captured.err
    assert yaml.safe_load(captured.out)["data"]["source"] == "numpy"


def test_monitor_never_queries_its_bank_on_one_set(tmp_path):
    from byol.autoconfig import auto_config
    from byol.engine import Trainer

    make_folder(tmp_path / "d", per_class=10)
    over = ["train.max_steps=1", "log.progress=false", "log.tensorboard=false",
            "data.num_workers=0", f"log.out_dir={tmp_path / 'run'}"]
    t = Trainer(auto_config(str(tmp_path / "d"), device="cpu", overrides=over).config)
    t.train()
    idx = t.monitor.indices
    assert idx["same_images"] and len(idx["queries"]) > 0
    assert not set(idx["bank"].tolist()) & set(idx["queries"].tolist())
    # a separate test set: queries come from it, the bank from all training images
    make_folder(tmp_path / "t", per_class=2)
    over[-1] = f"log.out_dir={tmp_path / 'run2'}"
    t = Trainer(auto_config(str(tmp_path / "d"), test_data=str(tmp_path / "t"), device="cpu",
                            overrides=over).config)
    t.train()
    assert not t.monitor.indices["same_images"] and len(t.monitor.indices["bank"]) == 30


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("npz")
    for name, n in (("train", 40), ("test", 20)):
        np.savez(d / f"{name}.npz", images=RNG.integers(0, 256, (n, 16, 16), dtype=np.uint8),
                 labels=np.arange(n) % 4)
    save_gray_numpy_checkpoint(d / "last.pt", d / "train.npz")
    return d


EV = ["--ks", "5", "--precision", "fp32", "-q", "--device", "cpu"]


def test_evaluation_without_a_test_set_is_refused(npz_run, capsys):
    assert main(["eval", "knn", "-c", str(npz_run / "last.pt"), *EV]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--test-data" in err and "--test-on-train" in err
    # the same file named for both sides through --data is refused the same way
    assert main(["eval", "linear", "-c", str(npz_run / "last.pt"), "--data",
                 f"numpy:{npz_run / 'train.npz'}", *[a for a in EV if a not in ("--ks", "5")]]) == 2
    assert "--test-data" in capsys.readouterr().err


def test_unknown_test_split_is_an_error_naming_the_flag(npz_run, capsys):
    assert main(["eval", "knn", "-c", str(npz_run / "last.pt"), "--test-split",
                 "nonsense_split", *EV]) == 2
    err = capsys.readouterr().err
    assert "--test-split 'nonsense_split'" in err and "data.split" not in err


def test_test_data_and_the_record_of_which_images(npz_run, tmp_path):
    out = tmp_path / "knn.json"
    assert main(["eval", "knn", "-c", str(npz_run / "last.pt"), "--test-data",
                 str(npz_run / "test.npz"), "--json", str(out), *EV]) == 0
    data = json.loads(out.read_text())["data"]
    assert (data["num_train"], data["num_test"]) == (40, 20)
    assert data["test_path"].endswith("test.npz") and data["path"].endswith("train.npz")
    assert data["test_is_train"] is False
    assert main(["eval", "knn", "-c", str(npz_run / "last.pt"), "--test-on-train", "--json",
                 str(out), *EV]) == 0
    data = json.loads(out.read_text())["data"]
    assert data["test_is_train"] is True and data["test_on_train"] is True


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_example_own_folder(tmp_path):
    make_folder(tmp_path / "imgs", per_class=6)
    proc = _run("own_folder.py", str(tmp_path / "imgs"), str(tmp_path / "run"), "--steps", "2",
                "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "18 embeddings" in proc.stdout and (tmp_path / "run" / "embeddings.npz").is_file()


def test_example_custom_backbone(tmp_path):
    proc = _run("custom_backbone.py", "--steps", "2", "--batch", "4", "--image-size", "32",
                "--device", "cpu", "--out", str(tmp_path / "b.pth"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 1: loss" in proc.stdout
    assert "fc.weight" not in torch.load(tmp_path / "b.pth", weights_only=True)


def test_example_export_finetune(tmp_path):
    make_folder(tmp_path / "imgs", per_class=6, side=32)
    proc = _run("export_finetune.py", str(tmp_path / "imgs"), str(tmp_path / "run"),
                "--steps", "2", "--epochs", "1", "--size", "32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fine-tune epoch 1" in proc.stdout
    assert (tmp_path / "run" / "resnet18_finetuned.pth").is_file()
