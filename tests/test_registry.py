import pytest
import torch
from torch import nn

import convattn
from convattn.registry import _REGISTRY


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        convattn.register_attn("se", kind="gate", paper="x")(type("X", (nn.Module,), {}))


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="'se'"):
        convattn.create_attn("sE_", 8)
    with pytest.raises(ValueError, match="unknown attention layer"):
        convattn.get_attn_info("nothing-like-it")


def test_list_attn_wildcards_and_kind():
    assert "se" in convattn.list_attn()
    assert convattn.list_attn("s?") == ["se"] or "se" in convattn.list_attn("s?")
    assert all(convattn.get_attn_info(n).kind == "gate" for n in convattn.list_attn(kind="gate"))
    with pytest.raises(ValueError, match="kind"):
        convattn.list_attn(kind="gates")


def test_create_by_class_and_info_defaults():
    info = convattn.get_attn_info("se")
    assert info.default_kwargs["rd_ratio"] == pytest.approx(1 / 16)
    layer = convattn.create_attn(info.cls, 32, rd_channels=4)
    assert layer(torch.randn(1, 32, 3, 3)).shape == (1, 32, 3, 3)
    assert convattn.get_attn_info(info.cls) is info


def test_register_and_create_user_layer():
    @convattn.register_attn("test_user_gate", kind="gate", paper="test")
    class UserGate(nn.Module):
        def __init__(self, channels, *, scale: float = 2.0):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return x * self.scale

    try:
        layer = convattn.create_attn("test_user_gate", 4, scale=3.0)
        assert layer(torch.ones(1, 4, 1, 1)).sum() == 12
    finally:
        _REGISTRY.pop("test_user_gate")
