"""Embeddings of every image of a folder or array: ``byol embed`` and :func:`byol.embed`.

The pooled backbone features (or the projector's output) of a byol checkpoint, one row per
image in the reader's order (sorted file paths for folders, array order for files), with the
image's path (``FILE#INDEX`` for arrays) and label (-1 when unlabeled). Written as ``.npz``
(``embeddings``, ``paths``, ``labels``, ``classes``) and, when pyarrow is installed, as
Parquet next to it (columns ``path``, ``label``, ``embedding``). An image that cannot be
decoded is an error naming it: a row must never carry another file's features.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import EvalError

log = logging.getLogger("byol")

HEADS = ("backbone", "projector")


def _open(data: str, source: str | None, split: str, image_size: int, limit: int):
    from .data import open_source
    from .data.detect import detect_data

    if source is None:
        d = detect_data(data)
        source, path, split = d.source, d.path, d.split if split == "train" else split
    else:
        path = data
    # folders stay file lists: each row keeps its exact file path
    return open_source(source, path, split, image_size=image_size, in_memory=False,
                       limit=limit, strict=True, split_option="--split")


def _paths(src: Any) -> list[str]:
    if hasattr(src, "files"):
        return [str(f) for f in src.files]
    return [f"{src.name}#{i}" for i in range(len(src))]


def _batches(src: Any, image_size: int, batch_size: int, num_workers: int | None):
    from .data import FolderEvalDataset
    from .eval.features import num_workers_default

    if hasattr(src, "images"):
        for start in range(0, len(src), batch_size):
            yield src.images[start : start + batch_size], 256 / 224
        return
    ds = FolderEvalDataset(src, image_size, strict=True, in_chans=3)
    workers = num_workers_default() if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False,
                                         num_workers=workers)
    for x, _ in loader:
        yield x, 1.0  # FolderEvalDataset returns the evaluation crop already


def _projector(checkpoint: str, which: str, dim: int) -> torch.nn.Module:
    from .checkpoint import is_byol_checkpoint, load_checkpoint, load_state_reporting
    from .config import config_from_dict
    from .models.heads import MLP

    ckpt = load_checkpoint(checkpoint)
    if not is_byol_checkpoint(ckpt):
        raise EvalError(f"--head projector needs a byol checkpoint; {checkpoint} is another "
                        "layout (use --head backbone)")
    m = config_from_dict(ckpt["config"], checkpoint).model
    head = MLP(dim, m.proj_hidden_dim, m.proj_dim)
    prefix = f"{which}.projector."
    load_state_reporting(head, {k[len(prefix):]: v for k, v in ckpt["model"].items()
                                if k.startswith(prefix)}, checkpoint)
    return head


@torch.no_grad()
def embed(checkpoint: str, data: str, out: str | None = None, *, source: str | None = None,
          split: str = "train", head: str = "backbone", which: str = "online",
          batch_size: int = 256, device: str = "auto", precision: str = "auto",
          progress: bool = True, num_workers: int | None = None, limit: int = 0
          ) -> dict[str, Any]:
    """Embed every image of ``data`` (a folder or file; the reader is detected unless
    ``source`` is given) with ``checkpoint``'s ``which`` encoder.

    ``head``: ``backbone`` (pooled features) or ``projector`` (BYOL's projection of them).
    Returns ``{"embeddings": float32 [N, D], "paths": [...], "labels": int64 [N],
    "classes": [...] | None, "files": [written paths]}``; with ``out`` (a ``.npz`` path) the
    arrays are written there, and to ``out`` with ``.parquet`` when pyarrow is installed.
    """
    from .eval.features import autocast_context, resolve_device
    from .eval.loading import load_eval_model
    from .eval.transforms import eval_transform

    if head not in HEADS:
        raise EvalError(f"--head {head!r}: choose {' or '.join(HEADS)}")
    if batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {batch_size}")
    model = load_eval_model(checkpoint, None, which=which)
    dev = resolve_device(device)
    src = _open(data, source, split, model.image_size, limit)
    proj = (_projector(checkpoint, which, model.backbone.num_features).to(dev).eval()
            if head == "projector" else None)
    backbone = model.backbone.to(dev).eval()
    n = len(src)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"embed {Path(data).name}", unit="img")
    chunks: list[torch.Tensor] = []
    try:
        for xb, ratio in _batches(src, model.image_size, batch_size, num_workers):
            x = eval_transform(xb.to(dev), model.image_size, model.mean, model.std, ratio,
                               model.in_chans)
            with autocast_context(dev, precision):
                f = backbone(x).flatten(1)
                if proj is not None:
                    f = proj(f)
            chunks.append(f.float().cpu())
            if bar is not None:
                bar.update(len(xb))
    finally:
        if bar is not None:
            bar.close()
    emb = torch.cat(chunks).numpy()
    labels = (src.labels.numpy() if src.labels is not None
              else np.full(n, -1, dtype=np.int64)).astype(np.int64)
    result: dict[str, Any] = {"embeddings": emb, "paths": _paths(src), "labels": labels,
                              "classes": src.classes, "files": []}
    if out:
        result["files"] = write_embeddings(result, out)
    return result


def write_embeddings(result: dict[str, Any], out: str) -> list[str]:
    """``out`` as ``.npz`` and, with pyarrow, the same rows as ``.parquet``; the written paths."""
    from .checkpoint import atomic_write

    path = Path(out)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    arrays = {"embeddings": result["embeddings"], "paths": np.array(result["paths"]),
              "labels": result["labels"]}
    if result.get("classes"):
        arrays["classes"] = np.array(result["classes"])

    def write_npz(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write_npz)
    written = [str(path)]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        log.info("pyarrow is not installed: wrote %s only (pip install pyarrow for Parquet)", path)
        return written
    table = pa.table({"path": result["paths"], "label": result["labels"],
                      "embedding": list(result["embeddings"])})
    pq_path = path.with_suffix(".parquet")
    atomic_write(pq_path, lambda tmp: pq.write_table(table, tmp))
    written.append(str(pq_path))
    return written
