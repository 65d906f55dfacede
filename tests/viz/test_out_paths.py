"""``--out`` of the commands that write files is checked before any work: one line, exit 2, nothing rendered."""

import os

import pytest

import convattn.engine.inference
import convattn.viz
from convattn.cli import main


@pytest.fixture(autouse=True)
def nothing_renders(monkeypatch):
    """The commands' work raises: a check that comes after it fails the test."""
    def rendered(*args, **kwargs):
        raise AssertionError("rendered before --out was checked")

    for module, name in ((convattn.viz, "write_report"), (convattn.viz, "visualize_run"),
                         (convattn.engine.inference, "evaluate_run")):
        monkeypatch.setattr(module, name, rendered)


def _one_line(capsys, command):
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"convattn {command}: error: ")
    assert captured.err.count("\n") == 1
    return captured.err


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "taken"
    path.write_text("mine")
    return path


def test_eval_and_viz_out_onto_a_file(a_file, capsys):
    for command in (["eval", "run"], ["viz", "run"]):
        assert main([*command, "--out", str(a_file)]) == 2
        assert f"--out {a_file} is a file, expected a directory" in _one_line(capsys, command[0])
        assert main([*command, "--out", str(a_file / "sub" / "dir")]) == 2
        assert f"--out {a_file / 'sub' / 'dir'}: {a_file} is a file, expected a directory" in _one_line(
            capsys, command[0])
    assert a_file.read_text() == "mine"


def test_report_out_onto_a_directory(tmp_path, a_file, capsys):
    assert main(["report", "run", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a directory, expected a file name" in _one_line(capsys, "report")
    assert main(["report", "run", "--out", str(a_file / "r.html")]) == 2
    assert f"{a_file} is a file, expected a directory" in _one_line(capsys, "report")


def test_bench_output_files_onto_a_directory(tmp_path, capsys):
    assert main(["bench", "layers", "--layers", "se", "--csv", str(tmp_path)]) == 2
    assert f"--csv {tmp_path} is a directory, expected a file name" in _one_line(capsys, "bench")


@pytest.mark.parametrize("read_only, reason", [(True, "read-only file system"), (False, "permission denied")])
def test_out_where_nothing_can_be_written(tmp_path, monkeypatch, capsys, read_only, reason):
    flags = os.ST_RDONLY if read_only else 0
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(os, "statvfs", lambda path: type("S", (), {"f_flag": flags})())
    assert main(["viz", "run", "--out", str(tmp_path / "figs")]) == 2
    assert f"--out {tmp_path / 'figs'}: cannot write in {tmp_path} ({reason})" in _one_line(capsys, "viz")
    assert main(["report", "run", "--out", str(tmp_path / "r.html")]) == 2
    assert f"cannot write in {tmp_path} ({reason})" in _one_line(capsys, "report")
