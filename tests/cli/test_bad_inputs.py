"""Bad input to the ``byol`` command line: every case ends with exit code 2 and ONE line on
stderr naming the file or key and the fix, never a traceback.

Each case runs the CLI in its own process. To pay torch's import (~3 s) once rather than per
case, a driver process imports byol once and forks a child per case; the child runs
``byol.cli.main(argv)`` with stderr redirected to a file and exits with its return code, and an
uncaught exception prints its traceback, as the interpreter would. Two cases also run through
the real ``byol`` console script.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from conftest import tiny_set_args as _tiny
from PIL import Image

from byol.checkpoint import FORMAT, atomic_save
from byol.engine import Trainer

DRIVER = textwrap.dedent("""
    import json, os, sys, traceback
    cases, out_dir = json.load(open(sys.argv[1])), sys.argv[2]
    import torch  # noqa: F401  imported once; every child inherits it
    from byol import cli, engine  # noqa: F401
    from byol.data import sources  # noqa: F401
    codes = {}
    for name, argv in cases.items():
        pid = os.fork()
        if pid == 0:
            err = os.open(os.path.join(out_dir, name + ".err"), os.O_WRONLY | os.O_CREAT)
            os.dup2(err, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            try:
                code = cli.main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        codes[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    json.dump(codes, open(os.path.join(out_dir, "codes.json"), "w"))
""")


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _png(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)


def _make_files(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    f: dict[str, Path] = {}
    f["empty"] = root / "empty"
    f["empty"].mkdir()
    f["text_only"] = root / "text_only"
    (f["text_only"] / "cls").mkdir(parents=True)
    (f["text_only"] / "cls" / "notes.txt").write_text("not an image")
    f["fake_jpg"] = root / "fake_jpg"
    (f["fake_jpg"] / "cls").mkdir(parents=True)
    (f["fake_jpg"] / "cls" / "a.jpg").write_text("not an image either")
    f["truncated"] = root / "truncated"
    for i in range(15):
        _png(f["truncated"] / f"c{i % 2}" / f"{i}.png", rng)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    f["truncated_file"] = f["truncated"] / "c0" / "cut.jpg"
    f["truncated_file"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    f["idx"] = root / "train-images-idx3-ubyte"
    f["idx"].write_bytes(b"\x00\x00\x08\x01" + bytes(64))  # a labels magic on an images file
    f["cifar"] = root / "cifar-10-batches-py"
    f["cifar"].mkdir()
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (f["cifar"] / n).write_bytes(b"\x80\x04\x95 truncated pickle")
    f["not_ckpt"] = root / "notes.pt"
    f["not_ckpt"].write_text("hello, I am not a checkpoint")
    f["under_file"] = root / "a_file"
    f["under_file"].write_text("x")
    f["bad_yaml"] = root / "bad.yaml"
    f["bad_yaml"].write_text("train: [1, 2\n  epochs: 3\n")
    # a real checkpoint of width 8, resumed below with width 16
    f["run8"] = root / "run8"
    torch.set_num_threads(1)
    Trainer(tiny_config(f["run8"], **{"train.max_steps": 1})).train()
    f["imported"] = root / "imported.pt"
    cfg = tiny_config(root / "x")
    atomic_save({"format": FORMAT, "config": cfg.to_dict(), "model": {}, "step": 0,
                 "epoch": 0}, f["imported"])
    f["no_ckpt_dir"] = root / "no_ckpt_dir"
    f["no_ckpt_dir"].mkdir()
    return f


def _cases(root: Path, f: dict[str, Path]) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (argv, substrings the one error line must contain)."""
    out = str(root / "out")

    def pre(source: str, data: Path | str | None, **extra) -> list[str]:
        a = ["pretrain", "--source", source, "--out", out]
        if data is not None:
            a += ["--data", str(data)]
        return a + _tiny(Path(out), **{"data.source": source, **extra})

    syn = pre("synthetic", None)
    under = f["under_file"] / "run"  # a folder below a regular file: cannot be created
    return {
        # data
        "missing_data_folder": (pre("folder", root / "nope"),
                                [str(root / "nope"), "does not exist", "data.path"]),
        "empty_data_folder": (pre("folder", f["empty"]),
                              [str(f["empty"]), "no class sub-folders", "unlabeled_folder"]),
        "folder_of_non_image_files": (pre("folder", f["text_only"]),
                                      [str(f["text_only"]), "no image files", ".jpg"]),
        "folder_of_undecodable_images": (pre("folder", f["fake_jpg"]),
                                         [str(f["fake_jpg"]), "could be decoded"]),
        "truncated_image_strict": (pre("folder", f["truncated"], **{"data.strict": True}),
                                   [str(f["truncated_file"]), "truncated", "strict=False"]),
        "truncated_image_strict_in_worker": (
            pre("folder", f["truncated"], **{"data.strict": True, "data.in_memory": False,
                                              "data.num_workers": 1, "train.batch_size": 16}),
            [str(f["truncated_file"]), "truncated", "strict=False"]),
        "idx_wrong_magic": (pre("idx", f["idx"]), [str(f["idx"]), "magic", "images-idx3-ubyte"]),
        "cifar_corrupt_batch": (pre("cifar10", f["cifar"].parent),
                                ["data_batch_1", "not a readable CIFAR", "re-download"]),
        "unknown_source": (syn + ["--source", "nosuch"], ["data.source", "nosuch", "allowed"]),
        # checkpoints
        "resume_other_architecture": (
            syn + ["--set", "model.width=16", "--resume", str(f["run8"] / "last.pt")],
            [str(f["run8"] / "last.pt"), "model.width: checkpoint 8 vs config 16", "same config"]),
        "resume_not_a_checkpoint": (syn + ["--resume", str(f["not_ckpt"])],
                                    [str(f["not_ckpt"]), "cannot be read", "byol import"]),
        "resume_weights_only_checkpoint": (syn + ["--resume", str(f["imported"])],
                                           [str(f["imported"]), "not resumed", "without --resume"]),
        "resume_missing_file": (syn + ["--resume", str(root / "gone.pt")],
                                [str(root / "gone.pt"), "does not exist"]),
        "resume_folder_without_checkpoint": (syn + ["--resume", str(f["no_ckpt_dir"])],
                                             [str(f["no_ckpt_dir"]), "no checkpoint", "last.pt"]),
        "knn_not_a_checkpoint": (["eval", "knn", "--checkpoint", str(f["not_ckpt"])],
                                 [str(f["not_ckpt"]), "cannot be read", "byol import"]),
        # config
        "unknown_key": (syn + ["--set", "train.epochz=3"], ["train.epochz", "Allowed keys"]),
        "ill_typed_value": (syn + ["--set", "train.batch_size=abc"],
                            ["train.batch_size", "must be an integer", "'abc'"]),
        "batch_size_0": (syn + ["--set", "train.batch_size=0"], ["train.batch_size", ">= 1"]),
        "negative_lr": (syn + ["--set", "optim.base_lr=-0.5"], ["optim.base_lr", "positive"]),
        "nan_lr": (syn + ["--set", "optim.base_lr=.nan"], ["optim.base_lr", "positive"]),
        "tau_base_above_1": (syn + ["--set", "train.tau_base=1.5"], ["train.tau_base", "[0, 1]"]),
        "image_size_below_8": (syn + ["--set", "augment.image_size=4"],
                               ["augment.image_size", ">= 8"]),
        "crop_scale_min_above_max": (syn + ["--set", "augment.view1.crop_scale=[0.9,0.2]"],
                                     ["augment.view1.crop_scale", "min <= max"]),
        "save_every_0": (syn + ["--set", "log.save_every=0"], ["log.save_every", ">= 1"]),
        "negative_workers": (syn + ["--set", "data.num_workers=-1"], ["data.num_workers", ">= 0"]),
        "nonfinite_mode": (syn + ["--set", "train.nonfinite=ignore"],
                           ["train.nonfinite", "stop, skip"]),
        "missing_config_file": (["pretrain", "--config", str(root / "mine.yaml")],
                                [str(root / "mine.yaml"), "neither a YAML file nor a preset"]),
        "invalid_yaml": (["pretrain", "--config", str(f["bad_yaml"])],
                         [str(f["bad_yaml"]), "not valid YAML"]),
        "epochs_0": (syn + ["--epochs", "0"], ["train.epochs", ">= 1"]),
        # output
        "out_under_a_file": (["pretrain", "--source", "synthetic", "--out", str(under)]
                             + _tiny(under), [str(under), "not writable", "--out"]),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    f = _make_files(root)
    cases = _cases(root, f)
    errs = root / "stderr"
    errs.mkdir()
    (root / "cases.json").write_text(json.dumps({k: v[0] for k, v in cases.items()}))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(root / "cases.json"), str(errs)],
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads((errs / "codes.json").read_text())
    return {k: (codes[k], (errs / f"{k}.err").read_text(), cases[k][1]) for k in cases}, f


CASE_NAMES = [
    "missing_data_folder", "empty_data_folder", "folder_of_non_image_files",
    "folder_of_undecodable_images", "truncated_image_strict", "truncated_image_strict_in_worker",
    "idx_wrong_magic", "cifar_corrupt_batch", "unknown_source", "resume_other_architecture",
    "resume_not_a_checkpoint", "resume_weights_only_checkpoint", "resume_missing_file",
    "resume_folder_without_checkpoint", "knn_not_a_checkpoint", "unknown_key", "ill_typed_value",
    "batch_size_0", "negative_lr", "nan_lr", "tau_base_above_1", "image_size_below_8",
    "crop_scale_min_above_max", "save_every_0", "negative_workers", "nonfinite_mode",
    "missing_config_file", "invalid_yaml", "epochs_0", "out_under_a_file",
]


def test_case_list_is_complete(results):
    assert sorted(CASE_NAMES) == sorted(results[0])


def _check_one_line(code: int, stderr: str, needles: list[str]) -> str:
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("byol") and "error: " in ln]
    assert len(errors) == 1, stderr
    assert stderr.strip().splitlines()[-1] == errors[0]  # the error is the last word
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_one_line_exit_2(results, name):
    code, stderr, needles = results[0][name]
    line = _check_one_line(code, stderr, needles)
    if name == "truncated_image_strict_in_worker":
        assert "Original Traceback" not in stderr and "DataLoader worker" not in line


def test_console_script_bad_inputs(results, tmp_path):
    """The same, through the installed ``byol`` entry point (a real fresh process)."""
    f = results[1]
    proc = subprocess.run(["byol", "eval", "knn", "--checkpoint", str(f["not_ckpt"])],
                          capture_output=True, text=True, timeout=120, env=_env())
    _check_one_line(proc.returncode, proc.stderr, [str(f["not_ckpt"]), "byol import"])
    out = f["under_file"] / "run"
    proc = subprocess.run(["byol", "pretrain", "--source", "synthetic", "--out", str(out),
                           *_tiny(out)], capture_output=True, text=True, timeout=120, env=_env())
    _check_one_line(proc.returncode, proc.stderr, [str(out), "not writable", "--out"])


def test_debug_flag_shows_the_traceback(results):
    f = results[1]
    proc = subprocess.run(["byol", "--debug", "pretrain", "--source", "synthetic", "--resume",
                           str(f["not_ckpt"]), *_tiny(f["not_ckpt"].parent / "dbg")],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "CheckpointError" in proc.stderr
