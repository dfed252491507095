"""Process-level settings: the device to run on, and the allocator tuning that makes CPU
training faster.

glibc hands every allocation above its mmap threshold (at most 32 MiB by default) to a fresh
``mmap`` and gives it back on ``free``. A BYOL step on a CPU allocates and frees activations of
tens of MiB hundreds of times, so each one is zero-filled page by page through page faults again
and again. Keeping freed memory in the heap for reuse removes most of it: on 2 cores
(small-stem ResNet-18, 32 px, batch 256, bf16) 3.4-3.8 M page faults and 15-17 s of kernel time
became 0.6 M and 4-7 s over 6 steps, and the step ran at 40-42 instead of 29-33 images/s
(three alternating runs each, docs/RESULTS.md).
The cost: resident memory stays near its peak instead of shrinking between steps, and since
torch asks for 64-byte aligned blocks, a freed block is reused once its neighbours have merged,
so the heap settles a little above the peak (2.6 vs 2.4 GiB in that run).

``BYOL_MALLOC_TUNING=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from the heap and keep freed memory for reuse
    (mmap threshold 1 GiB, trim threshold 2 GiB, 64 MiB top pad). Once per process; a no-op
    (False) off glibc or with ``BYOL_MALLOC_TUNING=0``."""
    if os.environ.get("BYOL_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(
        mallopt(param, value)
        for param, value in ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (1 << 31) - 1),
                             (_M_TOP_PAD, 64 << 20))
    )
    log.debug("malloc tuning %s", "on" if ok else "refused")
    return ok


def resolve_device(name: str | None, local_rank: int | None = None, setting: str = "--device"):
    """``auto`` (CUDA when visible, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a torch
    device; a bare ``cuda`` becomes this process's GPU when ``local_rank`` is given (torchrun).
    Raises :class:`byol.errors.DeviceError` (a ``RuntimeError``) naming ``setting`` for an
    unknown device or when CUDA is asked for but not visible."""
    import torch

    from .errors import DeviceError

    if name is None or str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"{setting}={name} is not a device: use auto, cpu, cuda or cuda:N") \
            from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{setting}={name} but no CUDA device is visible; "
                               f"use {setting}=cpu")
        if dev.index is None and local_rank is not None:
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def available_memory(device) -> tuple[float, str]:
    """Bytes this process can still allocate on ``device`` and where that figure comes from:
    the GPU's free memory, or on a CPU the smaller of MemAvailable and what the cgroup (a
    container's memory limit, which the OOM killer enforces) leaves. ``inf`` when unknown."""
    import math

    if getattr(device, "type", str(device)) == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return float(free), f"free on {device}"
    avail, where = math.inf, "unknown"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail, where = float(line.split()[1]) * 1024, "available RAM"
                    break
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = float(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and float(limit) < 2**60 and float(limit) - usage < avail:
            avail, where = float(limit) - usage, "left under the container's memory limit"
        break
    return avail, where
