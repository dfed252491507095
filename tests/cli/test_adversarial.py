"""The adversarial harness: a table of bad inputs and injected faults for the ``byol`` command
line, so that "one line, exit 2, no traceback, names the file or key and the fix" and "a killed
run resumes bitwise equal" cannot silently break.

* ``BAD``: bad configs, overrides and YAML files; every reader's malformed files (object arrays,
  tiny datasets, truncated archives, ...); corrupt, truncated, foreign and malicious files given
  to every command that takes a checkpoint; impossible resources. Each case checks exit code 2,
  exactly one ``byol...: error:`` line and that it is the last thing on stderr, no traceback,
  the file or key in the line, and its kind (a corrupt file is never told to use ``--trust``).
* ``FAULTS`` (slow): SIGTERM / SIGINT / SIGKILL at seeded random steps, SIGKILL mid-save and
  between a save and its ``last.pt`` link, a damaged ``last.pt``, a writer that raises mid-save
  and a full disk (a small tmpfs when the tests run as root and can mount one; the raising
  writer otherwise). After each, ``--resume`` (or a rerun where no checkpoint was written) must
  end bitwise equal to the uninterrupted run.

Every CLI call runs in a child forked from one driver process that imported torch once
(``adversarial_driver.py``), so ~200 calls cost seconds of imports, not minutes.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config, tiny_overrides
from conftest import tiny_set_args as _tiny
from PIL import Image

from byol.checkpoint import FORMAT, atomic_save, load_checkpoint
from byol.engine import Trainer

DRIVER = Path(__file__).with_name("adversarial_driver.py")
DOC = Path(__file__).parents[2] / "docs" / "RELIABILITY.md"


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _sets(items: dict) -> list[str]:
    out = []
    for k, v in items.items():
        out += ["--set", f"{k}={v}"]
    return out


@dataclass
class Case:
    argv: list[str]
    needles: list[str]
    group: str
    absent: list[str] = field(default_factory=list)  # must not be in the line


# ------------------------------------------------------------------------------------------
# the files


class Evil:
    """Unpickling it would create MARKER: the harness checks that nothing ever does."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _png(path: Path, rng: np.random.Generator, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _idx(path: Path, magic: int, dims: list[int], payload: bytes) -> None:
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(head + payload)


