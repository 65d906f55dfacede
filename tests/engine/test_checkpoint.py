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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]  # no temp files left


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
    import errno

    from convattn import _io
    from convattn.exceptions import RunDirectoryError

    path = save_checkpoint(_good_state(), tmp_path / "last.pt")
    before = path.read_bytes()
    real_open = _io.os.fdopen

    def full_disk(fd, mode, **kw):  # the disk fills up while the new checkpoint is written
        fh = real_open(fd, mode, **kw)

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                fh.close()

            def write(self, data):
                fh.write(bytes(data)[:100])
                raise OSError(errno.ENOSPC, "No space left on device")

        return Full()

    monkeypatch.setattr(_io.os, "fdopen", full_disk)
    with pytest.raises(RunDirectoryError, match=r"cannot write checkpoint .*last\.pt.*disk full.* are intact"):
        save_checkpoint({**_good_state(), "epoch": 4}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]
    # a value that weights_only could not load is rejected before anything is written
    with pytest.raises(CheckpointError, match="plain data"):
        save_checkpoint({**_good_state(), "bad": object()}, path)
    assert path.read_bytes() == before


def test_a_bit_flip_is_refused_by_name_and_a_run_directory_falls_back_to_last(tmp_path):
    best = save_checkpoint(_good_state(), tmp_path / "best.pt")
    save_checkpoint({**_good_state(), "epoch": 5}, tmp_path / "last.pt")
    data = bytearray(best.read_bytes())
    data[data.find(torch.arange(6.0).numpy().tobytes()) + 6] ^= 0x01  # one bit of a weight
    best.write_bytes(bytes(data))
    flipped = torch.load(best, weights_only=True)["model"]["w"]  # torch itself loads it silently
    assert not torch.equal(flipped, torch.arange(6.0).view(2, 3))
    with pytest.raises(CheckpointError, match=r"best\.pt' is truncated or corrupt: its sha256 does not match .*best\.pt\.sha256"):
        load_checkpoint(best)
    with pytest.warns(UserWarning, match=r"best\.pt. is corrupt.*using .*last\.pt"):
        assert load_checkpoint(tmp_path)["epoch"] == 5
    C.checksum_path(best).unlink()  # checkpoints saved before checksums were recorded load unchecked
    assert load_checkpoint(best)["epoch"] == 3


def test_the_checksum_file_accepts_the_file_in_place_at_every_point_of_a_save(tmp_path, monkeypatch):
    path = save_checkpoint(_good_state(), tmp_path / "last.pt")
    from convattn import _io

    def killed_at_rename(src, dst):  # killed after the checksum file was rewritten, before the rename
        if str(dst).endswith(".pt"):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    real_replace = _io.os.replace
    monkeypatch.setattr(_io.os, "replace", killed_at_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({**_good_state(), "epoch": 4}, path)
    monkeypatch.undo()
    assert len(C.checksum_path(path).read_text().splitlines()) == 2  # the new sum and the one in place
    assert load_checkpoint(path)["epoch"] == 3
    save_checkpoint({**_good_state(), "epoch": 6}, path)
    assert load_checkpoint(path)["epoch"] == 6


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
