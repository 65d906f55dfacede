"""SGE against a transcription of Li, Hu, Yang (2019), Eq. 1-5."""

import pytest
import torch

import convattn
from convattn.exceptions import ConfigError


def reference_sge(x, groups, gamma, beta, eps=1e-5):
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    cg = c // groups
    for bi in range(b):
        for gi in range(groups):
            xs = x[bi, gi * cg:(gi + 1) * cg].reshape(cg, h * w)  # x_i as columns, i = 1..m
            g = xs.mean(dim=1)  # Eq. 1
            ci = g @ xs  # Eq. 2: c_i = g · x_i
            mu = ci.mean()
            sigma = torch.sqrt(((ci - mu) ** 2).sum() / (h * w - 1))  # unbiased, as the authors' code
            chat = (ci - mu) / (sigma + eps)  # Eq. 3
            a = gamma[gi] * chat + beta[gi]  # Eq. 4
            out[bi, gi * cg:(gi + 1) * cg] = (xs * torch.sigmoid(a)).reshape(cg, h, w)  # Eq. 5
    return out


@pytest.mark.parametrize("groups", [1, 4])
def test_matches_paper_equations(groups):
    layer = convattn.create_attn("sge", 8, groups=groups)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(
        layer(x), reference_sge(x, groups, layer.weight.flatten(), layer.bias.flatten())
    )


def test_init_is_constant_gate():
    layer = convattn.create_attn("sge", 16)
    assert layer.groups == 8
    x = torch.randn(2, 16, 4, 5)
    torch.testing.assert_close(layer(x), x * torch.sigmoid(torch.tensor(1.0)))


def test_one_by_one_input_is_finite():
    layer = convattn.create_attn("sge", 16)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    x = torch.randn(2, 16, 1, 1, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_records_gates():
    layer = convattn.create_attn("sge", 16, groups=4)
    with convattn.record_attention(layer) as maps:
        layer(torch.randn(2, 16, 3, 5))
    assert maps["SpatialGroupEnhance"].shape == (2, 4, 3, 5)


@pytest.mark.parametrize("bad", [dict(groups=3), dict(groups=0), dict(eps=0.0), dict(gate_layer="nope")])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="SpatialGroupEnhance"):
        convattn.create_attn("sge", 16, **bad)
