import pytest
import torch
from torch import nn

import convattn
from convattn.exceptions import ConfigError, ConvattnError, UnknownOptionError
from convattn.registry import LAYERS, Registry


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        convattn.register_attn("se", kind="gate", paper="x")(type("X", (nn.Module,), {}))


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="'se'"):
        convattn.create_attn("sE_", 8)
    with pytest.raises(ValueError, match="unknown attention layer"):
        convattn.get_attn_info("nothing-like-it")


def test_unknown_name_is_a_config_error_pointing_at_both_listings():
    for call in (lambda: convattn.create_attn("nope", 8), lambda: convattn.get_attn_info("nope")):
        with pytest.raises(ConfigError, match=r"unknown attention layer 'nope' \(convattn\.list_attn\(\) or "
                                              r"`convattn list layers` lists all \d+\)"):
            call()
    with pytest.raises(ConfigError, match="not a registered attention layer"):
        convattn.get_attn_info(nn.Conv2d)


def test_unknown_option_is_a_type_error_naming_layer_and_value():
    with pytest.raises(UnknownOptionError, match=r"attention layer 'se' got unknown option bogus=1; it accepts rd_ratio"):
        convattn.create_attn("se", 8, bogus=1)
    assert issubclass(UnknownOptionError, TypeError) and issubclass(UnknownOptionError, ConvattnError)
    assert not issubclass(UnknownOptionError, ValueError)
    cls = convattn.get_attn_info("se").cls
    with pytest.raises(UnknownOptionError, match="bogus=1"):
        convattn.create_attn(cls, 8, bogus=1)


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
        assert LAYERS.find(UserGate).name == "test_user_gate"
    finally:
        LAYERS.remove("test_user_gate")
    assert "test_user_gate" not in convattn.list_attn() and LAYERS.find(UserGate) is None


class _Entry:
    def __init__(self, name, factory, **attrs):
        self.name, self.factory = name, factory
        self.__dict__.update(attrs)


def test_registry_class():
    def make(size, *, colour="red"):
        return (size, colour)

    reg = Registry("widget", listing="widgets()", cli="tool list widgets", fixed=("size",))
    reg.register("small", _Entry("small", make, round=True))
    reg.register("smaller", _Entry("smaller", lambda **kw: kw, round=False))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("small", _Entry("small", make))
    with pytest.raises(ValueError, match="non-empty"):
        reg.check_new("")
    assert reg.list() == ["small", "smaller"] == list(reg) and len(reg) == 2 and "small" in reg
    assert reg.list("*er") == ["smaller"] and reg.list(round=True) == ["small"] and reg.list(round=None) == reg.list()
    assert reg.create("small", 3, colour="blue") == (3, "blue")
    assert reg.create("smaller", anything=1) == {"anything": 1}  # **kwargs accepts every option
    with pytest.raises(UnknownOptionError, match=r"widget 'small' got unknown options shade=2, tint=1; it accepts colour$"):
        reg.create("small", 3, shade=2, tint=1)
    with pytest.raises(ConfigError, match=r"unknown widget 'smal'; did you mean 'small', 'smaller'\? "
                                          r"\(widgets\(\) or `tool list widgets` lists all 2\)"):
        reg.get("smal")
    with pytest.raises(TypeError, match="name of a widget"):
        reg.get(3)
    assert reg.find(make).name == "small" and reg.remove("small").factory is make
    assert reg.find(make) is None and reg.list() == ["smaller"]
