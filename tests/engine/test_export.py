"""``convattn.export`` / ``convattn export``: ONNX and ``torch.export`` programs of a trained run, checked
against the PyTorch model, with dynamic batch and size and the preprocessing stored with them."""

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import standin  # noqa: E402

import convattn  # noqa: E402
from convattn import cli  # noqa: E402
from convattn.engine import export as export_module  # noqa: E402
from convattn.exceptions import ConfigError  # noqa: E402

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

# (batch, H, W) pairs: the stand-in run's images are 8x8
SIZES = [(1, 8, 8), (4, 13, 11)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from convattn.engine import TrainConfig, train

    out = tmp_path_factory.mktemp("export") / "run"
    with pytest.MonkeyPatch.context() as mp:
        standin.install(mp)
        train(TrainConfig(epochs=1, batch_size=16, train_size=32, val_size=16, test_size=16, out=str(out), progress=False))
    return out


def _logits(run, x):
    model, _ = convattn.load_run(run)
    with torch.no_grad():
        return model(x)["logits"]  # the stand-in returns a dict; the export returns its logits


def test_onnx_export_runs_in_onnxruntime_at_other_batches_and_sizes(run, tmp_path, monkeypatch):
    standin.install(monkeypatch)
    result = convattn.export(run, "onnx", out=tmp_path / "net.onnx", opset=19)
    assert result["max_abs_diff"] < 1e-5 and result["dynamic_axes"] == ["batch", "height", "width"]
    assert [s[0] for s in result["checked"]] == [2, 3]
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and session.get_outputs()[0].name == "logits"
    assert session.get_inputs()[0].shape == ["batch", 1, "height", "width"]
    for b, h, w in SIZES:
        x = torch.randn(b, 1, h, w)
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        torch.testing.assert_close(got, _logits(run, x), rtol=1e-5, atol=1e-5)

    proto = onnx.load(str(tmp_path / "net.onnx"))
    assert [o.version for o in proto.opset_import if o.domain == ""] == [19]
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["class_names"]) == ["a", "b", "c"]
    assert json.loads(props["mean"]) == [0.0] and json.loads(props["std"]) == [1.0]
    assert json.loads(props["image_size"]) == [8, 8] and json.loads(props["channels"]) == 1
    assert props["convattn_version"] == convattn.__version__ and json.loads(props["config"])["epochs"] == 1
    beside = json.loads((tmp_path / "net.onnx.json").read_text())
    assert beside["class_names"] == ["a", "b", "c"] and beside["max_abs_diff"] == result["max_abs_diff"]
    assert beside["checkpoint"].endswith("best.pt") and beside["config"]["batch_size"] == 16


def test_pt2_export_loads_and_matches_at_other_batches_and_sizes(run, tmp_path, monkeypatch):
    standin.install(monkeypatch)
    result = convattn.export(run, "pt2")
    path = Path(result["path"])
    assert path == run / "model.pt2" and Path(result["metadata"]) == run / "model.pt2.json"
    extra = {"convattn.json": ""}
    program = torch.export.load(path, extra_files=extra)
    assert json.loads(extra["convattn.json"])["class_names"] == ["a", "b", "c"]
    module = program.module()
    for b, h, w in SIZES:
        x = torch.randn(b, 1, h, w)
        torch.testing.assert_close(module(x), _logits(run, x), rtol=1e-5, atol=1e-5)


class FlatNet(nn.Module):
    """A head sized for the training images: its input size is fixed when traced."""

    def __init__(self, num_classes=3, in_chans=1):
        super().__init__()
        self.head = nn.Linear(in_chans * 64, num_classes)

    def forward(self, x):
        return self.head(x.flatten(1))


def test_a_model_of_fixed_size_is_refused_then_exported_at_its_size(run, tmp_path, monkeypatch):
    standin.install(monkeypatch)
    monkeypatch.setattr("convattn.engine.build.build_model", lambda config, info: FlatNet())
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["model"] = FlatNet().state_dict()
    torch.save(ckpt, tmp_path / "flat.pt")
    with pytest.raises(ConfigError, match="does not run at input size 3x1x16x12, another than its training size "
                                          r"\(mat1 and mat2 shapes cannot be multiplied.*--fixed-size"):
        convattn.export(tmp_path / "flat.pt", "pt2", out=tmp_path / "flat.pt2")
    assert not (tmp_path / "flat.pt2").exists()
    result = convattn.export(tmp_path / "flat.pt", "onnx", fixed_size=True, out=tmp_path / "flat.onnx")
    assert result["dynamic_axes"] == ["batch"] and [s[0] for s in result["checked"]] == [2, 3]
    session = ort.InferenceSession(str(tmp_path / "flat.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 1, 8, 8]


def test_halonet_says_it_needs_a_fixed_size(run, tmp_path, monkeypatch):
    standin.install(monkeypatch)
    halo = nn.Sequential(nn.Conv2d(1, 8, 1), convattn.create_attn("halo", 8, block_size=4, halo_size=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    monkeypatch.setattr("convattn.engine.build.build_model", lambda config, info: halo)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["model"] = halo.state_dict()
    torch.save(ckpt, tmp_path / "halo.pt")
    with pytest.raises(ConfigError, match="HaloAttn expects a static H×W.*--fixed-size"):
        convattn.export(tmp_path / "halo.pt", "pt2")


def test_an_export_that_computes_something_else_writes_nothing(run, tmp_path, monkeypatch):
    standin.install(monkeypatch)
    runner = export_module._onnx_runner
    monkeypatch.setattr(export_module, "_onnx_runner", lambda data: (lambda x: runner(data)(x) + 1e-2))
    with pytest.raises(export_module.ExportCheckError, match="differs from the PyTorch model by 0.01.*nothing written"):
        convattn.export(run, "onnx", out=tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_prints_the_difference_and_where_the_metadata_is(run, tmp_path, monkeypatch, capsys):
    standin.install(monkeypatch)
    assert cli.main(["export", str(run), "--format", "pt2", "--out", str(tmp_path / "m.pt2")]) == 0
    out = capsys.readouterr().out
    assert "checked with the reloaded program at inputs 2x1x8x8 and 3x1x16x12: max abs difference" in out
    assert f"{tmp_path / 'm.pt2.json'}" in out


@pytest.mark.parametrize("argv, message", [
    (["--format", "pt2", "--opset", "17"], "opset applies to ONNX and must be an int >= 7, got opset=17 for format 'pt2'"),
    (["--opset", "3"], "got opset=3"),
])
def test_cli_export_refuses_bad_options_in_one_line(run, capsys, argv, message):
    assert cli.main(["export", str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_unknown_format_is_refused():
    with pytest.raises(ConfigError, match="format must be one of onnx, pt2, got 'tflite'"):
        convattn.export("no-run", "tflite")
