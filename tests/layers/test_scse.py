"""scSE against a transcription of Roy et al. (MICCAI 2018), Sec. 2.1–2.3."""

import pytest
import torch

import convattn
from convattn.exceptions import ConfigError


def reference_scse(x, layer, combine):
    # cSE: z = GAP(U); ẑ = σ(W2 δ(W1 z)); Û_cSE = [ẑ_1 u_1, ..., ẑ_C u_C]
    z = x.sum((2, 3)) / (x.shape[2] * x.shape[3])
    zh = torch.sigmoid(torch.relu(z @ layer.fc1.weight.flatten(1).T + layer.fc1.bias)
                       @ layer.fc2.weight.flatten(1).T + layer.fc2.bias)
    u_cse = x * zh[:, :, None, None]
    # sSE: q = W_sq ⋆ U (1×1 conv to one channel); Û_sSE = [σ(q_ij) u^{ij}]
    q = torch.einsum("c,bchw->bhw", layer.conv_s.weight.flatten(), x) + layer.conv_s.bias
    u_sse = x * torch.sigmoid(q)[:, None]
    # scSE: element-wise max / sum / product of the two
    if combine == "max":
        return torch.where(u_cse > u_sse, u_cse, u_sse)
    if combine == "add":
        return u_cse + u_sse
    return u_cse * u_sse


@pytest.mark.parametrize("combine", ["max", "add", "mul"])
def test_matches_paper_equations(combine):
    layer = convattn.create_attn("scse", 24, combine=combine)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 24, 5, 7)
    torch.testing.assert_close(layer(x), reference_scse(x, layer, combine))


def test_max_combination_picks_from_both_branches():
    layer = convattn.create_attn("scse", 16)
    x = torch.randn(2, 16, 6, 6)
    with convattn.record_attention(layer) as maps:
        out = layer(x)
    c = x * maps["SCSE:channel"][:, :, None, None]
    s = x * maps["SCSE:spatial"]
    near = lambda a, b: (a - b).abs() <= 1e-6 * (1 + b.abs())  # noqa: E731
    assert near(out, c).any() and near(out, s).any() and (near(out, c) | near(out, s)).all()
    torch.testing.assert_close(out, torch.maximum(c, s))


def test_reduction_width():
    assert convattn.create_attn("scse", 64).fc1.out_channels == 32  # r = 2
    assert convattn.create_attn("scse", 64, rd_ratio=1 / 16).fc1.out_channels == 4


@pytest.mark.parametrize("bad", [dict(combine="concat"), dict(rd_ratio=3), dict(act_layer="rleu")])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="SCSE"):
        convattn.create_attn("scse", 16, **bad)
