"""``convattn eval RUN --localization`` on a tiny trained run, the report's table, the lazy import."""

import json
import subprocess
import sys

import pytest

from convattn import cli


@pytest.fixture(scope="module", autouse=True)
def no_kernel_build():
    """CBAM's PyTorch-op path: the same maps, without waiting for the C++ kernels to build."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVATTN_EXTENSIONS", "0")
        yield


@pytest.fixture(scope="module")
def stn_run(tmp_path_factory):
    """stn_cnn with CBAM in its classifier: a window, spatial maps in the transformed frame, Grad-CAM."""
    from convattn.engine import TrainConfig, train

    path = tmp_path_factory.mktemp("runs") / "stn"
    cfg = TrainConfig(model="stn_cnn", attention="cbam", dataset="cluttered-digits", train_size=32, val_size=8,
                      test_size=8, image_size=28, epochs=1, batch_size=16, out=str(path), progress=False,
                      tensorboard=False, device="cpu", seed=0)
    train(cfg)
    return path


def test_eval_localization_prints_and_stores(stn_run, tmp_path, capsys):
    before = json.loads((stn_run / "results.json").read_text())
    assert cli.main(["eval", str(stn_run), "--localization", "--num-images", "6", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "localisation on 6 test images" in out and "stn:window" in out and "Grad-CAM @ classifier." in out
    stored = json.loads((stn_run / "results.json").read_text())
    assert {k: v for k, v in stored.items() if k != "localization"} == before  # other keys kept
    loc = stored["localization"]
    assert loc["images"] == 6 and loc["split"] == "test" and loc["dataset"] == "cluttered-digits"
    assert loc["tolerance_px"] == pytest.approx(28 * 15 / 224)
    maps = loc["maps"]
    assert maps["stn:window"]["kind"] == "window" and 0 <= maps["stn:window"]["iou"] <= 1
    spatial = [k for k, m in maps.items() if m["kind"] == "spatial"]
    assert spatial and all(k.endswith(":spatial") and maps[k]["frame"] == "stn" for k in spatial)
    assert maps["Grad-CAM"]["frame"] == "stn"
    for m in maps.values():
        assert m["images"] == 6 and 0 <= m["pointing"] <= 1 and 0 <= m["energy"] <= 1
    assert json.loads((tmp_path / "eval_test.json").read_text())["localization"]["maps"] == maps

    from convattn.viz import write_report

    page = write_report([stn_run], tmp_path / "report.html", count=2, cam=False).read_text()
    assert "<h2>Localisation</h2>" in page and page.count("<tr class='loc'>") == len(maps)
    assert "stn:window" in page


def test_eval_localization_needs_boxes(stn_run, capsys):
    assert cli.main(["eval", str(stn_run), "--localization", "--dataset", "digits", "--size", "4",
                     "--split", "val"]) == 2  # --size: the old spelling of --num-images
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "convattn eval: --size is deprecated; use --num-images"
    err = "\n".join(lines[1:])
    assert err.endswith("needs object boxes; dataset 'digits' has none (cluttered-digits has them)")
    assert len(err.splitlines()) == 1


def test_eval_is_reachable_lazily():
    code = ("import sys, convattn; assert 'convattn.eval' not in sys.modules; "
            "f = convattn.eval.localization; print(f.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "convattn.eval.localize"


def test_size_takes_images_of_the_split_the_run_was_tested_on(stn_run):
    """``--num-images N`` scores N of the images the run was tested on (a fixed subset, nested across
    sizes), not N other images."""
    import torch

    from convattn.engine.inference import load_run_split

    full = load_run_split(stn_run, boxes=True).dataset
    part = load_run_split(stn_run, size=3, boxes=True).dataset
    assert len(full) == 8 and len(part) == 3
    assert part.indices == load_run_split(stn_run, size=3).dataset.indices
    assert set(part.indices) < set(load_run_split(stn_run, size=5).dataset.indices)
    for i, j in enumerate(part.indices):
        assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(part[i], full[j]))
    assert len(load_run_split(stn_run, size=50).dataset) == 8
    with pytest.raises(Exception, match="size must be a positive number of images, got 0"):
        load_run_split(stn_run, size=0)


def test_eval_on_another_dataset_writes_its_own_files(stn_run, capsys):
    """``eval --dataset digits`` on a cluttered-digits run never overwrites the run's own eval_test.json."""
    assert cli.main(["eval", str(stn_run), "--num-images", "4"]) == 0
    own = (stn_run / "eval_test.json").read_bytes()
    assert json.loads(own)["dataset"] == "cluttered-digits"
    assert cli.main(["eval", str(stn_run), "--dataset", "digits", "--num-images", "6"]) == 0
    assert f"results: {stn_run / 'eval_test_digits.json'}" in capsys.readouterr().out
    other = json.loads((stn_run / "eval_test_digits.json").read_text())
    assert other["dataset"] == "digits" and other["count"] == 6
    assert (stn_run / "confusion_test_digits.png").is_file()
    assert (stn_run / "eval_test.json").read_bytes() == own
    assert cli.main(["eval", str(stn_run), "--dataset", "cluttered-digits", "--num-images", "4"]) == 0  # its own
    assert (stn_run / "eval_test.json").read_bytes() == own and not list(stn_run.glob("eval_test_cluttered*"))


def test_dataset_tag_is_a_file_name_part():
    from convattn.engine.inference import dataset_tag

    assert dataset_tag("digits") == "digits"
    assert dataset_tag("folder:/data/my pets/") == "folder-data-my-pets"