def _make_files(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    f: dict[str, Path] = {}
    f["marker"] = root / "PWNED"
    Evil.marker = str(f["marker"])

    # a real byol checkpoint (width 8, 1 step) and damaged copies of it
    f["run"] = root / "run8"
    torch.set_num_threads(1)
    Trainer(tiny_config(f["run"], **{"train.max_steps": 1})).train()
    good = (f["run"] / "last.pt").read_bytes()
    ck = root / "ckpt"
    ck.mkdir()
    f["good"] = ck / "good.pt"
    f["good"].write_bytes(good)
    files = {
        "empty": b"",
        "random": rng.bytes(4096),
        "text": b"hello, I am not a checkpoint\n",
        "json": json.dumps({"model": [1, 2, 3]}).encode(),
        "truncated_half": good[: len(good) // 2],
        "truncated_100": good[:100],
        "truncated_tail": good[:-40],
    }
    for kind, data in files.items():
        f[f"ck_{kind}"] = ck / f"{kind}.pt"
        f[f"ck_{kind}"].write_bytes(data)
    f["ck_zip_no_pickle"] = ck / "zip_no_pickle.pt"
    with zipfile.ZipFile(f["ck_zip_no_pickle"], "w") as z:
        z.writestr("archive/notes.txt", "a zip, but no data.pkl")
    f["ck_malicious"] = ck / "malicious.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": Evil()}, f["ck_malicious"])
    f["ck_malicious_pickle"] = ck / "malicious_pickle.pt"
    f["ck_malicious_pickle"].write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    f["ck_objects"] = ck / "objects.pt"  # like mmengine's meta: numpy scalars next to tensors
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": {"lr": np.float64(0.1)}},
               f["ck_objects"])
    f["ck_legacy_truncated"] = ck / "legacy_truncated.pt"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(64)}, buf, _use_new_zipfile_serialization=False)
    f["ck_legacy_truncated"].write_bytes(buf.getvalue()[:40])
    f["ck_tensor"] = ck / "tensor.pt"
    torch.save(torch.zeros(3), f["ck_tensor"])
    f["ck_list"] = ck / "list.pt"
    torch.save([torch.zeros(3)], f["ck_list"])
    f["ck_folder"] = ck / "folder.pt"
    f["ck_folder"].mkdir()
    f["ck_missing"] = ck / "missing.pt"
    f["ck_imported"] = ck / "imported.pt"  # weights only: evaluable, not resumable
    atomic_save({"format": FORMAT, "config": tiny_config(root / "x").to_dict(), "model": {},
                 "step": 0, "epoch": 0}, f["ck_imported"])

    # numpy
    npd = root / "np"
    npd.mkdir()

    def npz(name: str, **arrays) -> None:
        f[f"np_{name}"] = npd / f"{name}.npz"
        np.savez(f[f"np_{name}"], **arrays)

    img = rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    npz("object_images", images=np.array([object(), 1], dtype=object))
    npz("object_labels", images=img, labels=np.array(["a", None] * 32, dtype=object))
    npz("no_images_key", pictures=img)
    npz("shape_2d", images=np.zeros((64, 16), np.uint8))
    npz("shape_5d", images=np.zeros((2, 2, 2, 2, 2), np.uint8))
    npz("five_channels", images=np.zeros((64, 16, 16, 5), np.uint8))
    npz("int64", images=img.astype(np.int64))
    npz("float_range", images=img.astype(np.float32))
    npz("float_nan", images=np.full((64, 16, 16, 3), np.nan, np.float32))
    npz("zero_images", images=np.zeros((0, 16, 16, 3), np.uint8))
    npz("float_labels", images=img, labels=np.zeros(64, np.float32))
    npz("label_count", images=img, labels=np.zeros(10, np.int64))
    npz("ten_images", images=img[:10])
    npz("good", images=img, labels=np.arange(64) % 4)
    f["np_object_npy"] = npd / "object.npy"
    np.save(f["np_object_npy"], np.array([object(), 1], dtype=object))
    raw = f["np_good"].read_bytes()
    for name, data in {"truncated": raw[: len(raw) // 2], "empty": b"",
                       "random": rng.bytes(512)}.items():
        f[f"np_{name}"] = npd / f"{name}.npz"
        f[f"np_{name}"].write_bytes(data)

    # IDX
    idx = root / "idx"
    idx.mkdir()
    f["idx_wrong_magic"] = idx / "wrong-images-idx3-ubyte"
    _idx(f["idx_wrong_magic"], 0x801, [16], bytes(16))
    f["idx_truncated"] = idx / "cut-images-idx3-ubyte"
    _idx(f["idx_truncated"], 0x803, [100, 28, 28], bytes(1000))
    f["idx_empty"] = idx / "empty-images-idx3-ubyte"
    f["idx_empty"].write_bytes(b"")
    f["idx_bad_gzip"] = idx / "gz-images-idx3-ubyte.gz"
    f["idx_bad_gzip"].write_bytes(b"\x1f\x8b\x08\x00" + bytes(20))
    f["idx_zero"] = idx / "zero-images-idx3-ubyte"
    _idx(f["idx_zero"], 0x803, [0, 28, 28], b"")
    f["idx_labels_mismatch"] = idx / "mm-images-idx3-ubyte"
    _idx(f["idx_labels_mismatch"], 0x803, [64, 8, 8], bytes(64 * 64))
    _idx(idx / "mm-labels-idx1-ubyte", 0x801, [10], bytes(10))
    f["idx_ten"] = idx / "ten-images-idx3-ubyte"
    _idx(f["idx_ten"], 0x803, [10, 16, 16], bytes(10 * 256))

    # CIFAR
    for name, data in {
        "corrupt": b"\x80\x04\x95 truncated pickle",
        "malicious": pickle.dumps({"data": Evil()}, protocol=2),
        "not_dict": pickle.dumps([1, 2, 3], protocol=2),
        "missing_keys": pickle.dumps({b"batch_label": b"x"}, protocol=2),
    }.items():
        d = root / f"cifar_{name}" / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
            (d / n).write_bytes(data)
        f[f"cifar_{name}"] = d.parent
    f["cifar_missing"] = root / "cifar_missing"
    f["cifar_missing"].mkdir()

    # STL-10
    f["stl_missing"] = root / "stl_missing"
    f["stl_missing"].mkdir()
    f["stl_truncated"] = root / "stl_truncated" / "stl10_binary"
    f["stl_truncated"].mkdir(parents=True)
    (f["stl_truncated"] / "train_X.bin").write_bytes(bytes(1000))
    (f["stl_truncated"] / "train_y.bin").write_bytes(bytes(2))

    # image folders
    f["fold_empty"] = root / "fold_empty"
    f["fold_empty"].mkdir()
    f["fold_text"] = root / "fold_text"
    (f["fold_text"] / "cls").mkdir(parents=True)
    (f["fold_text"] / "cls" / "notes.txt").write_text("not an image")
    f["fold_fake"] = root / "fold_fake"
    (f["fold_fake"] / "cls").mkdir(parents=True)
    for i in range(3):
        (f["fold_fake"] / "cls" / f"{i}.jpg").write_bytes(rng.bytes(300))
    f["fold_tiny"] = root / "fold_tiny"
    for i in range(6):
        _png(f["fold_tiny"] / f"c{i % 2}" / f"{i}.png", rng)
    f["fold_truncated"] = root / "fold_truncated"
    for i in range(15):  # + the cut file: 16 images, one batch, so the cut one is drawn
        _png(f["fold_truncated"] / f"c{i % 2}" / f"{i}.png", rng)
    jpg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpg, format="JPEG")
    f["fold_truncated_file"] = f["fold_truncated"] / "c0" / "cut.jpg"
    f["fold_truncated_file"].write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    f["unl_empty"] = root / "unl_empty"
    f["unl_empty"].mkdir()

    # YAML configs
    y = root / "yaml"
    y.mkdir()
    yamls = {
        "empty": "", "comments_only": "# nothing here\n", "empty_mapping": "{}\n",
        "list_top": "- 1\n- 2\n", "scalar_top": "42\n", "invalid": "train: [1, 2\n  epochs: 3\n",
        "base_not_string": "_base_: 3\n", "base_missing": "_base_: no_such_preset_xyz\n",
        "unknown_key": "train:\n  epochz: 3\n", "section_scalar": "train: 5\n",
        "unknown_section": "trian:\n  epochs: 3\n", "tab_indent": "train:\n\tepochs: 3\n",
        "bad_type": "train:\n  batch_size: many\n",
    }
    for name, text in yamls.items():
        f[f"y_{name}"] = y / f"{name}.yaml"
        f[f"y_{name}"].write_text(text)
    f["y_circular"] = y / "circular.yaml"
    f["y_circular"].write_text(f"_base_: {f['y_circular']}\n")
    f["y_latin1"] = y / "latin1.yaml"
    f["y_latin1"].write_bytes("train:\n  epochs: 3 # caf\xe9\n".encode("latin-1"))

    f["a_file"] = root / "a_file"
    f["a_file"].write_text("x")
    f["out_dir"] = root / "existing_dir"
    f["out_dir"].mkdir()
    return f


