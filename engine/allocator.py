"""Keep freed memory in the process instead of handing it back to the OS at every step.

On Linux, glibc's ``malloc`` returns the free top of its heap to the kernel as soon as it
exceeds ``M_TRIM_THRESHOLD`` and serves large blocks by ``mmap`` (``M_MMAP_THRESHOLD``);
both start at 128 KiB (glibc raises them as it sees large blocks freed). A sampling step
allocates and frees dozens of activation tensors of 0.1-10 MB, so memory goes back to the
kernel and comes back as fresh pages every step: each 4 KiB page faults and is zeroed
by the kernel (``python -m bench.sampling`` counts the page faults per step and times the
engine and the baseline loop with and without this setting).

:func:`keep_freed_memory` raises both thresholds (``mallopt``) for the rest of the process:
blocks below 32 MiB come from the heap, and up to 256 MiB of free heap top stays with the
process for the next step. ``engine.sampler.sample`` calls it at its first call, and the
lab, ``survey create`` and the training commands at start-up on their main thread (glibc
documents ``mallopt`` as not thread-safe; the call takes a lock of its own and runs once).
Threads created after the call share the main heap (``M_ARENA_MAX`` 1): a thread's own
malloc arena gives whole heaps back to the kernel whatever the trim threshold, so the lab
server's sampling threads would keep faulting. The arithmetic is untouched. The cost is
memory the process keeps after a run: freed blocks stay in the heap (up to the trim
threshold at its top, and a live block keeps the free ones below it from being returned). PyTorch's CPU performance
guide recommends a caching allocator (jemalloc, tcmalloc) for the same reason; this needs
no extra library. ``RCG_KEEP_FREED_MEMORY=0`` in the environment turns it off; it does
nothing outside glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD_BYTES = 32 << 20  # the largest value glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD_BYTES = 256 << 20
ENV_SWITCH = "RCG_KEEP_FREED_MEMORY"

_lock = threading.Lock()
_state: dict[str, object] = {"done": False, "applied": False}


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    for name in ("libc.so.6", None):  # None: the symbols already loaded into this process
        try:
            libc = ctypes.CDLL(name)
        except OSError:  # pragma: no cover - no loadable libc
            continue
        if hasattr(libc, "mallopt"):
            return libc
    return None


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds and one malloc arena (see the module docstring)
    once per process; later calls do nothing. Returns whether the setting is in force."""
    with _lock:
        if not _state["done"]:
            _state["done"] = True
            if os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off"):
                libc = _glibc()
                if libc is not None:
                    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                    libc.mallopt.restype = ctypes.c_int
                    _state["applied"] = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                                             and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
                                             and libc.mallopt(M_ARENA_MAX, 1))
        return bool(_state["applied"])


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has set glibc's malloc in this process."""
    return bool(_state["applied"])
