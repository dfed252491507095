"""Property tests (hypothesis): malformed configs, image files and IDX files end in the library's
own error types (ConfigError, DataError, a BadImageWarning) -- never in another exception."""

from __future__ import annotations

import dataclasses
import gzip
import io
import itertools
import struct
import tempfile
import warnings
from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from byol.config import CHOICES, Config, ConfigError, dump_yaml, load_config
from byol.data import (
    ArraySource,
    BadImageWarning,
    DataError,
    FileSource,
    FolderViewsDataset,
    open_source,
    read_idx,
)

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_counter = itertools.count()


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def _fresh(scratch: Path) -> Path:
    p = scratch / f"ex{next(_counter)}"
    p.mkdir()
    return p


# ------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from([c for values in CHOICES.values() for c in values] + ["yes", "1e-6", ""]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.one_of(st.text(max_size=6), st.integers(), st.booleans()), inner,
                      max_size=3),
    max_leaves=8,
)
plausible_value = st.one_of(
    scalars, st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3),
    st.lists(st.integers(-3, 3), max_size=3),
)


def section(cls: type) -> st.SearchStrategy[dict]:
    """Dicts with mostly real keys of a config section (values plausible or junk), some junk
    keys; nested sections recurse."""
    hints = get_type_hints(cls)
    optional = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        sub = section(tp) if dataclasses.is_dataclass(tp) else plausible_value
        optional[f.name] = st.one_of(sub, junk)
    real = st.fixed_dictionaries({}, optional=optional)
    extra = st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), junk, max_size=2)
    return st.one_of(real, st.tuples(real, extra).map(lambda t: {**t[0], **t[1]}))


configs = st.one_of(
    section(Config),
    st.tuples(section(Config), st.sampled_from(["fmnist_quick", "nope", "", 3, None])).map(
        lambda t: {**t[0], "_base_": t[1]}),
    junk,
)


def _load_or_config_error(*args) -> Config | None:
    try:
        cfg = load_config(*args)
    except ConfigError:
        return None
    assert isinstance(cfg, Config)
    return cfg


@SETTINGS
@given(raw=configs)
def test_random_yaml_configs_raise_only_config_error(scratch, raw):
    path = _fresh(scratch) / "c.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    cfg = _load_or_config_error(str(path))
    if cfg is not None:  # what loads, dumps and reloads to the same config
        again = path.with_name("again.yaml")
        again.write_text(dump_yaml(cfg))
        assert load_config(str(again)) == cfg


@SETTINGS
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(
    lambda b: b.decode("latin1"))))
def test_random_yaml_text_raises_only_config_error(scratch, text):
    path = _fresh(scratch) / "c.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _load_or_config_error(str(path))


DOTTED_KEYS = []


def _dotted(cls: type, prefix: str) -> None:
    for f in dataclasses.fields(cls):
        tp = get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            _dotted(tp, f"{prefix}{f.name}.")
        else:
            DOTTED_KEYS.append(prefix + f.name)


_dotted(Config, "")

set_items = st.one_of(
    st.text(max_size=40),
    st.tuples(st.sampled_from(DOTTED_KEYS) | st.text(max_size=12), st.text(max_size=12)).map(
        "=".join),
    st.tuples(st.sampled_from(DOTTED_KEYS), plausible_value | junk).map(
        lambda kv: f"{kv[0]}={yaml.safe_dump(kv[1], default_flow_style=True).strip()}"),
)


@SETTINGS
@given(items=st.lists(set_items, min_size=1, max_size=4))
def test_random_set_overrides_raise_only_config_error(items):
    _load_or_config_error(None, items)
    _load_or_config_error("fmnist_quick", items)


# ------------------------------------------------------------------------------------------
# image files
# ------------------------------------------------------------------------------------------


def _encoded(fmt: str, size: tuple[int, int], mode: str) -> bytes:
    rng = np.random.default_rng(len(fmt) + size[0])
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format=fmt)
    return buf.getvalue()


VALID = [_encoded("PNG", (12, 10), "RGB"), _encoded("JPEG", (16, 16), "RGB"),
         _encoded("PNG", (9, 14), "L"), _encoded("GIF", (8, 8), "L")]
