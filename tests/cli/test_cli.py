"""The ``byol`` command line: help texts, config commands, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from byol.cli import main
from byol.config import preset_names


def _byol(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "byol", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: byol" in out
    for cmd in ("pretrain", "config"):
        assert cmd in out


def test_pretrain_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples" in out
    for opt in ("--config", "--set", "--resume", "--out", "--source"):
        assert opt in out
    assert "torchrun" in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: byol" in capsys.readouterr().out


def test_config_show_applies_overrides(capsys):
    assert main(["config", "show", "-c", "fmnist_quick", "--set", "train.epochs=5"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 5" in out
    shown = yaml.safe_load(out)
    assert shown["train"]["epochs"] == 5
    assert shown["name"] == "fmnist_quick"
    assert shown["model"]["width"] == 16


def test_config_list_lists_presets(capsys):
    assert main(["config", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    names = preset_names()
    assert len(lines) == len(names)
    for name, line in zip(names, lines):
        assert line.split()[0] == name
    assert "byol_resnet50_16xb256-coslr-200e_in1k" in out
    line = next(x for x in lines if x.startswith("byol_resnet50_paper-1000e_in1k"))
    assert "1000e" in line and "base lr 0.2" in line and "tau 0.996" in line


def test_bad_override_one_line_error_in_process(capsys):
    assert main(["config", "show", "-c", "fmnist_quick", "--set", "train.epochz=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("byol: error: ") and "train.epochz" in err[0]


@pytest.mark.parametrize(
    "args, key",
    [
        (["config", "show", "-c", "fmnist_quick", "--set", "train.batch_size=abc"],
         "train.batch_size"),
        (["pretrain", "-c", "fmnist_quick", "--set", "optim.base_lrr=0.1"], "optim.base_lrr"),
    ],
)
def test_bad_override_subprocess_exit_2_no_traceback(args, key):
    proc = _byol(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("byol: error: ")
    assert key in lines[0]


def test_console_script_help():
    proc = subprocess.run(["byol", "config", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert "show" in proc.stdout and "list" in proc.stdout


def test_pretrain_epochs_zero_is_rejected(tmp_path, capsys):
    from conftest import tiny_overrides

    args = ["pretrain", "--source", "synthetic", "--out", str(tmp_path), "--epochs", "0"]
    for item in tiny_overrides(tmp_path, **{"train.max_steps": 1}):
        if not item.startswith("train.epochs="):
            args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "train.epochs" in err
