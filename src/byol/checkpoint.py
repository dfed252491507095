"""Checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) so that the safe loader
accepts it: ``format``, ``config`` (the resolved config as a dict), ``model`` (the BYOL state
dict: ``online.backbone.*``, ``online.projector.*``, ``predictor.*``, ``target.*``),
``optimizer``, ``step``, ``epoch``, ``rng`` and ``metrics``.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import pickletools
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, config_from_dict
from .errors import CheckpointError
from .models import build_backbone

FORMAT = "byol/1"

log = logging.getLogger("byol")

#: the name pattern of atomic_write's temporary files (".NAME.XXXX.tmp" next to NAME)
TEMP_GLOB = ".*.tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Run ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then rename it
    into place: a crash or a full disk mid-write leaves any previous file at ``path`` intact and
    never a truncated file that a loader would half-read.

    Any failure of the writer is a failed write: an ``OSError`` (full disk, I/O error) and a
    writer's own ``RuntimeError`` (torch's zip writer reports a full disk as ``[enforce fail at
    inline_container.cc] ... file write failed``) both end as an ``OSError`` naming ``path``
    (not the temporary file), after the temporary file is removed."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; name a file to write instead",
                                str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, (OSError, RuntimeError)):
            raise write_error(e, path) from e
        raise


def write_error(e: BaseException, path: str | os.PathLike) -> OSError:
    """``e`` (an OSError, or a writer's RuntimeError) as an OSError about ``path``: its reason
    on one line, and how much space is left on that file system when it looks like a full
    disk."""
    path = Path(path)
    if isinstance(e, OSError) and e.errno is not None:
        code, reason = e.errno, e.strerror or str(e)
    else:
        code = errno.EIO
        reason = " ".join(str(e).split())
        if reason.startswith("[enforce fail"):  # torch's C++ prefix says nothing to a user
            reason = reason.split("] ", 1)[-1].lstrip(". ")
        reason = f"the writer failed: {reason}" if reason else "the writer failed"
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and (code == errno.ENOSPC or free < 64 * 2**20):
        full = "" if code == errno.ENOSPC else ", so the disk is probably full"
        reason += f"; {free / 2**20:.1f} MiB free on its file system{full}"
    return OSError(code, reason, str(path))


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that an interrupted :func:`atomic_write` (SIGKILL, power
    loss) left in ``folder``: ``.NAME.XXXX.tmp`` (and ``.last.pt.tmp``). Returns them."""
    removed = []
    for p in sorted(Path(folder).glob(TEMP_GLOB)):
        if p.is_file() and (p.name.startswith((".ckpt_", ".last.pt."))):
            try:
                p.unlink()
                removed.append(p)
            except OSError as e:
                log.warning("could not delete the leftover temporary file %s (%s)", p,
                            e.strerror or e)
    return removed


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write)


# ---------------------------------------------------------------------------------------------
# why a file does not load: decided from its bytes, never from torch's error text


#: pickle globals that a tensors-only checkpoint may name (torch's weights_only loader takes
#: these); any other global is a Python object that only full unpickling (code) can build
_TENSOR_MODULES = ("torch", "collections", "_codecs")