MAGICS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF"]

image_bytes = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.sampled_from(MAGICS), st.binary(max_size=300)).map(b"".join),
    # a real image, cut somewhere and followed by junk
    st.tuples(st.sampled_from(VALID), st.floats(0, 1), st.binary(max_size=40)).map(
        lambda t: t[0][: int(len(t[0]) * t[1])] + t[2]),
    # a real image with a few bytes overwritten
    st.tuples(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 10**6),
                                                        st.integers(0, 255)), max_size=6)).map(
        lambda t: bytes(_flip(t[0], t[1]))),
    st.sampled_from(VALID),
)


def _flip(data: bytes, edits) -> bytearray:
    out = bytearray(data)
    for pos, val in edits:
        out[pos % len(out)] = val
    return out


@SETTINGS
@given(files=st.lists(st.tuples(st.sampled_from([".jpg", ".png", ".gif"]), image_bytes),
                      min_size=1, max_size=4),
       strict=st.booleans(), in_memory=st.booleans())
def test_random_image_bytes_load_or_data_error(scratch, files, strict, in_memory):
    root = _fresh(scratch)
    for i, (ext, data) in enumerate(files):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        (root / f"c{i % 2}" / f"f{i}{ext}").write_bytes(data)
    # a corrupt header may declare a huge image: keep the decompression-bomb guard tight
    old_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, 1_000_000
    try:
        _open_folder(root, len(files), strict, in_memory)
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def _open_folder(root: Path, n_files: int, strict: bool, in_memory: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            src = open_source("folder", str(root), image_size=8, strict=strict,
                              in_memory=in_memory)
        except DataError:
            return
        if isinstance(src, ArraySource):
            assert src.images.dtype == torch.uint8
            assert src.images.shape[1:] in ((1, 8, 8), (3, 8, 8))
            assert 1 <= len(src) <= n_files
            return
        assert isinstance(src, FileSource) and len(src) == n_files
        ds = FolderViewsDataset(src, 8, strict=strict)
        for i in range(len(src)):
            try:
                v1, v2, label = ds[i]
            except DataError:
                continue
            assert v1.shape == v2.shape == (3, 8, 8) and label in (0, 1)


# ------------------------------------------------------------------------------------------
# IDX files
# ------------------------------------------------------------------------------------------


def _idx(magic: int, dims: list[int], payload: bytes) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + payload


idx_images = st.one_of(
    st.binary(max_size=200),
    # a right or wrong magic, small dims, a payload of about (or exactly) the declared size
    st.tuples(st.sampled_from([0x803, 0x801, 0x802, 0x80803, 0x0]),
              st.lists(st.integers(0, 6), min_size=3, max_size=3),
              st.integers(-3, 3), st.binary(max_size=8)).map(
        lambda t: _idx(t[0], t[1], bytes(max(0, int(np.prod(t[1])) + t[2])))),
    st.tuples(st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=3),
              st.binary(max_size=64)).map(lambda t: _idx(0x803, t[0], t[1])),
)
idx_labels = st.one_of(
    st.none(), st.binary(max_size=40),
    st.tuples(st.integers(0, 8), st.sampled_from([0x801, 0x803])).map(
        lambda t: _idx(t[1], [t[0]], bytes(range(t[0])))),
)


@SETTINGS
@given(images=idx_images, labels=idx_labels, gz=st.booleans(), limit=st.integers(0, 3))
def test_random_idx_bytes_load_or_data_error(scratch, images, labels, gz, limit):
    root = _fresh(scratch)
    pack = gzip.compress if gz else (lambda b: b)
    path = root / "t-images-idx3-ubyte"
    path.write_bytes(pack(images))
    if labels is not None:
        (root / "t-labels-idx1-ubyte").write_bytes(pack(labels))
    try:
        src = read_idx(path, limit=limit)
    except DataError:
        return
    n, h, w = struct.unpack(">III", images[4:16])
    assert src.images.shape == (min(n, limit) if limit else n, 1, h, w)
    if src.labels is not None:
        assert len(src.labels) == len(src.images)
    # and the same through open_source
    assert len(open_source("idx", str(path), limit=limit)) == len(src)
