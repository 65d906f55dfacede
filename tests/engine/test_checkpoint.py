import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from convattn.engine import checkpoint as C
from convattn.engine.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from convattn.exceptions import CheckpointError


def _good_state():
    return {"model": {"w": torch.arange(6.0).view(2, 3)}, "config": {"lr": 0.1, "stages": None}, "epoch": 3}


class _Touch:
    """Pickles as a call to Path.touch(marker): code that runs on unpickling."""

    def __init__(self, marker):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_round_trip_and_run_dir(tmp_path):
    save_checkpoint(_good_state(), tmp_path / "last.pt")
    ck = load_checkpoint(tmp_path)  # directory: best.pt, else last.pt
    assert ck["format"] == C.FORMAT and ck["epoch"] == 3
    assert torch.equal(ck["model"]["w"], torch.arange(6.0).view(2, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp files left


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "config": {}, "payload": _Touch(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused.*weights_only"):
        load_checkpoint(evil)
    assert not marker.exists()
    # the file really does carry code: an unsafe load would have run it
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_truncated_file_is_a_clear_error(tmp_path):
    good = save_checkpoint(_good_state(), tmp_path / "last.pt")
    data = good.read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(bad)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a convattn checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")


def test_failed_write_never_replaces_the_last_good_file(tmp_path, monkeypatch):
    path = save_checkpoint(_good_state(), tmp_path / "last.pt")
    before = path.read_bytes()

    def dying_save(obj, fh, *a, **k):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(C.torch, "save", dying_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({**_good_state(), "epoch": 4}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    # a value that weights_only could not load is rejected before anything is written
    with pytest.raises(CheckpointError, match="plain data"):
        save_checkpoint({**_good_state(), "bad": object()}, path)
    assert path.read_bytes() == before


def test_rng_state_round_trip_and_weights_only(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = get_rng_state()
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.randn(2))
    save_checkpoint({"model": {}, "config": {}, "rng": state}, tmp_path / "r.pt")
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    second = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.randn(2))
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2] and np.array_equal(first[3], second[3])
