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


@pytest.fixture(scope="module")
def standin_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    with pytest.MonkeyPatch.context() as mp:
        standin.install(mp)
        assert cli.main(["train", "--epochs", "1", "--batch-size", "16", "--no-progress", "--out", str(run)]) == 0
    return run


def _ramp(h, w):
    import numpy as np

    return np.linspace(0, 1, h * w).reshape(h, w)


def test_predict_reads_16bit_and_float_images_by_their_range(standin_run, tmp_path, monkeypatch):
    """The stand-in run's inputs are 8x8, mean 0, std 1: ``load_image`` gives the 0-1 image itself."""
    import numpy as np
    from PIL import Image

    from convattn.engine import load_run
    from convattn.engine.inference import load_image, predict_images

    standin.install(monkeypatch)
    Image.fromarray(np.round(_ramp(32, 48) * 65535).astype(np.uint16)).save(tmp_path / "ramp16.png")
    Image.fromarray(_ramp(32, 48).astype(np.float32)).save(tmp_path / "ramp.tif")
    Image.fromarray(np.round(_ramp(32, 48) * 255).astype(np.uint8)).save(tmp_path / "ramp8.png")
    model, _ = load_run(standin_run)
    means = {name: load_image(tmp_path / name, model.data_info).mean().item()
             for name in ("ramp16.png", "ramp.tif", "ramp8.png")}
    assert means == pytest.approx({"ramp16.png": 0.5, "ramp.tif": 0.5, "ramp8.png": 0.5}, abs=0.01)  # not 0.983, 0
    top = {Path(r["image"]).name: dict(r["top"]) for r in predict_images(model, model.data_info, [tmp_path], topk=3)}
    assert top["ramp16.png"] == pytest.approx(top["ramp8.png"], abs=0.02)
    assert top["ramp.tif"] == pytest.approx(top["ramp8.png"], abs=0.02)


def test_predict_reports_bad_files_one_line_each_and_predicts_the_rest(standin_run, tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    standin.install(monkeypatch)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a decompression bomb without the memory
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (8, 8), 90).save(folder / "a.png")
    Image.fromarray(np.round(_ramp(8, 12) * 65535).astype(np.uint16)).save(folder / "b16.png")
    Image.fromarray(_ramp(8, 12).astype(np.float32)).save(folder / "c.tif")
    (folder / "broken.png").write_text("not an image")
    Image.new("L", (250, 1)).save(folder / "huge.png")  # over twice the limit: PIL's error
    Image.new("L", (150, 1)).save(folder / "large.png")  # over the limit: PIL's warning, made an error
    assert cli.main(["predict", str(standin_run), str(folder), "--topk", "1"]) == 1
    captured = capsys.readouterr()
    assert [Path(line).name for line in captured.out.splitlines()[::2]] == ["a.png", "b16.png", "c.tif"]
    err = captured.err.splitlines()
    assert len(err) == 3 and all(line.startswith("convattn predict: error: ") for line in err)
    assert "broken.png' is not a readable image" in err[0]
    assert "huge.png' is too large to read safely" in err[1] and "250 pixels" in err[1]
    assert "large.png' is too large to read safely" in err[2] and "150 pixels" in err[2]

    for name in ("a.png", "b16.png", "c.tif"):
        (folder / name).unlink()
    assert cli.main(["predict", str(standin_run), str(folder)]) == 2  # nothing could be read
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 3
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    assert "1 some files could not be read" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv, words", [
    (["bench", "layers", "--layers", "se", "--image-size", "1000000"],
     ["an input of 8 × 64 × 1000000 × 1000000 values needs 1.82 PiB", "of memory this machine has"]),
    (["bench", "layers", "--layers", "se", "--channels", "100000000"],
     ["an input of 8 × 100000000 × 56 × 56 values needs 9.13 TiB"]),
    (["bench", "layers", "--layers", "se", "--channels", "200000", "--image-size", "1"],
     ["the 3×3 convolution's weight of 200000 × 200000 × 3 × 3 values needs"]),
    (["bench", "models", "--models", "simple_cnn", "--image-size", "1000000"],
     ["bench models: an input of 32 × 3 × 1000000 × 1000000 values needs"]),
])
def test_bench_refuses_inputs_larger_than_memory_before_allocating(argv, words, monkeypatch, capsys):
    import os

    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PHYS_PAGES": 2**20, "SC_PAGE_SIZE": 2**12}[name])  # 4 GiB
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert "4 GiB of memory this machine has" in captured.err and all(w in captured.err for w in words), captured.err


@pytest.mark.parametrize("command", [["bench", "layers"], ["bench", "models"], ["viz", "run"], ["predict", "r", "i"]])
def test_unknown_device_is_refused_by_the_parser(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--device", "bogus"])
    assert info.value.code == 2
    assert "argument --device: invalid choice: 'bogus' (choose from 'auto', 'cpu', 'cuda')" in capsys.readouterr().err
