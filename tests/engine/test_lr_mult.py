"""Per-group learning-rate multipliers (``TrainConfig.lr_mult``) and ``stn_cnn.param_groups()``."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import standin
from convattn.engine import TrainConfig, load_checkpoint, train
from convattn.engine.optim import WarmupSchedule, build_optimizer
from convattn.exceptions import ConfigError
from convattn.models import create_model


def _stn():
    torch.manual_seed(0)
    return create_model("stn_cnn", num_classes=3, in_chans=1, out_size=(12, 12), body_kwargs={"widths": (4, 8)})


def test_stn_param_groups_partition_the_model():
    net = _stn()
    groups = net.param_groups()
    assert set(groups) == {"localization", "classifier"}
    ids = {k: [id(p) for p in v] for k, v in groups.items()}
    assert set(ids["localization"]) == {id(p) for p in net.stn.parameters()}
    assert set(ids["classifier"]) == {id(p) for p in net.classifier.parameters()}
    assert not set(ids["localization"]) & set(ids["classifier"])
    assert len(ids["localization"]) + len(ids["classifier"]) == len(list(net.parameters()))
    # the regressor that outputs theta belongs to the localisation group
    assert id(net.stn.fc_theta.weight) in ids["localization"]


def test_build_optimizer_scales_the_named_group_and_keeps_the_no_decay_split():
    net = _stn()
    opt = build_optimizer(net.named_parameters(), name="adamw", lr=0.01, weight_decay=0.1,
                          lr_mult={"localization": 0.1}, groups=net.param_groups())
    loc = {id(p) for p in net.stn.parameters()}
    assert opt.param_groups[0]["lr"] == 0.01  # multiplier-1 groups come first
    for g in opt.param_groups:
        inside = {id(p) in loc for p in g["params"]}
        assert len(inside) == 1  # a group never mixes localisation and classifier parameters
        expect = 0.1 if inside.pop() else 1.0
        assert g["lr_mult"] == expect and g["lr"] == pytest.approx(0.01 * expect)
        for p in g["params"]:
            assert g["weight_decay"] == (0.0 if p.ndim <= 1 else 0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    # the schedule keeps the ratio at every step
    sched = WarmupSchedule(opt, total_steps=10, warmup_steps=3)
    for _ in range(5):
        opt.step()
        sched.step()
        lrs = {g["lr_mult"]: g["lr"] for g in opt.param_groups}
        assert lrs[0.1] == pytest.approx(0.1 * lrs[1.0])


def test_multiplier_scales_the_update():
    """With plain SGD one step moves the localisation weights lr_mult times as far."""
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    deltas = {}
    for mult in (1.0, 0.1):
        net = _stn()
        net.stn.fc_theta.weight.data.normal_(0, 0.1)  # make theta depend on the input (it is zero at init)
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        opt = build_optimizer(net.named_parameters(), name="sgd", lr=0.5, momentum=0.0,
                              lr_mult={"localization": mult}, groups=net.param_groups())
        F.cross_entropy(net(x), y).backward()
        opt.step()
        deltas[mult] = {n: (p.detach() - before[n]) for n, p in net.named_parameters()}
    for n in deltas[1.0]:
        if n.startswith("stn."):
            torch.testing.assert_close(deltas[0.1][n], 0.1 * deltas[1.0][n], rtol=1e-4, atol=1e-7)
        else:
            torch.testing.assert_close(deltas[0.1][n], deltas[1.0][n])
    assert deltas[1.0]["stn.fc_theta.weight"].abs().sum() > 0


def test_build_optimizer_errors():
    net = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="unknown parameter group"):
        build_optimizer(net.named_parameters(), name="sgd", lr=0.1, lr_mult={"localization": 0.1})


@pytest.mark.parametrize("bad", [{"localization": 0}, {"localization": -1.0}, {"localization": "x"},
                                 {"localization": float("nan")}, [("localization", 0.1)]])
def test_config_rejects_bad_multipliers(bad):
    with pytest.raises(ConfigError, match="lr_mult"):
        TrainConfig(lr_mult=bad)


def test_trainer_applies_the_multiplier(tmp_path, monkeypatch):
    standin.install(monkeypatch)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.2, progress=False, device="cpu", out=str(tmp_path / "run"),
                      lr_mult={"attention": 0.25, "decision": 2.0}, schedule="constant", tensorboard=False)
    train(cfg)
    groups = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"]
    lrs = sorted({(g["lr_mult"], round(g["lr"], 6)) for g in groups})
    assert lrs == [(0.25, 0.05), (1.0, 0.2), (2.0, 0.4)]
    assert groups[0]["lr_mult"] == 1.0
    with pytest.raises(ConfigError, match="lr_mult names parameter group"):
        train(cfg.replace(lr_mult={"localization": 0.1}, out=str(tmp_path / "run2")))
