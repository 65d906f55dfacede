import os
from pathlib import Path

import pytest

from convattn._io import atomic_open, atomic_write_bytes, atomic_write_text


def test_writes_and_creates_folders(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "b.txt", "héllo\n")
    assert p.read_text(encoding="utf-8") == "héllo\n"
    assert atomic_write_bytes(tmp_path / "c.bin", b"\x00\x01").read_bytes() == b"\x00\x01"


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = atomic_write_text(tmp_path / "keep.txt", "good")
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w") as fh:
            fh.write("half")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "good"
    assert [f.name for f in tmp_path.iterdir()] == ["keep.txt"]


def test_rejects_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "a"):
            pass


def test_new_files_follow_the_umask_and_existing_files_keep_their_mode(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
        os.umask(0o077)
        assert stat.S_IMODE(atomic_write_bytes(tmp_path / "private.bin", b"x").stat().st_mode) == 0o600
        os.chmod(p, 0o640)
        atomic_write_text(p, "y")
        assert stat.S_IMODE(p.stat().st_mode) == 0o640 and p.read_text() == "y"
    finally:
        os.umask(old)


def test_stale_temporary_files_are_removed_only_by_pattern_and_only_in_that_folder(tmp_path):
    import errno
    import tempfile

    from convattn._io import os_reason, remove_stale_temps

    # what a write killed before its rename leaves: atomic_open's own temporary name
    fd, stale = tempfile.mkstemp(prefix=".last.pt.", suffix=".tmp", dir=tmp_path)
    os.close(fd)
    keep = [tmp_path / "mine.tmp", tmp_path / ".last.pt.tmp", tmp_path / "sub" / ".x.abcdefgh.tmp"]
    keep[2].parent.mkdir()
    for p in keep:
        p.write_text("mine")
    assert remove_stale_temps(tmp_path) == [Path(stale)]
    assert all(p.exists() for p in keep)
    assert os_reason(OSError(errno.ENOSPC, "No space left on device")) == "disk full (No space left on device)"
