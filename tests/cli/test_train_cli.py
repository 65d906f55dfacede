"""``convattn train | eval | predict`` through ``cli.main``."""

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
import standin  # noqa: E402

from convattn import cli  # noqa: E402


def _print_config(capsys, *argv):
    assert cli.main(["train", *argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_yaml_then_explicit_flags_win(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lr: 0.2\nbatch_size: 8\nattention: se\nattn_kwargs: {rd_ratio: 0.5}\nprogress: true\n")
    out = _print_config(capsys, "--config", str(cfg), "--lr", "0.3", "--attn-kwargs", "rd_ratio=0.25", "act_layer=gelu",
                        "--no-progress", "--stages", "[{name: a, epochs: 2, train: [attention]}]", "--amp", "bf16")
    assert out["lr"] == 0.3 and out["batch_size"] == 8 and out["attention"] == "se"
    assert out["attn_kwargs"] == {"rd_ratio": 0.25, "act_layer": "gelu"}
    assert out["progress"] is False and out["amp"] == "bf16"
    assert out["stages"] == [{"name": "a", "epochs": 2, "train": ["attention"]}]
    assert _print_config(capsys, "--config", str(cfg))["lr"] == 0.2
    assert _print_config(capsys, "--attention", "none")["attention"] is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--optimizer", "adam"], "optimizer must be one of sgd, adamw"),
        (["--lr", "-1"], "lr must be a finite number > 0"),
        (["--epochs", "0"], "epochs must be an integer >= 1"),
        (["--config", "missing.yaml"], "does not exist"),
        (["--stages", "[{epochs: 1, frozen: [x]}]"], "unknown key"),
    ],
)
def test_bad_values_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(["train", *argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unknown_yaml_field(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("learning_rate: 0.1\n")
    assert cli.main(["train", "--config", str(cfg)]) == 2
    assert "unknown TrainConfig field(s) 'learning_rate'" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    for command in ("train", "eval", "predict"):
        with pytest.raises(SystemExit) as exc:
            cli.main([command, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "--device" in text
    from convattn.engine import TrainConfig

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for name in TrainConfig.field_names():
        assert "--" + name.replace("_", "-") in text
    # the recipe `convattn train` runs without flags, where it differs from the bare default
    flat = " ".join(text.split())
    assert "[0.05; recipe simple_cnn/default: 0.005]" in flat and "[sgd; recipe simple_cnn/default: adamw]" in flat
    assert "[0.9]" in flat and "recipe simple_cnn/default: 0.9" not in flat  # momentum: the recipe keeps it
    assert flat.count("convattn train --") >= 3  # examples


def test_train_eval_predict_end_to_end(tmp_path, monkeypatch, capsys):
    standin.install(monkeypatch)
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "2", "--batch-size", "16", "--lr", "0.2", "--no-progress",
                     "--save-every", "4", "--out", str(run)]) == 0
    assert "test_acc" in capsys.readouterr().out
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt", "results.json"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["step"] == 12
    assert set(rows[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time", "images_per_s"}
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,stage,step,train_loss")
    assert yaml.safe_load((run / "config.yaml").read_text())["save_every"] == 4

    assert cli.main(["eval", str(run), "--split", "val", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and (tmp_path / "ev" / "confusion_val.png").stat().st_size > 1000
    record = json.loads((tmp_path / "ev" / "eval_val.json").read_text())
    assert record["count"] == 32 and sum(map(sum, record["confusion_matrix"])) == 32

    from PIL import Image

    Image.new("RGB", (20, 13), (200, 30, 30)).save(tmp_path / "a.png")
    Image.new("L", (8, 8), 90).save(tmp_path / "b.jpg")
    assert cli.main(["predict", str(run / "best.pt"), str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), "--topk", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("a.png") and lines[3].endswith("b.jpg") and len(lines) == 6
    probs = [float(line.split("%")[0]) for line in lines[1:3]]
    assert probs[0] >= probs[1] and 0 < sum(probs) <= 100.01

    # user errors: one line, exit 2
    assert cli.main(["predict", str(run), str(tmp_path / "missing.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "text.png").write_text("not an image")
    assert cli.main(["predict", str(run), str(tmp_path / "text.png")]) == 2
    assert "not a readable image" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    assert cli.main(["eval", str(tmp_path / "bad.pt")]) == 2
    assert "corrupt" in capsys.readouterr().err


@pytest.mark.slow
def test_real_model_and_dataset(tmp_path, capsys):
    """simple_cnn + SE on the embedded cluttered-digits data, a few batches."""
    run = tmp_path / "real"
    argv = ["train", "--model", "simple_cnn", "--attention", "se", "--dataset", "cluttered-digits",
            "--train-size", "64", "--val-size", "32", "--test-size", "32", "--image-size", "28",
            "--epochs", "1", "--batch-size", "32", "--no-progress", "--device", "cpu", "--out", str(run)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--size", "16"]) == 0
    assert "16 images" in capsys.readouterr().out
    assert cli.main(["train", "--model", "no_such_net", "--print-config"]) == 0  # names resolve at train time
    capsys.readouterr()
    assert cli.main(["train", "--model", "no_such_net", "--out", str(tmp_path / "x")]) == 2
    assert "no_such_net" in capsys.readouterr().err


def test_mapping_fields_take_key_value_pairs(capsys):
    cfg = _print_config(capsys, "--model", "stn_cnn", "--lr-mult", "localization=0.1")
    assert cfg["lr_mult"] == {"localization": 0.1}


def test_print_config_names_the_source_of_each_value(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("batch_size: 8\n")
    assert cli.main(["train", "--model", "gated_cnn", "--config", str(cfg), "--lr", "0.01", "--print-config"]) == 0
    text = capsys.readouterr().out
    lines = {line.split(":")[0]: line for line in text.splitlines() if not line.startswith((" ", "-"))}
    assert lines["lr"] == "lr: 0.01  # flag"
    assert lines["batch_size"] == f"batch_size: 8  # config file {cfg}"
    assert lines["optimizer"] == "optimizer: adamw  # recipe gated_cnn/default"
    assert lines["seed"] == "seed: 0  # default"
    assert yaml.safe_load(text)["weight_decay"] == 1e-4  # still plain YAML
    staged = _print_config(capsys, "--model", "aacn", "--epochs", "6")
    assert staged["recipe"] == "staged" and [s["name"] for s in staged["stages"]] == ["features", "attention", "decision"]
    assert _print_config(capsys, "--model", "gated_cnn", "--recipe", "none")["optimizer"] == "sgd"


def test_resume_of_a_finished_run_leaves_it_untouched(tmp_path, monkeypatch, capsys):
    standin.install(monkeypatch)
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "1", "--batch-size", "32", "--no-progress", "--out", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 0
    captured = capsys.readouterr()
    assert "already finished (1 epochs)" in captured.err and "test_acc" in captured.out
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert json.loads((run / "results.json").read_text())["train_acc"] is not None
    assert cli.main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    assert f"--init-from {run}" in capsys.readouterr().err
    # a new run from its weights
    assert cli.main(["train", "--init-from", str(run), "--epochs", "1", "--batch-size", "32", "--no-progress",
                     "--out", str(tmp_path / "more")]) == 0
    assert "loaded" in capsys.readouterr().err
    report = json.loads((tmp_path / "more" / "init_from.json").read_text())
    assert report["new"] == [] and report["loaded"] and report["checkpoint"].endswith("best.pt")


def _pets(root: Path, per_class: int = 4) -> Path:
    """A folder dataset: 3 classes of small random PNGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "fox"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def hub_resnet18(tmp_path, monkeypatch):
    """Random "ResNet18_Weights.IMAGENET1K_V1" in a temporary torch hub cache, at the name torchvision expects."""
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.get_weight("ResNet18_Weights.IMAGENET1K_V1").url
    file = tmp_path / "torch" / "hub" / "checkpoints" / Path(url).name
    file.parent.mkdir(parents=True)
    ref = torchvision.models.resnet18(weights=None).eval()
    torch.save(ref.state_dict(), file)
    return ref, file


def test_pretrained_resnet18_with_cbam_fine_tunes_on_a_folder(tmp_path, capsys, hub_resnet18):
    import torch

    from convattn.engine import load_run

    ref, file = hub_resnet18
    pets = _pets(tmp_path / "pets")
    base = ["--model", "resnet18", "--weights", "IMAGENET1K_V1", "--attention", "cbam", "--dataset",
            f"folder:{pets}", "--image-size", "32", "--epochs", "1", "--no-progress", "--device", "cpu"]
    cfg = _print_config(capsys, *base, "--epochs", "3")
    assert cfg["recipe"] == "finetune" and cfg["lr"] == 0.01
    assert cfg["preprocessing"] == {"crop": 224, "resize": 256, "mean": [0.485, 0.456, 0.406],
                                    "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}
    assert [(s["name"], s["epochs"], s.get("freeze"), s["lr"]) for s in cfg["stages"]] == [
        ("new", 1, ["backbone"], 0.01), ("all", 2, None, 0.001)]

    # backbone and attention frozen: only the new head trains, so the network keeps the pretrained features
    # (identity-initialised attention, BatchNorm statistics frozen with the backbone)
    frozen = tmp_path / "frozen"
    assert cli.main(["train", *base, "--freeze", "backbone", "attention", "--out", str(frozen)]) == 0
    captured = capsys.readouterr()
    assert "weights IMAGENET1K_V1: loaded 120 tensors, 42 new" in captured.err and "(head 'fc')" in captured.err
    report = json.loads((frozen / "init_from.json").read_text())
    assert report["checkpoint"] == str(file) and {"fc.weight", "fc.bias"} <= set(report["weights"]["new"])
    row = json.loads((frozen / "metrics.jsonl").read_text().splitlines()[0])
    assert row["train_groups"] == ["head"] and row["frozen_groups"] == ["attention", "backbone"]
    model, _ = load_run(frozen)
    assert model.fc.out_features == 3 and not torch.equal(model.fc.weight, ref.fc.weight[:3])
    feats = {}
    model.fc.register_forward_pre_hook(lambda m, inp: feats.__setitem__("run", inp[0]))
    ref.fc.register_forward_pre_hook(lambda m, inp: feats.__setitem__("ref", inp[0]))
    x = torch.randn(2, 3, 32, 32)
    model(x), ref(x)
    torch.testing.assert_close(feats["run"], feats["ref"], rtol=0, atol=1e-5)

    # new layers at ten times the rate: refused before on networks without param_groups()
    assert cli.main(["train", *base, "--lr-mult", "attention=10", "head=10", "--recipe", "none",
                     "--out", str(tmp_path / "mult")]) == 0
    capsys.readouterr()
    assert cli.main(["train", *base, "--lr-mult", "decision=10", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "lr_mult names parameter group(s) ['decision'], but model 'resnet18' has ['attention', 'backbone', 'head']" in err
    assert cli.main(["train", *base, "--freeze", "backbone", "attention", "head", "--out", str(tmp_path / "bad2")]) == 2
    assert "trains nothing" in capsys.readouterr().err


def test_weights_missing_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    pets = _pets(tmp_path / "pets")
    assert cli.main(["train", "--model", "resnet18", "--weights", "DEFAULT", "--dataset", f"folder:{pets}",
                     "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected resnet18-f37072fd.pth in" in err and "--download" in err
    assert cli.main(["train", "--model", "resnet18", "--weights", "IMAGENET1K_V7", "--dataset", f"folder:{pets}",
                     "--print-config"]) == 2
    assert "unknown weights 'IMAGENET1K_V7' for 'resnet18': expected DEFAULT, IMAGENET1K_V1" in capsys.readouterr().err


def test_init_from_a_plain_resnet_run_into_its_attention_variant(tmp_path, capsys):
    """Inserted layers wrap the norms (bn2 -> bn2.module): the plain run's keys are mapped through them."""
    import torch

    from convattn.engine import load_run

    pets = _pets(tmp_path / "pets")
    base = ["--model", "resnet20", "--dataset", f"folder:{pets}", "--image-size", "16", "--epochs", "1",
            "--no-progress", "--device", "cpu"]
    assert cli.main(["train", *base, "--out", str(tmp_path / "plain")]) == 0
    assert cli.main(["train", *base, "--attention", "cbam", "--model-kwargs", "identity_init=true",
                     "--init-from", str(tmp_path / "plain"), "--freeze", "backbone", "attention",
                     "--out", str(tmp_path / "cbam")]) == 0
    err = capsys.readouterr().err
    assert "init_from" in err and "loaded" in err
    report = json.loads((tmp_path / "cbam" / "init_from.json").read_text())
    assert "layer1.0.bn2.module.weight" in report["loaded"] and not report["unused"] and not report["skipped"]
    plain, _ = load_run(tmp_path / "plain")
    cbam, _ = load_run(tmp_path / "cbam")
    assert torch.equal(cbam.layer1[0].bn2.module.weight, plain.layer1[0].bn2.weight)


@pytest.mark.slow
def test_pretrained_run_is_evaluated_drawn_predicted_and_exported_from_the_cli(tmp_path, capsys, hub_resnet18):
    """The whole path for your own data: pretrained ResNet-18 + CBAM on a folder → eval → viz → predict → ONNX."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from convattn.engine import load_run

    pets, run = _pets(tmp_path / "pets"), tmp_path / "run"
    assert cli.main(["train", "--model", "resnet18", "--weights", "IMAGENET1K_V1", "--attention", "cbam",
                     "--dataset", f"folder:{pets}", "--image-size", "32", "--epochs", "1", "--no-progress",
                     "--device", "cpu", "--out", str(run)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--device", "cpu"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert cli.main(["viz", str(run), "--images", str(pets / "fox"), "--out", str(tmp_path / "figs"), "--no-cam",
                     "--layers", "layer4*"]) == 0
    drawn = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert "0_attention.png" in drawn and "3_attention.png" in drawn, drawn
    capsys.readouterr()
    assert cli.main(["predict", str(run), str(pets / "dog"), "--topk", "3"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("cat", "dog", "fox"))
    assert cli.main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    model, _ = load_run(run)
    x = torch.randn(2, 3, 40, 36)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_pretrained_timm_run_is_evaluated_drawn_predicted_and_exported_from_the_cli(tmp_path, capsys, monkeypatch):
    """The same path for a timm network, its "pretrained" file in a temporary Hugging Face cache."""
    timm = pytest.importorskip("timm")
    import numpy as np
    import onnxruntime as ort
    import torch
    from safetensors.torch import save_file

    from convattn.engine import load_run

    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    snapshot = cache / f"models--{timm.models.get_pretrained_cfg('regnetx_002').hf_hub_id.replace('/', '--')}"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0" * 40)
    (snapshot / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(timm.create_model("regnetx_002", pretrained=False).state_dict(),
              str(snapshot / "snapshots" / ("0" * 40) / "model.safetensors"))

    pets, run = _pets(tmp_path / "pets"), tmp_path / "run"
    assert cli.main(["train", "--model", "timm_regnetx_002", "--weights", "DEFAULT", "--attention", "se",
                     "--dataset", f"folder:{pets}", "--image-size", "32", "--epochs", "1", "--no-progress",
                     "--device", "cpu", "--out", str(run)]) == 0
    assert "weights DEFAULT: loaded" in capsys.readouterr().err
    assert cli.main(["eval", str(run), "--device", "cpu"]) == 0
    assert cli.main(["viz", str(run), "--images", str(pets / "cat"), "--out", str(tmp_path / "figs"), "--no-cam"]) == 0
    assert "0_attention.png" in {p.name for p in (tmp_path / "figs").iterdir()}
    capsys.readouterr()
    assert cli.main(["predict", str(run), str(pets / "cat" / "0.png")]) == 0
    assert "cat" in capsys.readouterr().out
    assert cli.main(["export", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    model, _ = load_run(run)
    x = torch.randn(3, 3, 48, 40)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-4)