# ------------------------------------------------------------------------------------------
# the bad-input matrix

CORRUPT = ["corrupt", "cut short"]
GRAY = {"model.in_chans": 1, "augment.mean": "[0.5]", "augment.std": "[0.25]"}


def _bad_cases(root: Path, f: dict[str, Path]) -> dict[str, Case]:
    out = root / "out"
    cases: dict[str, Case] = {}

    def pre(group: str, name: str, extra: dict, needles: list[str], source="synthetic",
            data: Path | str | None = None, absent: tuple[str, ...] = ()) -> None:
        argv = ["pretrain", "--source", source, "--out", str(out / name)]
        if data is not None:
            argv += ["--data", str(data)]
        argv += _tiny(out / name, **{"data.source": source, **extra})
        cases[name] = Case(argv, needles, group, list(absent))

    # -- settings: one bad value per key kind (the key must be named) -----------------------
    bad_values = {
        "train.accumulate": 0, "train.tau_final": 0.5, "train.steps_per_epoch": -1,
        "train.max_steps": -2, "train.threads": -1, "train.time_budget": "soon",
        "train.precision": "fp8", "train.device": "tpu", "optim.name": "rmsprop",
        "optim.momentum": 1.0, "optim.weight_decay": -1, "optim.warmup_epochs": -1,
        "optim.eta": 0, "optim.predictor_lr_mult": 0, "optim.final_lr": -1,
        "optim.grad_clip": -1, "optim.betas": "[1.0,0.5]", "optim.base_lr": ".inf",
        "augment.local_crops": -1, "augment.local_size": 4,
        "augment.local_crop_scale": "[0.5,0.1]", "augment.std": "[0,1,1]",
        "augment.mean": "[0.5,0.5]", "augment.view1.flip_p": 2,
        "augment.view2.hue": 0.9, "augment.view1.brightness": -1,
        "augment.view2.crop_ratio": "[2,1]", "augment.view1.blur_sigma": "[0,1]",
        "augment.view2.blur_kernel_frac": 0, "augment.interpolation": "nearestx",
        "model.arch": "resnet7", "model.in_chans": 0, "model.width": 0, "model.proj_dim": 0,
        "log.keep_last": 0, "log.log_every": 0, "log.knn_k": 0, "log.knn_every": -1,
        "data.synthetic_size": 0, "data.max_memory_gb": -1, "data.limit": -1,
        "optim.weight_decay_": 1, "model.widht": 8, "augment.view3.flip_p": 0.5,
        "train.epochs": "ten", "train.deterministic": "maybe", "augment.image_size": 7.5,
        "augment.view1.crop_scale": "oops",
    }
    unknown = {"optim.weight_decay_": "optim.weight_decay_", "model.widht": "model.widht",
               "augment.view3.flip_p": "augment.view3"}
    for key, value in bad_values.items():
        name = "set_" + re.sub(r"\W", "_", key) + "_" + re.sub(r"\W", "", str(value))[:8]
        pre("settings", name, {key: value}, [unknown.get(key, key.rsplit(".", 1)[-1])])
    cases["set_total_steps_and_budget"] = Case(
        ["pretrain", "--source", "synthetic", "--out", str(out / "tb")]
        + _tiny(out / "tb", **{"train.total_steps": 10, "train.time_budget": "1m"}),
        ["train.total_steps", "time_budget"], "settings")

    # -- override syntax ----------------------------------------------------------------------
    base = ["pretrain", "--source", "synthetic", "--out", str(out / "ov")] + _tiny(out / "ov")
    for name, item, needles in [
        ("no_equals", "train.epochs", ["train.epochs", "key.path=value"]),
        ("empty_key", "=3", ["=3", "empty part"]),
        ("double_dot", "train..epochs=3", ["train..epochs"]),
        ("section_as_value", "train=3", ["train"]),
        ("into_a_value", "train.epochs.x=1", ["train.epochs.x"]),
        ("list_for_int", "train.batch_size=[1,2]", ["train.batch_size"]),
        ("unknown_top", "trian.epochs=3", ["trian"]),
    ]:
        cases[f"override_{name}"] = Case(base + ["--set", item], needles, "overrides")

    # -- YAML files ---------------------------------------------------------------------------
    for name, needles in [
        ("empty", ["empty", "preset"]), ("comments_only", ["empty", "preset"]),
        ("empty_mapping", ["empty"]), ("list_top", ["mapping"]), ("scalar_top", ["mapping"]),
        ("invalid", ["not valid YAML"]), ("base_not_string", ["_base_"]),
        ("base_missing", ["no_such_preset_xyz"]), ("unknown_key", ["train.epochz"]),
        ("section_scalar", ["train"]), ("unknown_section", ["trian"]),
        ("tab_indent", ["not valid YAML"]), ("bad_type", ["train.batch_size"]),
        ("circular", ["circular"]), ("latin1", ["UTF-8"]),
    ]:
        cases[f"yaml_{name}"] = Case(["pretrain", "--config", str(f[f"y_{name}"]),
                                      "--out", str(out / "y")], [str(f[f"y_{name}"])] + needles,
                                     "yaml")
    cases["yaml_missing_file"] = Case(["pretrain", "--config", str(root / "nope.yaml")],
                                      [str(root / "nope.yaml"), "neither"], "yaml")
    cases["yaml_config_show_empty"] = Case(["config", "show", "--config", str(f["y_empty"])],
                                           [str(f["y_empty"]), "empty"], "yaml")

    # -- readers ------------------------------------------------------------------------------
    spe = {"train.steps_per_epoch": 3}
    for name, needles in [
        ("object_images", ["images", "dtype=object"]), ("object_labels", ["labels", "object"]),
        ("object_npy", ["object"]), ("no_images_key", ["pictures", "'images'"]),
        ("shape_2d", ["shape"]), ("shape_5d", ["shape"]), ("five_channels", ["channel"]),
        ("int64", ["int64"]), ("float_range", ["[0, 1]"]), ("float_nan", ["[0, 1]"]),
        ("zero_images", ["empty"]), ("float_labels", ["labels", "integers"]),
        ("label_count", ["labels"]), ("truncated", ["corrupt"]),
        ("empty", ["empty"]), ("random", ["not a NumPy"]),
        ("ten_images", ["10 images", "train.batch_size"]),
    ]:
        pre("readers", f"numpy_{name}", {}, [str(f[f"np_{name}"])] + needles, "numpy",
            f[f"np_{name}"])
    pre("readers", "numpy_ten_images_steps_per_epoch", spe,
        [str(f["np_ten_images"]), "10 images", "train.batch_size"], "numpy", f["np_ten_images"])
    pre("readers", "numpy_missing", {}, [str(root / "nope.npz"), "does not exist"], "numpy",
        root / "nope.npz")
    pre("readers", "numpy_steps_per_epoch_too_many", {"train.steps_per_epoch": 9},
        ["train.steps_per_epoch", "at most 4"], "numpy", f["np_good"])
    pre("readers", "synthetic_ten_images_steps_per_epoch", {"data.synthetic_size": 10, **spe},
        ["10 images", "train.batch_size"])
    pre("readers", "synthetic_ten_images", {"data.synthetic_size": 10},
        ["10 images", "train.batch_size"])
    pre("readers", "synthetic_accumulate_too_big", {"train.accumulate": 8},
        ["64 images", "train.accumulate=8"])
    for name, needles in [
        ("wrong_magic", ["magic"]), ("truncated", []), ("empty", []), ("bad_gzip", []),
        ("zero", ["no images"]), ("labels_mismatch", ["labels"]),
        ("ten", ["10 images", "train.batch_size"]),
    ]:
        pre("readers", f"idx_{name}", GRAY, [str(f[f"idx_{name}"])] + needles,
            "idx", f[f"idx_{name}"])
    pre("readers", "idx_missing", {}, [str(root / "nope-idx3-ubyte"), "does not exist"], "idx",
        root / "nope-idx3-ubyte")
    for name, needles in [("corrupt", ["data_batch_1", "CIFAR"]),
                          ("malicious", ["data_batch_1"]), ("not_dict", ["data_batch_1"]),
                          ("missing_keys", ["data_batch_1"]), ("missing", [str(f["cifar_missing"])])]:
        pre("readers", f"cifar_{name}", {}, needles, "cifar10", f[f"cifar_{name}"])
    pre("readers", "stl10_missing", {}, [str(f["stl_missing"])], "stl10", f["stl_missing"])
    pre("readers", "stl10_truncated", {}, ["train_X.bin"], "stl10", f["stl_truncated"].parent)
    for name, needles, extra in [
        ("missing", [str(root / "nope_dir"), "does not exist"], {}),
        ("empty", [str(f["fold_empty"]), "no class sub-folders"], {}),
        ("text", [str(f["fold_text"]), "no image files"], {}),
        ("fake", [str(f["fold_fake"]), "could be decoded"], {}),
        ("tiny", ["6 images", "train.batch_size"], {}),
        ("tiny_steps_per_epoch", ["6 images", "train.batch_size"], spe),
        ("truncated_strict", [str(f["fold_truncated_file"]), "strict=False"],
         {"data.strict": True}),
        ("truncated_strict_worker", [str(f["fold_truncated_file"]), "strict=False"],
         {"data.strict": True, "data.in_memory": False, "data.num_workers": 1}),
    ]:
        path = root / "nope_dir" if name == "missing" else f.get(f"fold_{name}") or \
            f["fold_tiny" if "tiny" in name else "fold_truncated"]
        pre("readers", f"folder_{name}", extra, needles, "folder", path)
    pre("readers", "unlabeled_folder_empty", {}, [str(f["unl_empty"])], "unlabeled_folder",
        f["unl_empty"])

    # -- checkpoints, for every command that takes one ----------------------------------------
    kinds = {  # file -> (needles, absent)
        "empty": (["corrupt", "empty"], ["--trust"]),
        "random": (["not a checkpoint"], ["--trust"]),
        "text": (["not a checkpoint"], ["--trust"]),
        "json": (["not a checkpoint"], ["--trust"]),
        "truncated_half": (CORRUPT + ["truncated"], ["--trust"]),
        "truncated_100": (CORRUPT, ["--trust"]),
        "truncated_tail": (CORRUPT, ["--trust"]),
        "zip_no_pickle": (["not a checkpoint", "data.pkl"], ["--trust"]),
        "legacy_truncated": (CORRUPT, ["--trust"]),
        "malicious": (["Python objects", "posix.system", "runs code"], []),
        "malicious_pickle": (["Python objects", "posix.system", "runs code"], []),
        "objects": (["Python objects", "numpy", "runs code"], []),
        "tensor": (["Tensor", "not a dict"], ["--trust"]),
        "list": (["list", "not a dict"], ["--trust"]),
        "missing": ([], ["--trust"]),  # "does not exist" or "no such file"
        "folder": ([], ["--trust"]),
    }
    syn = ["pretrain", "--source", "synthetic", "--out", str(out / "res")] + _tiny(out / "res")
    commands = {
        "resume": lambda p: syn + ["--resume", str(p)],
        "knn": lambda p: ["eval", "knn", "--checkpoint", str(p), "--data", "synthetic:"],
        "linear": lambda p: ["eval", "linear", "--checkpoint", str(p), "--data", "synthetic:"],
        "export": lambda p: ["export", str(p), "--out", str(out / "exported.pth")],
        "import": lambda p: ["import", str(p), str(out / "imported.pt")],
        "config_show": lambda p: ["config", "show", "--checkpoint", str(p)],
    }
    for cmd, argv in commands.items():
        for kind, (needles, absent) in kinds.items():
            p = f[f"ck_{kind}"]
            n = list(needles)
            if kind == "folder" and cmd == "resume":
                n = ["no checkpoint"]
            elif kind == "folder":
                n = ["folder" if cmd == "config_show" else ""]
            cases[f"ckpt_{cmd}_{kind}"] = Case(argv(p), [str(p)] + [x for x in n if x],
                                               "checkpoints", absent)
    cases["ckpt_resume_other_arch"] = Case(syn + ["--set", "model.width=16", "--resume",
                                                  str(f["good"])],
                                           [str(f["good"]), "model.width"], "checkpoints")
    cases["ckpt_resume_weights_only"] = Case(syn + ["--resume", str(f["ck_imported"])],
                                             [str(f["ck_imported"]), "not resumed"], "checkpoints")
    cases["ckpt_knn_width_ignored"] = Case(
        ["eval", "knn", "--checkpoint", str(f["good"]), "--width", "64", "--data", "synthetic:"],
        [str(f["good"]), "--width 64", "width 8"], "checkpoints")
    cases["ckpt_knn_in_chans_ignored"] = Case(
        ["eval", "knn", "--checkpoint", str(f["good"]), "--in-chans", "1", "--data",
         "synthetic:"], [str(f["good"]), "--in-chans 1"], "checkpoints")
    cases["ckpt_knn_small_stem_ignored"] = Case(
        ["eval", "knn", "--checkpoint", str(f["good"]), "--no-small-stem", "--data",
         "synthetic:"], [str(f["good"]), "--no-small-stem"], "checkpoints")

    # -- output paths ---------------------------------------------------------------------------
    under = f["a_file"] / "run"
    cases["out_pretrain_under_a_file"] = Case(
        ["pretrain", "--source", "synthetic", "--out", str(under)] + _tiny(under),
        [str(under), "not writable", "--out"], "outputs")
    cases["out_export_existing_dir"] = Case(
        ["export", str(f["good"]), "--format", "safetensors", "--out", str(f["out_dir"])],
        ["--out", str(f["out_dir"]), "folder"], "outputs", [".tmp"])
    cases["out_export_under_a_file"] = Case(
        ["export", str(f["good"]), "--format", "safetensors", "--out",
         str(f["a_file"] / "x.safetensors")], [str(f["a_file"])], "outputs", [".tmp"])
    cases["out_import_existing_dir"] = Case(
        ["import", str(f["good"]), str(f["out_dir"])], [str(f["out_dir"]), "folder"],
        "outputs", [".tmp"])

    # -- resources: impossible anywhere --------------------------------------------------------
    for name, extra in [("width_100000", {"model.width": 100000}),
                        ("batch_10_million", {"train.batch_size": 10_000_000}),
                        ("image_100000_px", {"augment.image_size": 100000})]:
        pre("resources", f"resources_{name}", extra, ["GiB", "needs", "train.memory_check"])
    return cases


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("adv")
    f = _make_files(root)
    cases = _bad_cases(root, f)
    errs = root / "stderr"
    errs.mkdir()
    (root / "cases.json").write_text(json.dumps({k: [{"argv": c.argv}] for k, c in cases.items()}))
    proc = subprocess.run([sys.executable, str(DRIVER), str(root / "cases.json"), str(errs)],
                          capture_output=True, text=True, timeout=900, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads((errs / "codes.json").read_text())
    results = {k: (codes[k][0], (errs / f"{k}.0.err").read_text()) for k in cases}
    return cases, results, f


def _one_line(code: int, stderr: str) -> str:
    assert code == 2, f"exit code {code}: {stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [ln for ln in stderr.splitlines() if re.match(r"byol[\w ]*: error: ", ln)]
    assert len(errors) == 1, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == errors[0]  # the error is the last word
    return errors[0]


def check_bad(case: Case, code: int, stderr: str) -> str:
    line = _one_line(code, stderr)
    for needle in case.needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    for word in case.absent:
        assert word not in line, f"{word!r} in {line!r}"
    if "--trust" in line:  # suggested only with the warning that it runs the file's code
        assert "runs code" in line, line
    return line


def _case_names() -> list[str]:
    # the names are fixed by the table; build it once against a dummy root to list them
    return sorted(_bad_cases(Path("/nonexistent"), _DummyFiles()))


class _DummyFiles(dict):
    def __missing__(self, key):
        return Path("/nonexistent") / key


BAD_NAMES = _case_names()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_input(bad, name):
    cases, results, _f = bad
    check_bad(cases[name], *results[name])


def test_no_malicious_pickle_ran(bad):
    assert not bad[2]["marker"].exists()


def test_bad_input_matrix_size(bad):
    cases, results, _f = bad
    groups: dict[str, int] = {}
    for c in cases.values():
        groups[c.group] = groups.get(c.group, 0) + 1
    held = sum(1 for k in cases if _held(cases[k], *results[k]))
    print(f"\nadversarial harness: {len(cases)} bad inputs ({groups}), {held} held")
    assert len(cases) >= 150
    assert set(cases) == set(BAD_NAMES)


def _held(case: Case, code: int, stderr: str) -> bool:
    try:
        check_bad(case, code, stderr)
        return True
    except AssertionError:
        return False


# ------------------------------------------------------------------------------------------
# faults during runs: the run stops cleanly, and --resume ends bitwise equal

FAULT_RUN = {"data.synthetic_size": 32, "train.batch_size": 8, "train.epochs": 3,
             "train.deterministic": True, "train.threads": 1, "log.log_every": 1,
             "log.save_every": 1, "log.keep_last": 10, "optim.warmup_epochs": 1}
FAULT_STEPS = 12  # 4 per epoch; saves at 4, 8, 12
FAULT_SEED = 13
FIRST_SAVE = 4


def _before_first_checkpoint(spec: dict) -> bool:
    """True when the fault strikes before any checkpoint is complete: the user then runs the
    command again (``--resume`` has nothing to continue from, and says so)."""
    f = spec.get("fault") or {}
    if f.get("type") == "signal":
        return f["sig"] == "SIGKILL" and f["at"] <= FIRST_SAVE  # (killed before its save)
    return f.get("save") == 1 or spec.get("tmpfs") == 1


def can_mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(where)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(where)], check=True)
    return ok


