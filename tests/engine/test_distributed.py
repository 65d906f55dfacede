"""Two CPU processes under torchrun (gloo) end with identical weights; only rank 0 writes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convattn.engine import load_checkpoint

RUNNER = Path(__file__).with_name("run_standin.py")


@pytest.mark.slow
def test_two_process_ddp_ranks_end_identical(tmp_path):
    env = {**os.environ, "CONVATTN_TEST_RANK_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           str(RUNNER), "train", "--epochs", "2", "--batch-size", "8", "--lr", "0.2", "--device", "cpu",
           "--no-progress", "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["world_size"] == 2
    # 96 images over 2 ranks of batch 8: 6 steps per epoch
    assert ck["step"] == 12
    for k in r0:
        assert torch.equal(ck["model"][k], r0[k]), k
    assert proc.stdout.count("test_acc") == 1  # rank 0 alone reports
