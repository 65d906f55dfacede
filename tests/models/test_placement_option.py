"""``placement`` of TrainConfig / ``--placement`` of the CLI: where insert_attn puts the attention."""

from __future__ import annotations

import pytest

from convattn.engine.config import TrainConfig
from convattn.exceptions import ConfigError


def test_placement_reaches_the_model_options():
    cfg = TrainConfig(model="mobilenet_v3_small", attention="cbam", placement="replace")
    assert cfg.model_kwargs == {"attn_where": "replace"}
    assert TrainConfig.from_dict(cfg.to_dict()).model_kwargs == {"attn_where": "replace"}
    assert TrainConfig(model="resnet18", attention="se").model_kwargs == {}


@pytest.mark.parametrize("kw,match", [
    (dict(attention="se", placement="everywhere"), "block, stage, conv, replace"),
    (dict(placement="block"), "no attention"),
    (dict(attention="se", placement="stage", model_kwargs={"attn_where": "block"}), "attn_where='block'"),
])
def test_bad_placement(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(model="resnet18", **kw)


def test_cli_flag(capsys):
    from convattn.cli import main

    assert main(["train", "--model", "mobilenet_v3_small", "--attention", "cbam", "--placement", "replace",
                 "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "placement: replace" in out and "attn_where: replace" in out


def test_placement_on_a_model_that_places_its_own_attention():
    from convattn.engine.trainer import build_model

    info = {"num_classes": 10, "in_chans": 1, "image_size": (28, 28)}
    cfg = TrainConfig(model="simple_cnn", attention="se", placement="block")
    with pytest.raises(ConfigError, match="placement applies to networks .* got placement='block' for 'simple_cnn'"):
        build_model(cfg, info)
    net = build_model(TrainConfig(model="resnet18", attention="se", placement="stage"), info)
    assert any(type(m).__name__ == "SqueezeExcite" for m in net.modules())