def _fault_table(use_tmpfs: bool) -> dict[str, dict]:
    """name -> {"runs": [fault or action, ...], "expect": exit code of the first run}. The
    random steps are drawn from a fixed seed, so a failure names a reproducible case."""
    rng = random.Random(FAULT_SEED)
    t: dict[str, dict] = {}
    for sig, at in zip(("SIGTERM", "SIGTERM", "SIGINT"), rng.sample(range(1, FAULT_STEPS), 3)):
        t[f"{sig.lower()}_at_step_{at}"] = {"fault": {"type": "signal", "sig": sig, "at": at},
                                            "expect": 130}
    for at in rng.sample(range(1, FAULT_STEPS), 3):
        t[f"sigkill_at_step_{at}"] = {"fault": {"type": "signal", "sig": "SIGKILL", "at": at},
                                      "expect": -9}
    for n in (1, 2):
        t[f"sigkill_mid_save_{n}"] = {"fault": {"type": "kill_in_save", "save": n},
                                      "expect": -9}
    t["sigkill_before_last_link_2"] = {"fault": {"type": "kill_in_link", "save": 2},
                                       "expect": -9}
    t["writer_raises_runtime_error_save_2"] = {
        "fault": {"type": "raise_in_save", "save": 2, "error": "runtime"}, "expect": 2}
    t["writer_raises_enospc_save_1"] = {
        "fault": {"type": "raise_in_save", "save": 1, "error": "enospc"}, "expect": 2}
    a, b = sorted(rng.sample(range(FIRST_SAVE, FAULT_STEPS), 2))
    t[f"sigkill_twice_at_{a}_and_{b}"] = {
        "fault": {"type": "signal", "sig": "SIGKILL", "at": a},
        "again": {"type": "signal", "sig": "SIGKILL", "at": b}, "expect": -9}
    t["sigkill_then_damaged_last_pt"] = {
        "fault": {"type": "signal", "sig": "SIGKILL", "at": 10}, "damage": True, "expect": -9}
    for n in (1, 2, 3):  # a full disk at the n-th save
        if use_tmpfs:
            t[f"disk_full_tmpfs_at_save_{n}"] = {"tmpfs": n, "expect": 2}
        else:
            t[f"disk_full_writer_at_save_{n}"] = {
                "fault": {"type": "raise_in_save", "save": n,
                          "error": "runtime" if n == 3 else "enospc"}, "expect": 2}
    return t


