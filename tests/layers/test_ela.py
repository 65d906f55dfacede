"""ELA against a transcription of Xu & Wan (2024), Eq. 4–7, and timm's differently-read EfficientLocalAttn."""

import pytest
import torch
from timm.layers.coord_attn import EfficientLocalAttn

import convattn
from convattn.exceptions import ConfigError


def randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)


def reference_ela(x, w, gamma, beta, groups, eps=1e-5):
    """w: (C, k) depthwise taps; GN over (C/groups channels × L positions) of each strip."""
    b, c, hgt, wid = x.shape
    k = w.shape[1]
    p = k // 2

    def conv(z):  # y_c(i) = Σ_j w_c(j) z_c(i + j − p), zero padded
        zp = torch.zeros(b, c, z.shape[2] + 2 * p, dtype=z.dtype)
        zp[:, :, p:p + z.shape[2]] = z
        return sum(w[None, :, j, None] * zp[:, :, j:j + z.shape[2]] for j in range(k))

    def gn(y):
        g = y.reshape(b, groups, -1)
        g = (g - g.mean(2, keepdim=True)) / torch.sqrt(g.var(2, unbiased=False, keepdim=True) + eps)
        return g.reshape_as(y) * gamma[None, :, None] + beta[None, :, None]

    z_h = x.sum(3) / wid  # Eq. 4
    z_w = x.sum(2) / hgt  # Eq. 5
    y_h = torch.sigmoid(gn(conv(z_h)))  # Eq. 6
    y_w = torch.sigmoid(gn(conv(z_w)))
    return x * y_h[:, :, :, None] * y_w[:, :, None, :]  # Eq. 7


@pytest.mark.parametrize("c, k, groups", [(32, 7, None), (16, 5, 4), (24, 3, None)])
def test_matches_paper_equations(c, k, groups):
    layer = convattn.create_attn("ela", c, kernel_size=k, num_groups=groups)
    randomise(layer)
    x = torch.randn(2, c, 9, 6)
    ref = reference_ela(x, layer.conv.weight[:, 0], layer.gn.weight, layer.gn.bias, layer.gn.num_groups)
    torch.testing.assert_close(layer(x), ref)


def test_default_groups():
    assert convattn.create_attn("ela", 64).gn.num_groups == 16
    assert convattn.create_attn("ela", 24).gn.num_groups == 8


def test_records_both_directions():
    layer = convattn.create_attn("ela", 16)
    x = torch.randn(2, 16, 5, 7)
    with convattn.record_attention(layer) as maps:
        out = layer(x)
    gh, gw = maps["EfficientLocalAttention:height"], maps["EfficientLocalAttention:width"]
    assert gh.shape == (2, 16, 5, 1) and gw.shape == (2, 16, 1, 7)
    torch.testing.assert_close(out, x * gh * gw)


def test_matches_timm_when_its_choices_are_aligned():
    # timm: separate conv/norm per direction, GroupNorm(1), SiLU before the gate. Share the
    # weights, use 16-group norms and no activation, and the two agree.
    theirs = EfficientLocalAttn(32, kernel_size=7, act_layer=torch.nn.Identity,
                                norm_layer=lambda c, **kw: torch.nn.GroupNorm(16, c, **kw))
    ours = convattn.create_attn("ela", 32)
    randomise(ours)
    with torch.no_grad():
        theirs.conv_h.weight.copy_(ours.conv.weight[..., None])
        theirs.conv_w.weight.copy_(ours.conv.weight[:, :, None, :])
        for n in (theirs.norm_h, theirs.norm_w):
            n.weight.copy_(ours.gn.weight)
            n.bias.copy_(ours.gn.bias)
    x = torch.randn(2, 32, 6, 8)
    torch.testing.assert_close(ours(x), theirs(x))
    # timm's own defaults (GroupNorm(1) + SiLU) give a different function.
    default = EfficientLocalAttn(32, kernel_size=7)
    with torch.no_grad():
        default.conv_h.weight.copy_(theirs.conv_h.weight)
        default.conv_w.weight.copy_(theirs.conv_w.weight)
    assert (default(x) - ours(x)).abs().max() > 1e-3


@pytest.mark.parametrize("bad", [dict(kernel_size=4), dict(num_groups=5), dict(num_groups=0), dict(gate_layer="sigmod")])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="EfficientLocalAttention"):
        convattn.create_attn("ela", 16, **bad)


@pytest.mark.parametrize("training", [False, True])
def test_one_value_per_group_is_normalised_to_zero_in_either_mode(training):
    # B = 1 on a 1×1 map: every strip holds one value per group; F.group_norm refuses it even in eval mode
    layer = convattn.create_attn("ela", 16).train(training)
    randomise(layer)
    x = torch.randn(1, 16, 1, 1, requires_grad=True)
    out = layer(x)
    torch.testing.assert_close(out, x * torch.sigmoid(layer.gn.bias).view(1, 16, 1, 1) ** 2)
    out.sum().backward()
    assert x.grad is not None
