"""Keep freed memory in the process (glibc), so that CPU training steps do not page-fault.

Every training step frees and allocates again the same activations. glibc's ``malloc`` gives
large freed blocks back to the operating system (``munmap``, or trimming the top of its
heap), so each step writes to fresh pages, and each first write to a page is a page fault
in which the kernel zeroes it: an epoch of ``simple_cnn`` on cluttered digits took 1.1× as long
as with the memory kept, and up to 1.4× in runs where glibc's adaptive thresholds returned more
(``benchmarks/cpu_malloc.py``; ``docs/training.md``). :func:`keep_freed_memory` serves blocks of up to
32 MiB (glibc's largest setting) from the heap and keeps up to 1 GiB free at its top; the
process's peak memory, which training reaches every step, stays about the same.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**30

_LOCK = threading.Lock()
_APPLIED: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` to 32 MiB and ``M_TRIM_THRESHOLD`` to 1 GiB, once per process.

    :func:`convattn.engine.train` calls it for CPU runs. Nothing happens with another C library,
    or where ``CONVATTN_MALLOC_TUNING=0``.

    Returns:
        whether the settings are in effect in this process.
    """
    global _APPLIED
    with _LOCK:
        if _APPLIED is None:
            _APPLIED = False
            if os.environ.get("CONVATTN_MALLOC_TUNING", "1") != "0" and platform.libc_ver()[0] == "glibc":
                mallopt = ctypes.CDLL(None).mallopt
                mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
                # both or neither: a fixed trim threshold alone turns off glibc's adaptive mmap threshold,
                # and every large block would then be mapped and unmapped each step
                _APPLIED = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                )
        return _APPLIED