def _state(path: Path) -> dict:
    ck = load_checkpoint(path)
    return {"step": ck["step"], "model": ck["model"], "optimizer": ck["optimizer"]}


def _same(a: dict, b: dict) -> list[str]:
    diff = [] if a["step"] == b["step"] else [f"step {a['step']} vs {b['step']}"]
    diff += [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    diff += [f"opt {k}.{n}" for k in sa for n, v in sa[k].items() if not torch.equal(v, sb[k][n])]
    return diff


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    mnt = root / "mnt"
    use_tmpfs = can_mount_tmpfs(mnt)
    table = _fault_table(use_tmpfs)

    def argv(out: Path) -> list[str]:
        return ["pretrain", "--source", "synthetic", "--out", str(out)] + \
            _sets({**dict(item.split("=", 1) for item in tiny_overrides(out)), **FAULT_RUN})

    # the reference run first: its checkpoint size sizes the tmpfs cases
    ref = root / "reference"
    errs = root / "stderr"
    errs.mkdir()
    (root / "ref.json").write_text(json.dumps({"reference": [{"argv": argv(ref)}]}))
    proc = subprocess.run([sys.executable, str(DRIVER), str(root / "ref.json"), str(errs)],
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((errs / "codes.json").read_text())["reference"] == [0]
    ckpt_size = (ref / "last.pt").stat().st_size

    steps: dict[str, list[dict]] = {}
    mounts = []
    for name, spec in table.items():
        out = root / name
        if "tmpfs" in spec:
            m = mnt / name
            m.mkdir(parents=True)
            # room for n-1 checkpoints and the small files, not for the n-th
            size = int(ckpt_size * (spec["tmpfs"] - 0.5)) + 64 * 1024
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(m)],
                           check=True)
            mounts.append(m)
            out = m / "run"
        spec["out"] = out
        run = [{"argv": argv(out), "fault": spec.get("fault")}]
        if "again" in spec:
            run.append({"argv": argv(out) + ["--resume", str(out)], "fault": spec["again"]})
        if spec.get("damage"):
            run.append({"truncate": str(out / "last.pt"), "size": 200})
        if "tmpfs" in spec:
            run.append({"remount": str(out.parent), "size": "64M"})
        again = [] if _before_first_checkpoint(spec) else ["--resume", str(out)]
        run.append({"argv": argv(out) + again, "fault": None})
        steps[name] = run
    (root / "faults.json").write_text(json.dumps(steps))
    try:
        proc = subprocess.run([sys.executable, str(DRIVER), str(root / "faults.json"),
                               str(errs)], capture_output=True, text=True, timeout=900,
                              env=_env())
        assert proc.returncode == 0, proc.stderr[-3000:]
        codes = json.loads((errs / "codes.json").read_text())
        reference = _state(ref / "last.pt")
        results = {}
        for name, spec in table.items():
            out = spec["out"]
            n_runs = len(codes[name])
            stderr = [(errs / f"{name}.{k}.err").read_text() for k in range(n_runs)]
            final = _same(reference, _state(out / "last.pt")) if (out / "last.pt").is_file() \
                else ["no last.pt"]
            leftovers = sorted(p.name for p in out.glob(".*.tmp"))
            results[name] = (codes[name], stderr, final, leftovers)
    finally:
        for m in mounts:
            subprocess.run(["umount", str(m)], check=False)
    return table, results, use_tmpfs


