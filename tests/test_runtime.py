"""The CPU runtime settings: freed activations are reused instead of faulted in again, and
subnormal floats are flushed to zero while training."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

from byol.runtime import flush_denormals

PROBE = r"""
import resource, sys, torch
from byol.runtime import keep_freed_memory
on = keep_freed_memory()
def faults_of_one_round():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(96 * 2**20, dtype=torch.uint8)  # 96 MiB, above glibc's largest mmap threshold
    x.fill_(1)  # touch every page
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
# torch asks for 64-byte aligned blocks, so a freed block is a little too small for the same
# request again until neighbours merge: glibc reaches its steady state after a few rounds
print(int(on), *[faults_of_one_round() for _ in range(16)])
"""


def _probe(env_value: str) -> tuple[bool, list[int]]:
    """(tuning applied, page faults of each round)."""
    env = {**os.environ, "BYOL_MALLOC_TUNING": env_value}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                         timeout=120, check=True).stdout.split()
    return out[0] == "1", [int(v) for v in out[1:]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_freed_memory_is_reused_without_page_faults():
    on, faults_tuned = _probe("1")
    off, faults_default = _probe("0")
    assert on and not off
    pages = 96 * 2**20 // 4096
    # glibc's default maps a fresh block each time and faults every page in again
    assert all(f > pages // 2 for f in faults_default[-4:])
    # tuned, the freed blocks are handed back already mapped
    assert all(f < pages // 10 for f in faults_tuned[-4:]), faults_tuned


def _subnormal_survives() -> bool:
    """Whether CPU arithmetic keeps subnormal floats in every thread of the OpenMP pool: 1e-40
    (below float32's 1.2e-38) as 4M products, which torch splits between the threads."""
    x = torch.full((4_000_000,), 1e-20)
    kept = (x * x) != 0
    if kept.all():
        return True
    assert not kept.any(), "some threads flush subnormals and others do not"
    return False


@pytest.fixture
def two_thread_pool():
    """Two OpenMP threads, both started before any flushing (the fixture in conftest restores
    the thread count)."""
    torch.set_num_threads(2)
    a = torch.randn(512, 512)
    (a @ a).sum()


needs_flush = pytest.mark.skipif(not torch.set_flush_denormal(False),
                                 reason="this CPU cannot flush subnormals")


@needs_flush
def test_flush_denormals_reaches_every_thread_of_the_pool(two_thread_pool):
    assert _subnormal_survives()  # torch's default keeps them
    assert flush_denormals(True)
    assert not _subnormal_survives()  # in the pool's other thread as well, started before
    assert torch.tensor([1e-323], dtype=torch.float64).item() == 0.0
    flush_denormals(False)
    assert _subnormal_survives()


@needs_flush
@pytest.mark.parametrize("setting, flushed", [(None, True), ("false", False)])
def test_trainer_flushes_subnormals_unless_told_not_to(tmp_path, two_thread_pool, setting,
                                                        flushed):
    from byol.engine import Trainer

    extra = {"train.threads": 2} if setting is None else {"train.threads": 2,
                                                          "train.flush_denormal": setting}
    Trainer(tiny_config(tmp_path, **extra))
    assert _subnormal_survives() is not flushed
