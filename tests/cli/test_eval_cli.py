"""The evaluation CLI: --json files hold the metrics, errors are one line, --help has examples."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from byol.checkpoint import FORMAT, atomic_save
from byol.cli import main
from byol.cli.eval import add_commands
from byol.config import Config
from byol.models import build_byol


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    cfg = Config()
    cfg.model.arch, cfg.model.small_stem, cfg.model.width = "resnet18", True, 8
    cfg.model.proj_hidden_dim = cfg.model.pred_hidden_dim = 32
    cfg.model.proj_dim = 16
    cfg.data.source = "synthetic"
    cfg.augment.image_size = 16
    model = build_byol(cfg.model)
    path = d / "last.pt"
    atomic_save({"format": FORMAT, "config": cfg.to_dict(), "model": model.state_dict()}, path)
    return path


FAST = ["--synthetic-size", "48", "--precision", "fp32", "-q"]


def test_knn_json_contains_metrics(ckpt, tmp_path, capsys):
    out = tmp_path / "knn.json"
    rc = main(["eval", "knn", "--checkpoint", str(ckpt), "--ks", "5", "20", "--json", str(out),
               *FAST])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["protocol"] == "knn" and rec["model"] == "byol"
    assert set(rec["results"]) == {"k=5", "k=20"}
    assert 0 <= rec["results"]["k=20"]["top1"] <= rec["results"]["k=20"]["top5"] <= 100
    assert rec["data"]["num_train"] == 48 and rec["settings"]["image_size"] == 16
    assert "knn" in capsys.readouterr().out


def test_eval_all_with_baselines_then_report(ckpt, tmp_path):
    run = tmp_path / "run"
    rc = main(["eval", "all", "--checkpoint", str(ckpt), "--baselines", "random", "pixels",
               "--only", "knn", "linear", "svm", "lowshot", "--linear-epochs", "2",
               "--linear-lrs", "0.1,1", "--svm-costs", "fast", "--lowshot-costs", "0.1,1",
               "--lowshot-ks", "1", "2", "--lowshot-draws", "2", "--cache-dir",
               str(tmp_path / "cache"), "--out-dir", str(run / "eval"), "--json",
               str(tmp_path / "all.json"), *FAST])
    assert rc == 0
    recs = json.loads((tmp_path / "all.json").read_text())["records"]
    got = {(r["model"], r["protocol"]) for r in recs}
    assert got == {(m, p) for m in ("byol", "random-init", "pixels")
                   for p in ("knn", "linear", "svm", "lowshot")}
    by = {(r["model"], r["protocol"]): r["results"] for r in recs}
    assert by[("pixels", "svm")]["best_layer"] == "pooled"
    assert by[("byol", "svm")]["best_layer"] == "feature5"
    assert set(by[("byol", "lowshot")]) >= {"k=1", "k=2", "layer"}
    assert by[("byol", "linear")]["lr"] in (0.1, 1.0)
    assert len(list((tmp_path / "cache").glob("feats_*.pt"))) >= 4
    (run / "metrics.jsonl").write_text(
        '{"step": 1, "epoch": 0, "loss": 7.0, "lr": 0.1, "tau": 0.99}\n'
        '{"step": 2, "epoch": 1, "knn_top1_k20": 30.0}\n')
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    assert "| byol (resnet18) |" in text and "| pixels |" in text
    assert "random-init" in text and "64.20" in text  # the mmselfsup reference row
    assert (run / "plots" / "loss.png").is_file() and (run / "plots" / "knn.png").is_file()


def test_finetune_and_mhead_commands(ckpt, tmp_path):
    out = tmp_path / "ft.json"
    rc = main(["eval", "finetune", "--checkpoint", str(ckpt), "--fractions", "50", "100",
               "--epochs", "1", "--train-batch-size", "16", "--json", str(out), *FAST])
    assert rc == 0
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"50%", "100%"} and res["50%"]["num_train"] < res["100%"]["num_train"]
    out = tmp_path / "mh.json"
    rc = main(["eval", "mhead", "--checkpoint", str(ckpt), "--epochs", "1", "--layers",
               "feature4", "feature5", "--json", str(out), *FAST])
    assert rc == 0
    assert set(json.loads(out.read_text())["results"]) == {"feature4", "feature5"}


def test_bad_input_is_one_line_naming_the_flag(ckpt, tmp_path, capsys):
    assert main(["eval", "knn", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--checkpoint" in err
    assert main(["eval", "knn", "--checkpoint", str(tmp_path / "nope.pt"), *FAST]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert main(["eval", "knn", "--baseline", "pixels", "--data", "nosuch:/x", *FAST]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "SOURCE:PATH" in err
    assert main(["eval", "svm", "--checkpoint", str(ckpt), "--costs", "cheap", *FAST]) == 2
    assert "--costs" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--out", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and len(err.strip().splitlines()) == 1


def test_export_import_commands(ckpt, tmp_path, capsys):
    st = tmp_path / "bb.safetensors"
    assert main(["export", str(ckpt), "--format", "safetensors", "--out", str(st)]) == 0
    assert st.is_file()
    tv = tmp_path / "tv.pth"
    assert main(["export", str(ckpt), "--format", "torchvision", "--force", "--out",
                 str(tv)]) == 0
    assert main(["import", str(tv), str(tmp_path / "back.pt")]) == 0
    out = capsys.readouterr().out
    assert "missing keys" in out and "unexpected keys (2): fc.weight, fc.bias" in out


def test_every_command_has_help_with_example(capsys):
    parser = argparse.ArgumentParser(prog="byol")
    sub = parser.add_subparsers(dest="command")
    add_commands(sub)
    for cmd in (["eval", "knn"], ["eval", "linear"], ["eval", "mhead"], ["eval", "svm"],
                ["eval", "lowshot"], ["eval", "finetune"], ["eval", "all"], ["eval"],
                ["export"], ["import"], ["report"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([*cmd, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "example" in text and "byol " in text, cmd


@pytest.mark.slow
def test_fmnist_suite_tiny_runs(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fmnist_suite.py"
    spec = importlib.util.spec_from_file_location("fmnist_suite", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    summary = mod.run(mod.parse_args(["--tiny", "--out", str(tmp_path), "--skip", "mhead",
                                      "finetune", "--baselines", "random", "pixels"]))
    models = {r["model"] for r in summary["records"]}
    assert models == {"byol", "random-init", "pixels"}
    byol = {r["protocol"]: r for r in summary["records"] if r["model"] == "byol"}
    rand = {r["protocol"]: r for r in summary["records"] if r["model"] == "random-init"}
    assert byol["knn"]["results"] != rand["knn"]["results"]  # different weights, different rows
    assert (tmp_path / "report.md").is_file() and (tmp_path / "results.json").is_file()
    assert summary["wall_s"]["total"] > 0


def test_svm_on_a_voc07_devkit(ckpt, tmp_path):
    from PIL import Image

    from byol.eval.svm import VOC_CLASSES

    root = tmp_path / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    g = torch.Generator().manual_seed(0)
    splits = {"trainval": [f"{i:06d}" for i in range(12)],
              "test": [f"{i:06d}" for i in range(100, 108)]}
    for ids in splits.values():
        for i in ids:
            arr = torch.randint(0, 256, (20, 30, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(arr).save(root / "JPEGImages" / f"{i}.jpg")
    for split, ids in splits.items():
        for c, name in enumerate(VOC_CLASSES):
            lines = [f"{i} {1 if (n + c) % 4 == 0 else (0 if n == 1 else -1)}"
                     for n, i in enumerate(ids)]
            (root / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text("\n".join(lines))
    out = tmp_path / "svm.json"
    rc = main(["eval", "svm", "--checkpoint", str(ckpt), "--voc07", str(tmp_path),
               "--image-size", "16", "--costs", "fast", "--json", str(out), *FAST])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["data"]["source"] == "voc07" and rec["data"]["num_train"] == 12
    res = rec["results"]["layers"]["feature5"]
    assert set(res["ap"]) == set(VOC_CLASSES) and 0 <= rec["results"]["map"] <= 100
