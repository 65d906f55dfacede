import torch
from torch import nn

import convattn


def test_nested_paths_overwrite_and_cleanup():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Sequential(convattn.create_attn("se", 16, rd_ratio=0.5)))
    x = torch.randn(2, 3, 6, 6)
    with convattn.record_attention(net) as maps:
        net(x)
        first = maps["1.0"].clone()
        net(torch.randn(2, 3, 6, 6))
    assert list(maps) == ["1.0"]
    assert not torch.equal(first, maps["1.0"])  # a later pass overwrites
    with convattn.record_attention(net) as other:
        pass
    assert other == {}
    net(x)  # outside the context nothing is stored
    assert list(maps) == ["1.0"] and not net[1][0].recording


def test_two_models_record_separately():
    a = nn.Sequential(convattn.create_attn("se", 8))
    b = nn.Sequential(convattn.create_attn("se", 8))
    x = torch.randn(1, 8, 3, 3)
    with convattn.record_attention(a) as ma, convattn.record_attention(b) as mb:
        a(x)
    assert list(ma) == ["0"] and mb == {}


def test_record_attention_rejects_non_modules():
    try:
        with convattn.record_attention("model"):
            pass
    except TypeError as e:
        assert "nn.Module" in str(e)
    else:
        raise AssertionError("expected TypeError")
