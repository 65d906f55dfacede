"""``keep_freed_memory``: freed blocks stay in the process, so allocating them again does not page-fault."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from convattn.engine.memory import keep_freed_memory

# A fresh interpreter mallocs six 8 MiB blocks, writes them and frees them (a training step's activations,
# in small), 11 times, and prints the page faults of the last 10 rounds (each first write to a page is
# one: 122,880 if every page faults) and the free memory left at the top of the heap, in MiB.
# docs/training.md has what the setting does to a training epoch.
_PROBE = textwrap.dedent(
    """
    import ctypes, resource, sys
    from convattn.engine.memory import keep_freed_memory

    applied = keep_freed_memory() if sys.argv[1] == "keep" else False
    fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    MallInfo2 = type("MallInfo2", (ctypes.Structure,), {"_fields_": [(f, ctypes.c_size_t) for f in fields]})
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 8 * 2**20

    def step():
        blocks = [libc.malloc(size) for _ in range(6)]
        for b in blocks:
            ctypes.memset(b, 1, size)
        for b in reversed(blocks):
            libc.free(b)

    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(applied, faults, libc.mallinfo2().keepcost >> 20)
    """
)
_PAGES = 10 * 6 * 2048  # 4 KiB pages written in the 10 rounds


def _probe(mode, **env):
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the malloc settings are glibc's")
def test_freed_blocks_are_reused_without_page_faults():
    applied, faults, kept_mib = _probe("keep")
    assert applied and faults < _PAGES // 100 and kept_mib >= 40, (faults, kept_mib)
    for env in ({}, {"CONVATTN_MALLOC_TUNING": "0"}):  # glibc's defaults: the heap is trimmed, every page faults
        applied, faults, kept_mib = _probe("default" if not env else "keep", **env)
        assert not applied and faults > _PAGES // 2 and kept_mib < 8, (env, faults, kept_mib)


def test_in_effect_once_per_process():
    assert keep_freed_memory() is keep_freed_memory()
