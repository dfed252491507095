"""The CPU allocator setting: freed activations are reused instead of faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
