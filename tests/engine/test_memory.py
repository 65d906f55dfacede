"""``keep_freed_memory``: freed blocks stay in the process, so allocating them again does not page-fault."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from convattn.engine.memory import keep_freed_memory

# A fresh interpreter (one thread) allocates and fills six 8 MiB tensors and frees them, 20 times (a
# training step's activations, in small), and prints the page faults of the last 19 rounds: each first
# write to a page is one (docs/training.md has what this does to a training epoch).
_PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from convattn.engine.memory import keep_freed_memory
    torch.set_num_threads(1)
    applied = keep_freed_memory() if sys.argv[1] == "keep" else False
    def step():
        return [torch.empty(2 * 2**20).fill_(1.0) for _ in range(6)]
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(19):
        step()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)
def _probe(mode, **env):
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the malloc settings are glibc's")
def test_freed_blocks_are_reused_without_page_faults():
    applied, kept = _probe("keep")
    assert applied
    _, default = _probe("default")
    assert kept * 4 < default, (kept, default)  # measured: 2,048 against 14,279
    applied, opted_out = _probe("keep", CONVATTN_MALLOC_TUNING="0")
    assert not applied and kept * 4 < opted_out, (kept, opted_out)


def test_in_effect_once_per_process():
    assert keep_freed_memory() is keep_freed_memory()
