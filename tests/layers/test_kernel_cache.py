"""The kernel cache's integrity: a library is loaded only when it matches the manifest written after
its build; a truncated or changed one is rebuilt, or skipped in a read-only cache, and never loaded
(a truncated shared library mapped into a process ends it with SIGBUS). OS errors are one line."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from convattn.cli import main
from convattn.layers import kernels
from convattn.layers._kernel_cache import BuildLock, check, install, manifest_of
from kernel_checks import fake_build, require

LIB = "convattn_se"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private kernel cache and no library loaded yet."""
    monkeypatch.setenv("CONVATTN_KERNELS_DIR", str(tmp_path / "kc"))
    monkeypatch.setattr(kernels, "_LOADED", {})
    monkeypatch.setattr(kernels, "_ERRORS", {})
    return tmp_path / "kc"


@pytest.fixture
def real_copy(tmp_path, monkeypatch):
    """A private cache holding a copy of this environment's real SE build and its manifest (no compile)."""
    require(LIB)
    source = kernels.build_dir(LIB)
    assert kernels.verify(LIB) is None, kernels.verify(LIB)
    monkeypatch.setenv("CONVATTN_KERNELS_DIR", str(tmp_path / "kc"))
    monkeypatch.setattr(kernels, "_LOADED", {})
    monkeypatch.setattr(kernels, "_ERRORS", {})
    target = kernels.build_dir(LIB) / f"{LIB}.so"
    target.parent.mkdir(parents=True)
    for name in (target.name, manifest_of(target).name):
        shutil.copy2(source / name, target.parent / name)
    return target


def _state(library=LIB):
    (row,) = [r for r in kernels.status() if r["library"] == library]
    return row["state"], row["reason"]


def test_a_real_build_matches_its_manifest(real_copy):
    assert check(real_copy) is None and _state() == ("built", "")
    record = json.loads(manifest_of(real_copy).read_text())
    assert record["size"] == real_copy.stat().st_size and len(record["sha256"]) == 64


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda f: os.truncate(f, 50000), "it is 50000 bytes, its manifest says"),
        (lambda f: f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 0xFF])), "sha256 differs"),
        (lambda f: manifest_of(f).unlink(), "no manifest"),
        (lambda f: manifest_of(f).write_text("{not json"), "manifest .* is unreadable"),
    ],
    ids=["truncated", "changed", "no-manifest", "bad-manifest"],
)
def test_a_library_that_does_not_match_is_corrupt_and_rebuilt(real_copy, monkeypatch, damage, reason):
    damage(real_copy)
    state, why = _state()
    assert state == "corrupt"
    assert re.search(reason, why), why
    calls = []
    monkeypatch.setattr(kernels.subprocess, "run", fake_build(calls))
    assert kernels.build([LIB]) == {LIB: real_copy}
    assert len(calls) == 1 and check(real_copy) is None and _state() == ("built", "")
    assert real_copy.stat().st_size == 0  # the (fake) new build replaced the damaged one
    assert not list(real_copy.parent.glob(".build-*"))  # its scratch folder is gone


# The part that would end the process: a damaged library must never reach dlopen. Run in a child.
_CHILD = textwrap.dedent(
    """
    import json, os, sys, warnings
    if sys.argv[1] == "read-only":  # as root chmod does not stop writes: say the folder is read-only
        real_access = os.access
        os.access = lambda path, mode, **kw: False if mode == os.W_OK else real_access(path, mode, **kw)
    import torch, convattn
    from convattn.layers import kernels
    layer, x = convattn.create_attn("se", 8), torch.randn(2, 8, 5, 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = layer(x)
        layer(x)
    w = torch.sigmoid(layer.fc2(torch.relu(layer.fc1(x.mean((2, 3), keepdim=True)))))
    row = [r for r in kernels.status() if r["library"] == "convattn_se"][0]
    print(json.dumps(dict(close=bool(torch.allclose(out, x * w)), state=row["state"], reason=row["reason"],
                          warnings=[str(c.message) for c in caught if c.category is RuntimeWarning])))
    """
)


