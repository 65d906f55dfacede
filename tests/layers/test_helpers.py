import pytest
import torch
from torch import nn

from convattn.exceptions import ConfigError, DTypeError, ShapeError
from convattn.layers._helpers import check_input, get_layer, make_divisible


def test_make_divisible():
    assert make_divisible(4, 8) == 8
    assert make_divisible(20, 8) == 24
    assert make_divisible(17, 8) == 16
    assert make_divisible(9, 8, round_limit=0.9) == 16  # 8 < 0.9 * 9 -> bumped


def test_get_layer():
    assert get_layer("relu") is nn.ReLU
    assert get_layer("BN") is nn.BatchNorm2d
    assert get_layer(nn.GELU) is nn.GELU
    assert get_layer(None) is nn.Identity
    with pytest.raises(ConfigError, match="did you mean relu"):
        get_layer("rellu", owner="X", arg="act_layer")
    with pytest.raises(ConfigError, match="act_layer"):
        get_layer(3, owner="X", arg="act_layer")


def test_check_input_messages():
    with pytest.raises(ShapeError, match=r"Foo expects input of shape \(B, 8, H, W\), got \(2, 4, 3, 3\)"):
        check_input("Foo", torch.zeros(2, 4, 3, 3), 8)
    with pytest.raises(ShapeError, match=r"\(B, 8, T, H, W\)"):
        check_input("Foo", torch.zeros(2, 8, 3, 3), 8, ndim=5)
    with pytest.raises(DTypeError, match="floating-point"):
        check_input("Foo", torch.zeros(2, 8, 3, 3, dtype=torch.int64), 8)
    with pytest.raises(ShapeError, match=">= 2"):
        check_input("Foo", torch.zeros(2, 8, 1, 3), 8, min_size=2)
