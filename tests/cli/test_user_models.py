"""Models of your own in every command: ``convattn --import MODULE``, ``CONVATTN_IMPORT``, the
``convattn.models`` entry points, and runs that record the modules they need."""

import json
import sys
import uuid
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
import standin  # noqa: E402

from convattn import cli  # noqa: E402
from convattn.engine import TrainConfig  # noqa: E402
from convattn.engine.plugins import use_modules  # noqa: E402
from convattn.models.registry import MODELS  # noqa: E402
from convattn.registry import LAYERS  # noqa: E402

SOURCE = '''
import convattn
from torch import nn


@convattn.register_model("{model}")
def mynet(*, num_classes, in_chans=3, attention=None, attn_kwargs=None, width=8):
    layers = [nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU()]
    if attention:
        layers.append(convattn.create_attn(attention, width, **(attn_kwargs or {{}})))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


@convattn.register_attn("{layer}", kind="gate", paper="a test's own gate")
class MyGate(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x * self.conv(x).sigmoid()
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of one's own in ``tmp_path/src`` (on sys.path) registering a model and a layer; both
    are removed from the registries and the module forgotten afterwards. Runs use the stand-in's tiny
    dataset and the real ``build_model``."""
    tag = uuid.uuid4().hex[:8]
    name, model, layer = f"mymodels_{tag}", f"mynet_{tag}", f"mygate_{tag}"
    src = tmp_path / "src"
    src.mkdir()
    (src / f"{name}.py").write_text(SOURCE.format(model=model, layer=layer))
    monkeypatch.setattr(sys, "path", [str(src), *sys.path])
    for module in ("convattn.engine.trainer", "convattn.engine.inference"):
        monkeypatch.setattr(f"{module}.build_datasets", standin.build_datasets)
    yield name, model, layer
    forget(name, model, layer)


def forget(name, model, layer):
    sys.modules.pop(name, None)
    for registry, key in ((MODELS, model), (LAYERS, layer)):
        if key in registry:
            registry.remove(key)


def test_train_eval_predict_export_with_import_then_eval_without(user_module, tmp_path, capsys):
    from PIL import Image

    name, model, layer = user_module
    run = tmp_path / "run"
    train = ["train", "--model", model, "--attention", "cbam", "--epochs", "1", "--batch-size", "16",
             "--train-size", "32", "--val-size", "16", "--test-size", "16", "--no-progress", "--out", str(run)]
    assert cli.main(train) == 2
    err = capsys.readouterr().err
    assert f"unknown model {model!r}" in err and "convattn --import MODULE" in err and "convattn.models" in err
    assert cli.main(["--import", name, *train]) == 0
    assert torch.load(run / "best.pt", weights_only=True)["data_info"]["modules"] == [name]
    assert cli.main(["--import", name, "eval", str(run)]) == 0
    Image.new("L", (8, 8), 200).save(tmp_path / "digit.png")
    capsys.readouterr()
    assert cli.main(["--import", name, "predict", str(run), str(tmp_path / "digit.png"), "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("digit.png") and sorted(line.split()[-1] for line in lines[1:]) == ["a", "b", "c"]
    assert cli.main(["--import", name, "export", str(run), "--format", "pt2"]) == 0
    assert json.loads((run / "model.pt2.json").read_text())["data_info"]["modules"] == [name]

    forget(name, model, layer)  # as in a new process: nothing of the module is loaded
    capsys.readouterr()
    assert cli.main(["eval", str(run)]) == 0  # the run records the module
    assert "accuracy" in capsys.readouterr().out and model in MODELS
    forget(name, model, layer)
    assert cli.main(["viz", str(run), "--images", str(tmp_path / "digit.png"), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "digit_attention.png").is_file() and model in MODELS

    forget(name, model, layer)
    (run / "results.json").unlink()  # as if stopped before the end: resume rebuilds the model
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0, capsys.readouterr().err
    assert model in MODELS


def test_a_recorded_module_that_cannot_be_imported_is_named_in_one_line(user_module, tmp_path, monkeypatch, capsys):
    name, model, layer = user_module
    run = tmp_path / "run"
    assert cli.main(["--import", name, "train", "--model", model, "--attention", layer, "--epochs", "1",
                     "--batch-size", "16", "--train-size", "16", "--val-size", "16", "--test-size", "16",
                     "--no-progress", "--out", str(run)]) == 0
    forget(name, model, layer)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "src")])
    monkeypatch.chdir(tmp_path)  # the current directory is searched too; the module is not in it
    capsys.readouterr()
    assert cli.main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"the run of model {model!r} names module {name!r}, which cannot be imported" in err
    assert "PYTHONPATH" in err


def test_import_from_the_current_directory_and_the_environment(user_module, tmp_path, monkeypatch, capsys):
    name, model, layer = user_module
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "src")])
    monkeypatch.chdir(tmp_path / "src")
    assert cli.main(["--import", name, "list", "models"]) == 0
    assert model in capsys.readouterr().out
    forget(name, model, layer)
    monkeypatch.setenv("CONVATTN_IMPORT", f" {name} ,")
    assert cli.main(["list", "models"]) == 0
    assert model in capsys.readouterr().out
    monkeypatch.setenv("CONVATTN_IMPORT", "no_such_module_xyz")
    assert cli.main(["list", "models"]) == 2
    err = capsys.readouterr().err
    assert "CONVATTN_IMPORT names module 'no_such_module_xyz', which cannot be imported" in err
    monkeypatch.delenv("CONVATTN_IMPORT")
    assert cli.main(["--import", "no.such.module", "list", "layers"]) == 2
    assert "--import names module 'no.such.module'" in capsys.readouterr().err


def test_an_entry_point_is_loaded_when_its_model_is_unknown(user_module, tmp_path, monkeypatch):
    name, model, layer = user_module
    dist = tmp_path / "src" / f"mypkg_{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mypkg-{name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[convattn.models]\n{model} = {name}\n")
    data_info = {"num_classes": 3}
    use_modules(TrainConfig(model=model), data_info)  # unknown: the entry points are loaded
    assert model in MODELS and data_info["modules"] == [name]


def test_a_layer_of_your_own_is_recorded_and_convattn_models_are_not(user_module):
    name, model, layer = user_module
    __import__(name)
    data_info = {}
    use_modules(TrainConfig(model="simple_cnn", attention=layer), data_info)
    assert data_info["modules"] == [name]
    use_modules(TrainConfig(model="simple_cnn", attention="cbam"), data_info)
    assert "modules" not in data_info


def test_a_model_defined_in_the_script_is_not_recorded_and_says_so():
    from convattn.models import register_model

    def factory(*, num_classes, in_chans=3, attention=None, attn_kwargs=None):
        return torch.nn.Linear(in_chans, num_classes)

    factory.__module__ = "__main__"  # as when defined in the script that trains it
    name = f"script_net_{uuid.uuid4().hex[:8]}"
    register_model(name)(factory)
    try:
        data_info = {}
        with pytest.warns(UserWarning, match=r"defined in the script being run \(__main__\)"):
            use_modules(TrainConfig(model=name), data_info)
        assert "modules" not in data_info
    finally:
        MODELS.remove(name)
