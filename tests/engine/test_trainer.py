import json
import math

import pytest
import torch
from torch import nn

import standin
from convattn.engine import TrainConfig, evaluate, load_checkpoint, load_run, train
from convattn.engine.stages import StagePlan
from convattn.exceptions import ConfigError


@pytest.fixture(autouse=True)
def _standin(monkeypatch):
    standin.install(monkeypatch)


def _cfg(tmp_path, **kw):
    base = dict(epochs=1, batch_size=16, lr=0.2, progress=False, device="cpu", out=str(tmp_path / "run"))
    return TrainConfig(**{**base, **kw})


def _init_weights(seed=0):
    torch.manual_seed(seed)  # the trainer seeds with config.seed before building the model
    return {k: v.clone() for k, v in standin.TinyNet().state_dict().items()}


def test_staged_training_freezes_the_other_groups(tmp_path):
    init = _init_weights()
    stages = [{"name": "att", "epochs": 1, "train": ["attention"], "lr": 0.5},
              {"name": "dec", "epochs": 1, "train": ["decision"], "alpha": 0.3}]
    train(_cfg(tmp_path, stages=stages, weight_decay=0.01))
    final = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    for k in init:  # backbone never trained: bit-identical, BatchNorm statistics included
        if k.startswith("backbone"):
            assert torch.equal(final[k], init[k]), k
    assert not torch.equal(final["attn.weight"], init["attn.weight"])
    assert not torch.equal(final["head.weight"], init["head.weight"])
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["att", "dec"]

    # one stage only: the decision head stays at its initial values
    train(_cfg(tmp_path, stages=stages[:1], out=str(tmp_path / "run1")))
    final = load_checkpoint(tmp_path / "run1" / "last.pt")["model"]
    assert torch.equal(final["head.weight"], init["head.weight"])
    assert not torch.equal(final["attn.weight"], init["attn.weight"])


def test_stage_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown parameter group"):
        train(_cfg(tmp_path, stages=[{"name": "x", "epochs": 1, "train": ["neck"]}]))
    with pytest.raises(ConfigError, match="unknown key"):
        _cfg(tmp_path, stages=[{"epochs": 1, "frozen": ["backbone"]}])


def test_alternate_stops_when_val_loss_stops_improving():
    plan = StagePlan([{"name": "a", "epochs": 1}, {"name": "b", "epochs": 2}], mode="alternate", patience=2, max_epochs=20)
    seen = []
    for loss in [5, 4, 4, 3, 3.5, 3.5, 3.2, 9, 9]:
        if plan.done:
            break
        seen.append(plan.current["name"])
        plan.end_epoch(loss)
    # stage ends: a@5 (best), b@4 (best), a@3 (best), b@3.5 (bad 1), a@3.2 (bad 2) -> stop
    assert seen == ["a", "b", "b", "a", "b", "b", "a"] and plan.done
    capped = StagePlan([{"name": "a", "epochs": 3}], mode="alternate", patience=5, max_epochs=2)
    capped.end_epoch(1.0), capped.end_epoch(1.0)
    assert capped.done


def test_alternate_mode_run(tmp_path):
    stages = [{"name": "att", "epochs": 1, "train": ["attention"]}, {"name": "dec", "epochs": 1, "train": ["decision"]}]
    r = train(_cfg(tmp_path, stages=stages, stage_mode="alternate", patience=1, epochs=6))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 2 <= r["epochs"] == len(rows) <= 6
    assert [x["stage"] for x in rows] == ["att", "dec", "att", "dec", "att", "dec"][: len(rows)]
    losses = [x["val_loss"] for x in rows]
    if len(rows) < 6:  # stopped early: the last stage did not beat the best before it
        assert losses[-1] >= min(losses[:-1])


def test_bf16_amp_channels_last_clip_adamw_run(tmp_path):
    r = train(_cfg(tmp_path, amp="auto", channels_last=True, clip_grad=1.0, optimizer="adamw", lr=1e-3,
                   label_smoothing=0.1, schedule="step", step_epochs=1, epochs=2, alpha=0.1))
    assert r["epochs"] == 2 and math.isfinite(r["train_loss"]) and 0 <= r["test_acc"] <= 1
    model, cfg = load_run(tmp_path / "run")
    assert cfg.amp == "auto" and not model.training and model.data_info["num_classes"] == 3
    with pytest.raises(ConfigError, match="fp16 needs CUDA|'fp16' needs CUDA"):
        train(_cfg(tmp_path, amp="fp16", out=str(tmp_path / "fp16")))


def test_evaluate_confusion_and_per_class():
    class Fixed(nn.Module):
        def forward(self, x):  # predicts class x[:, 0]
            return {"logits": nn.functional.one_hot(x[:, 0].long(), 3).float() * 10}

    x = torch.tensor([[0.0], [1.0], [1.0], [2.0], [0.0]])
    y = torch.tensor([0, 1, 2, 2, 1])
    out = evaluate(Fixed(), [(x[:3], y[:3]), (x[3:], y[3:])], "cpu")
    assert out["count"] == 5 and out["accuracy"] == pytest.approx(3 / 5)
    assert out["confusion_matrix"].tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert out["per_class_accuracy"] == pytest.approx([1.0, 0.5, 0.5])