FAULT_NAMES = sorted(_fault_table(False))  # same count either way; names differ for tmpfs


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(FAULT_NAMES)))
def test_fault_then_resume_is_bitwise_equal(faults, index):
    table, results, _tmpfs = faults
    name = sorted(table)[index]
    spec = table[name]
    codes, stderr, final, leftovers = results[name]
    first = codes[0]
    assert first == spec["expect"], f"{name}: exit {first}: {stderr[0][-2000:]}"
    if first == 2:  # a failed save: one line naming the checkpoint, the earlier one intact
        line = _one_line(first, stderr[0])
        assert "cannot write checkpoint" in line and "ckpt_" in line, line
        assert "intact" in line or "no earlier checkpoint" in line, line
        assert "--resume" in line or "run again" in line, line
    if first == 130:
        assert "Traceback" not in stderr[0] and "Resume with: byol pretrain" in stderr[0]
    if (spec.get("fault") or {}).get("type") == "kill_in_save":
        assert "interrupted save" in stderr[-1], stderr[-1][-2000:]  # the leftover is removed
    assert codes[-1] == 0, f"{name}: resume exit {codes[-1]}: {stderr[-1][-2000:]}"
    assert "Traceback" not in stderr[-1]
    assert final == [], f"{name}: resumed run differs from the uninterrupted one: {final[:5]}"
    assert leftovers == [], leftovers


@pytest.mark.slow
def test_fault_matrix_summary(faults):
    table, results, use_tmpfs = faults
    lost = sum(1 for name in table if results[name][2] != [] or results[name][0][-1] != 0)
    print(f"\nadversarial harness: {len(table)} faults ({'tmpfs' if use_tmpfs else 'raising writer'}"
          f" for a full disk), {lost} runs lost")
    assert lost == 0 and len(table) == len(FAULT_NAMES)


def test_reliability_doc_counts_match_the_harness():
    """docs/RELIABILITY.md states the harness's counts; they must be the table's."""
    text = DOC.read_text()
    m = re.search(r"adversarial harness.*?\|\s*bad inputs\s*\|\s*(\d+)\s*\|", text, re.S)
    assert m and int(m.group(1)) == len(BAD_NAMES), "update the bad-input count in RELIABILITY.md"
    m = re.search(r"\|\s*faults injected by the harness\s*\|\s*(\d+)\s*\|", text)
    assert m and int(m.group(1)) == len(FAULT_NAMES), "update the fault count in RELIABILITY.md"