def _pickle_globals(data: bytes | io.BufferedIOBase, count: int = 1) -> tuple[list[str], int]:
    """The globals (``module.name``) named by the first ``count`` consecutive pickles in
    ``data``, and how many of those pickles are complete."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    found: list[str] = []
    for i in range(count):
        strings: list[str] = []
        memo: dict[int, Any] = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    found.append(".".join(strings[-2:]))
                elif isinstance(arg, str) and "UNICODE" in op.name:
                    strings.append(arg)
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                    memo[int(arg)] = strings[-1]
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and int(arg) in memo:
                    strings.append(memo[int(arg)])
        except Exception:  # noqa: BLE001 - any parse failure: not (or no longer) a pickle
            return found, i
    return found, count


def _unsafe(names: list[str]) -> list[str]:
    out = []
    for n in names:
        if n.split(".")[0] not in _TENSOR_MODULES and n not in out:
            out.append(n)
    return out


def diagnose(path: str | os.PathLike, error: BaseException | None = None) -> tuple[str, str]:
    """Why ``path`` does not load with ``weights_only=True``: ``(kind, detail)``, where kind is

    * ``"corrupt"``: empty, truncated or damaged (a PyTorch zip archive cut short, a member that
      fails its CRC check, a pickle that does not parse);
    * ``"foreign"``: not a checkpoint at all (neither a PyTorch zip archive nor a pickle);
    * ``"objects"``: a complete pickle that names Python objects besides tensors (``detail``
      lists them); only full unpickling, which runs code from the file, can read it;
    * ``"other"``: a complete checkpoint this torch cannot read (``detail``: torch's reason).
    """
    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        return "corrupt", "the file is empty (0 bytes)"
    with open(p, "rb") as f:
        head = f.read(4)
    lines = [ln for ln in str(error).splitlines() if ln.strip()] if error is not None else []
    reason = (f"{type(error).__name__}: {' '.join(lines[0].split())[:200]}" if lines
              else type(error).__name__ if error is not None else "")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as z:
                pkl = [n for n in z.namelist() if n.endswith("data.pkl")]
                if not pkl:
                    return "foreign", "a zip archive, but not a PyTorch checkpoint (no data.pkl)"
                bad = z.testzip()
                if bad is not None:
                    return "corrupt", f"damaged: the archive member {bad} fails its CRC check"
                names, complete = _pickle_globals(z.read(pkl[0]))
        except zipfile.BadZipFile:
            return "corrupt", f"a zip archive without its end record: truncated at {size} bytes"
        except (EOFError, OSError, ValueError, NotImplementedError) as e:
            return "corrupt", f"a damaged zip archive ({type(e).__name__}: {e})"
        if not complete:
            return "corrupt", "damaged: its data.pkl is not a complete pickle"
    elif head[:1] == b"\x80":  # a pickle; torch's legacy format is 5 pickles, then the data
        legacy = head == b"\x80\x02\x8a\x0a"  # (the first holds torch's magic number)
        with open(p, "rb") as f:
            names, complete = _pickle_globals(f, count=5 if legacy else 1)
        if complete < (5 if legacy else 1):
            return "corrupt", "a pickle that is damaged or truncated"
    else:
        return "foreign", f"neither a PyTorch zip archive nor a pickle (starts with {head!r})"
    unsafe = _unsafe(names)
    if unsafe:
        shown = ", ".join(unsafe[:4]) + (f" and {len(unsafe) - 4} more" if len(unsafe) > 4 else "")
        return "objects", shown
    return "other", reason or "unknown reason"


def unreadable_message(path: str | os.PathLike, kind: str, detail: str,
                       trust_flag: str | None = None) -> str:
    """The one line for a file that does not load: what it is, and what to do. ``--trust`` is
    suggested only for a complete pickle with Python objects in it (and only where the command
    has ``trust_flag``), with the warning that it runs code from the file."""
    if kind == "corrupt":
        return (f"checkpoint '{path}' cannot be read: it is corrupt ({detail}); it was probably "
                "cut short by a copy, a download or a full disk. Use an intact copy (or an "
                "earlier ckpt_*.pt of the run)")
    if kind == "foreign":
        return (f"checkpoint '{path}' cannot be read: it is not a checkpoint ({detail}). Is it a "
                "byol, mmselfsup or torchvision checkpoint? Convert others with `byol import`")
    if kind == "objects":
        fix = (f"only if you trust where it came from, re-run with {trust_flag} (full unpickling "
               "runs code from the file)" if trust_flag else
               "byol checkpoints hold only tensors, so it is not one; weights of other toolkits "
               "can be converted with `byol import --trust` if you trust the file (full "
               "unpickling runs code from it)")
        return (f"checkpoint '{path}' holds Python objects besides tensors ({detail}), which the "
                f"safe loader does not build; {fix}")
    return (f"checkpoint '{path}' cannot be read by this version of torch ({detail}). Is it a "
            "byol, mmselfsup or torchvision checkpoint? Convert others with `byol import`")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    trust_flag: str | None = None) -> dict:
    """A checkpoint as a dict, read with ``weights_only=True``. A file that does not load is a
    :class:`CheckpointError` saying whether it is corrupt, not a checkpoint, or a pickle with
    Python objects (``trust_flag``: the command's flag that allows full unpickling, if any)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        kind, detail = diagnose(path, e)
        raise CheckpointError(unreadable_message(path, kind, detail, trust_flag)) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(ckpt).__name__}, not a dict")
    return ckpt


def load_state_reporting(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True
) -> tuple[list[str], list[str]]:
    """load_state_dict that explains shape mismatches and missing/unexpected keys by name."""
    own = module.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        raise CheckpointError(
            f"'{source}' was made for another architecture: {len(mismatched)} tensors differ in "
            f"shape, e.g. {'; '.join(mismatched[:3])}. Use the model settings it was trained with."
        )
    result = module.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"'{source}' does not fit the model: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    return missing, unexpected


def is_byol_checkpoint(obj: Any) -> bool:
    """Whether a loaded checkpoint has byol's layout, by its keys: ``format`` is
    ``byol/1`` and it holds ``config`` and ``model``. Anything else is a foreign layout
    (:mod:`byol.weights.foreign`)."""
    return (isinstance(obj, dict) and obj.get("format") == FORMAT and "config" in obj
            and isinstance(obj.get("model"), dict))


def backbone_from_checkpoint(
    ckpt: dict, source: str, which: str = "online"
) -> tuple[nn.Module, Config]:
    """The ``which`` (online / target) backbone of a loaded byol checkpoint, and its config."""
    if which not in ("online", "target"):
        raise CheckpointError(f"which={which!r}: choose 'online' or 'target'")
    cfg = config_from_dict(ckpt["config"], where=source)
    m = cfg.model
    backbone = build_backbone(m.arch, m.in_chans, m.small_stem, m.width, m.stem_stride,
                              m.last_stage_width, m.feature_bn, m.feature_whiten)
    prefix = f"{which}.backbone."
    state = {k[len(prefix) :]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    load_state_reporting(backbone, state, source)
    return backbone, cfg


def load_backbone(
    path: str | os.PathLike, which: str = "online", map_location: str = "cpu"
) -> tuple[nn.Module, Config]:
    """The pretrained backbone of a byol checkpoint, and the run's :class:`byol.config.Config`.

    ``which``: ``online`` (the encoder BYOL keeps) or ``target`` (its EMA).
    """
    ckpt = load_checkpoint(path, map_location)
    if not is_byol_checkpoint(ckpt):
        raise CheckpointError(
            f"'{path}' is not a byol checkpoint (no format '{FORMAT}'); "
            "convert mmselfsup/torchvision weights with `byol import` first"
        )
    return backbone_from_checkpoint(ckpt, str(path), which)
