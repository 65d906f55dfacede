"""``convattn predict`` on folders and ``convattn bench`` argument checks, through ``cli.main``."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
import standin  # noqa: E402

from convattn import cli  # noqa: E402


def test_predict_takes_a_folder(tmp_path, monkeypatch, capsys):
    from PIL import Image

    standin.install(monkeypatch)
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "1", "--batch-size", "16", "--no-progress", "--out", str(run)]) == 0
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (8, 8), 90).save(folder / "b.png")
    Image.new("RGB", (9, 7), (1, 2, 3)).save(folder / "a.JPG")
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    capsys.readouterr()
    assert cli.main(["predict", str(run), str(folder), "--topk", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [Path(line).name for line in lines[::2]] == ["a.JPG", "b.png"] and len(lines) == 4

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["predict", str(run), str(empty)]) == 2
    err = capsys.readouterr().err
    assert "holds no image files" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["predict", str(run), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["bench", "layers", "--layers", "se", "--image-size", "0"], "--image-size must be >= 1, got 0"),
    (["bench", "layers", "--layers", "se", "--channels", "-3"], "--channels must be >= 1, got -3"),
    (["bench", "layers", "--layers", "se", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["bench", "models", "--models", "simple_cnn", "--image-size", "0"], "--image-size must be >= 1, got 0"),
    (["bench", "layers", "--layers", "se", "--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["bench", "models", "--models", "simple_cnn", "--in-chans", "0"], "--in-chans must be >= 1, got 0"),
    (["bench", "models", "--models", "simple_cnn", "--num-classes", "0"], "--num-classes must be >= 1, got 0"),
])
def test_bench_bad_sizes_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"convattn bench: error: {message}" and captured.out == ""


def test_bench_old_spellings_still_work(capsys):
    """``--size`` / ``--batch`` (before ``--image-size`` / ``--batch-size``) parse for one more release."""
    assert cli.main(["bench", "layers", "--layers", "se", "--size", "0", "--batch", "2"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "convattn bench layers: --size is deprecated; use --image-size",
        "convattn bench layers: --batch is deprecated; use --batch-size",
        "convattn bench: error: --image-size must be >= 1, got 0",
    ]
