"""Keep freed memory in the process instead of handing it back to the OS at every step.

On Linux, glibc's ``malloc`` returns the free top of its heap to the kernel as soon as it
exceeds ``M_TRIM_THRESHOLD`` and serves large blocks by ``mmap`` (``M_MMAP_THRESHOLD``);
both start at 128 KiB (glibc raises them as it sees large blocks freed). A sampling step allocates and frees dozens of
activation tensors of 0.1-10 MB, so memory goes back to the kernel and comes back as
fresh pages every step: each 4 KiB page faults and is zeroed by the kernel
(``python -m bench.sampling`` counts the page faults per step and times the engine and
the baseline loop with and without this setting).

:func:`keep_freed_memory` raises both thresholds once per process (``mallopt``): blocks
below 32 MiB come from the heap, and up to 256 MiB of free heap stay with the process
for the next step. The arithmetic is untouched. The cost is memory the process keeps
after a run (at most the threshold above its peak). PyTorch's CPU performance guide
recommends a caching allocator (jemalloc, tcmalloc) for the same reason; this needs no
extra library. ``RCG_KEEP_FREED_MEMORY=0`` in the environment turns it off; it does
nothing outside glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 32 << 20  # the largest value glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD_BYTES = 256 << 20
ENV_SWITCH = "RCG_KEEP_FREED_MEMORY"

_lock = threading.Lock()
_state: dict[str, object] = {"done": False, "applied": False}


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # pragma: no cover - no loadable libc
        return None
    return libc if hasattr(libc, "mallopt") else None


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds (see the module docstring) once per process;
    later calls do nothing. Returns whether the setting is in force."""
    with _lock:
        if not _state["done"]:
            _state["done"] = True
            if os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off"):
                libc = _glibc()
                if libc is not None:
                    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                    libc.mallopt.restype = ctypes.c_int
                    _state["applied"] = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                                             and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
        return bool(_state["applied"])


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has set the thresholds in this process."""
    return bool(_state["applied"])