@pytest.mark.parametrize("how", ["read-only", "locked"])
def test_a_truncated_library_is_never_loaded(real_copy, how):
    """``truncate -s 50000`` on a built library: read-only cache (skipped) or a build it cannot take
    over (another process holds the lock): one warning, the PyTorch-op path, never a signal."""
    os.truncate(real_copy, 50000)
    env = dict(os.environ, CONVATTN_BUILD_TIMEOUT="0.5")
    with BuildLock(real_copy.parent, timeout=5):  # another process's build, in the "locked" case
        proc = subprocess.run([sys.executable, "-c", _CHILD, how], env=env, capture_output=True, text=True,
                              timeout=300, cwd=Path(__file__).parent)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])  # -7 would be SIGBUS
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["close"] and result["state"] == "corrupt" and "50000 bytes" in result["reason"]
    (warning,) = result["warnings"]
    expected = "not loading .*convattn_se.so: it is 50000 bytes.*read-only" if how == "read-only" else "timed out"
    assert re.search(expected, warning), warning
    assert real_copy.stat().st_size == 50000  # nothing could replace it, and nothing loaded it


def test_read_only_cache_with_a_verified_build_loads_without_the_lock(real_copy, monkeypatch):
    """A cache filled by ``convattn kernels build`` in an image and mounted read-only: no lock is taken."""
    real_access = os.access
    monkeypatch.setattr(kernels.os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode))

    def no_lock(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(real_copy.parent))

    monkeypatch.setattr(kernels, "BuildLock", no_lock)
    assert kernels._compile(LIB) == real_copy
    real_copy.unlink()
    with pytest.raises(kernels.KernelCacheError, match=f"cannot write the kernel cache {real_copy.parent}: read-only"):
        kernels._compile(LIB)  # nothing built there: building has to write


def test_build_into_a_read_only_cache_is_one_line_exit_2(cache, monkeypatch, capsys):
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(cache)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["kernels", "build"]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"convattn kernels build: error: cannot write the kernel cache {cache}")
    assert "read-only file system" in line and "Traceback" not in captured.out + captured.err


def test_build_under_a_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CONVATTN_KERNELS_DIR", str(tmp_path / "file" / "kc"))
    assert main(["kernels", "build"]) == 2
    assert "not a directory" in capsys.readouterr().err
    monkeypatch.setattr(kernels, "_LOADED", {})
    with pytest.warns(RuntimeWarning, match="cannot write the kernel cache .*not a directory"):
        assert kernels.load(LIB) is None  # the layers: the PyTorch-op path


def test_compile_failure_still_exits_1(cache, monkeypatch, capsys):
    monkeypatch.setattr(kernels.subprocess, "run", fake_build([], ok=False))
    assert main(["kernels", "build"]) == 1
    assert "building convattn_se failed" in capsys.readouterr().out


def test_a_full_disk_while_installing_leaves_nothing_loadable(cache, monkeypatch):
    import convattn.layers._kernel_cache as kc

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(kernels.subprocess, "run", fake_build([]))
    monkeypatch.setattr(kc, "atomic_write_text", full)
    with pytest.raises(kernels.KernelCacheError, match="disk full"):
        kernels.build([LIB])
    assert _state()[0] == "corrupt" and "no manifest" in _state()[1]  # built, but never vouched for


def test_install_renames_then_writes_the_manifest(tmp_path):
    built, target = tmp_path / "scratch.so", tmp_path / "lib.so"
    built.write_bytes(b"\x7fELF" + bytes(100))
    target.write_bytes(b"old")
    manifest_of(target).write_text("{}")
    install(built, target)
    assert not built.exists() and target.read_bytes() == b"\x7fELF" + bytes(100) and check(target) is None
