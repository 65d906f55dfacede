"""Coordinate attention against a transcription of Hou et al. (CVPR 2021), Eq. 4–9, and timm."""

import pytest
import torch
from timm.layers.coord_attn import CoordAttn as TimmCoordAttn
from timm.layers.coord_attn import SimpleCoordAttn, StripAttn

import convattn
from convattn.exceptions import ConfigError


def randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2)


def reference_coord(x, layer):
    b, c, h, w = x.shape
    # Eq. 4–5: z^h_c(h) = 1/W Σ_i x_c(h, i),  z^w_c(w) = 1/H Σ_j x_c(j, w)
    zh = x.sum(3) / w  # (B, C, H)
    zw = x.sum(2) / h  # (B, C, W)
    # Eq. 6: f = δ(BN(F1([z^h, z^w]))), δ = h-swish(t) = t · ReLU6(t + 3) / 6
    w1, b1 = layer.conv1.weight[:, :, 0, 0], layer.conv1.bias
    bn = layer.bn1
    t = torch.einsum("rc,bcn->brn", w1, torch.cat([zh, zw], 2)) + b1[:, None]
    t = (t - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps) * bn.weight[:, None] \
        + bn.bias[:, None]
    f = t * torch.clamp(t + 3, 0, 6) / 6
    fh, fw = f[:, :, :h], f[:, :, h:]
    # Eq. 7–8: g^h = σ(F_h(f^h)), g^w = σ(F_w(f^w))
    gh = torch.sigmoid(torch.einsum("cr,brn->bcn", layer.conv_h.weight[:, :, 0, 0], fh) + layer.conv_h.bias[:, None])
    gw = torch.sigmoid(torch.einsum("cr,brn->bcn", layer.conv_w.weight[:, :, 0, 0], fw) + layer.conv_w.bias[:, None])
    # Eq. 9: y_c(i, j) = x_c(i, j) · g^h_c(i) · g^w_c(j)
    return x * gh[:, :, :, None] * gw[:, :, None, :], gh, gw


def test_matches_paper_equations():
    layer = convattn.create_attn("coord", 32).eval()
    randomise(layer)
    x = torch.randn(2, 32, 5, 7)
    ref, gh, gw = reference_coord(x, layer)
    with convattn.record_attention(layer) as maps:
        out = layer(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(maps["CoordAttention:height"], gh[..., None])
    torch.testing.assert_close(maps["CoordAttention:width"], gw[:, :, None, :])


def test_height_and_width_gates_are_not_swapped():
    # A map that varies only along H: the width gate must be constant across W for every channel.
    layer = convattn.create_attn("coord", 16).eval()
    randomise(layer)
    x = torch.randn(1, 16, 6, 1).expand(1, 16, 6, 4).contiguous()
    with convattn.record_attention(layer) as maps:
        layer(x)
    gw = maps["CoordAttention:width"]
    torch.testing.assert_close(gw, gw[..., :1].expand_as(gw))


def test_official_widths():
    assert convattn.create_attn("coord", 16).conv1.out_channels == 8  # max(8, C/32)
    assert convattn.create_attn("coord", 512).conv1.out_channels == 16
    assert convattn.create_attn("coord", 512, rd_channels=24).conv1.out_channels == 24


@pytest.mark.parametrize("train", [False, True])
def test_matches_timm(train):
    theirs = TimmCoordAttn(64)
    rd = theirs.conv1.out_channels
    ours = convattn.create_attn("coord", 64, rd_channels=rd, bias=False)
    randomise(theirs)
    ours.load_state_dict(theirs.state_dict())
    ours.train(train), theirs.train(train)
    x = torch.randn(2, 64, 6, 5)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("bad", [dict(rd_ratio=0), dict(min_rd_channels=0), dict(act_layer="hswish"),
                                 dict(norm_layer="bnn"), dict(rd_channels=0)])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="CoordAttention"):
        convattn.create_attn("coord", 16, **bad)


def reference_scoord(x, layer, skip=False):
    # f^h = δ(W_1 z^h + b_1) per row, f^w likewise; a^h = W_h f^h + b_h, a^w = W_w f^w + b_w;
    # y = x · σ(a^h ⊕ a^w) (broadcast sum), plus x with the skip.
    zh, zw = x.mean(3), x.mean(2)  # (B, C, H), (B, C, W)
    silu = lambda t: t * torch.sigmoid(t)  # noqa: E731
    fh = silu(torch.einsum("rc,bch->bhr", layer.fc1.weight, zh) + layer.fc1.bias)
    fw = silu(torch.einsum("rc,bcw->bwr", layer.fc1.weight, zw) + layer.fc1.bias)
    ah = torch.einsum("cr,bhr->bch", layer.fc_h.weight, fh) + layer.fc_h.bias[:, None]
    aw = torch.einsum("cr,bwr->bcw", layer.fc_w.weight, fw) + layer.fc_w.bias[:, None]
    y = x * torch.sigmoid(ah[:, :, :, None] + aw[:, :, None, :])
    return y + x if skip else y


def reference_strip(x, layer):
    # y = x · σ(K_h ⋆ z^h ⊕ K_w ⋆ z^w), depthwise k-tap filters along H and along W, zero padded.
    zh, zw = x.mean(3), x.mean(2)
    def dw(z, k):  # z (B, C, L), k (C, K)
        p = k.shape[1] // 2
        zp = torch.nn.functional.pad(z, (p, p))
        return sum(k[None, :, j, None] * zp[:, :, j:j + z.shape[2]] for j in range(k.shape[1]))
    fh = dw(zh, layer.conv_h.weight[:, 0, :, 0])
    fw = dw(zw, layer.conv_w.weight[:, 0, 0, :])
    return x * torch.sigmoid(fh[:, :, :, None] + fw[:, :, None, :])


@pytest.mark.parametrize("skip", [False, True])
def test_scoord_matches_transcription(skip):
    layer = convattn.create_attn("scoord", 32, has_skip=skip)
    randomise(layer)
    x = torch.randn(2, 32, 5, 7)
    torch.testing.assert_close(layer(x), reference_scoord(x, layer, skip))


def test_strip_matches_transcription_and_parameter_free_form():
    layer = convattn.create_attn("strip", 16, kernel_size=5)
    randomise(layer)
    x = torch.randn(2, 16, 6, 7)
    torch.testing.assert_close(layer(x), reference_strip(x, layer))
    free = convattn.create_attn("strip", 16, use_conv=False)
    assert not list(free.parameters())
    torch.testing.assert_close(free(x), x * torch.sigmoid(x.mean(3, keepdim=True) + x.mean(2, keepdim=True)))


@pytest.mark.parametrize("c", [32, 64])
def test_scoord_and_strip_match_timm(c):
    x = torch.randn(2, c, 6, 5)
    for ours, theirs in [(convattn.create_attn("scoord", c), SimpleCoordAttn(c)),
                         (convattn.create_attn("strip", c), StripAttn(c))]:
        randomise(theirs)
        ours.load_state_dict(theirs.state_dict())
        torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("name, cls, bad", [("scoord", "SimpleCoordAttention", dict(rd_ratio=0)),
                                            ("scoord", "SimpleCoordAttention", dict(act_layer="slu")),
                                            ("strip", "StripAttention", dict(kernel_size=2)),
                                            ("strip", "StripAttention", dict(gate_layer="sigmod"))])
def test_variant_bad_arguments(name, cls, bad):
    with pytest.raises(ConfigError, match=cls):
        convattn.create_attn(name, 16, **bad)
