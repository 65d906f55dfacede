"""Gather-Excite against a transcription of Hu et al. (NeurIPS 2018), Sec. 3, and timm's forward."""

import pytest
import torch
from timm.layers.gather_excite import GatherExcite as TimmGatherExcite
from timm.layers.mlp import ConvMlp

import convattn
from convattn.exceptions import ConfigError


def randomise(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.normal_(0, 0.5)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)


def gather_pool(x, e):
    # θ⁻: mean over the (2e−1)² window centred on every e-th position, clipped to the map.
    b, c, h, w = x.shape
    ho, wo = -(-h // e), -(-w // e)
    out = torch.empty(b, c, ho, wo, dtype=x.dtype)
    for p in range(ho):
        for q in range(wo):
            rows = slice(max(p * e - (e - 1), 0), min(p * e + e, h))
            cols = slice(max(q * e - (e - 1), 0), min(q * e + e, w))
            out[:, :, p, q] = x[:, :, rows, cols].mean((2, 3))
    return out


def depthwise_stride2(x, k):
    # y[c, p, q] = Σ_ij k[c, i, j] · x_pad[c, 2p + i, 2q + j], zero padding 1.
    b, c, h, w = x.shape
    xp = torch.zeros(b, c, h + 2, w + 2, dtype=x.dtype)
    xp[:, :, 1:-1, 1:-1] = x
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    y = torch.zeros(b, c, ho, wo, dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            y += k[None, :, i, j, None, None] * xp[:, :, i:i + 2 * ho:2, j:j + 2 * wo:2]
    return y


def bn_eval(y, bn):
    return ((y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
            * bn.weight[:, None, None] + bn.bias[:, None, None])


def mlp(g, seq):
    w1, b1, w2, b2 = seq[0].weight.flatten(1), seq[0].bias, seq[2].weight.flatten(1), seq[2].bias
    h = torch.relu(torch.einsum("rc,bcij->brij", w1, g) + b1[:, None, None])
    return torch.einsum("cr,brij->bcij", w2, h) + b2[:, None, None]


def excite(x, g):
    # ξ_E: nearest-neighbour resize of the gathered map to H×W, then x ⊙ σ(·).
    h, w = x.shape[-2:]
    rows = (torch.arange(h) * g.shape[2] // h)
    cols = (torch.arange(w) * g.shape[3] // w)
    return x * torch.sigmoid(g[:, :, rows][:, :, :, cols])


@pytest.mark.parametrize("extent", [2, 3, 4])
@pytest.mark.parametrize("use_mlp", [False, True])
def test_parameter_free_gather_matches_paper(extent, use_mlp):
    layer = convattn.create_attn("ge", 32, extent=extent, use_mlp=use_mlp, rd_ratio=1 / 4)
    randomise(layer)
    x = torch.randn(2, 32, 7, 9)
    g = gather_pool(x, extent)
    if use_mlp:
        g = mlp(g, layer.mlp)
    torch.testing.assert_close(layer(x), excite(x, g))


@pytest.mark.parametrize("extent", [2, 4, 8])
def test_parametric_gather_matches_paper(extent):
    layer = convattn.create_attn("ge", 16, extent=extent, extra_params=True, use_mlp=True).eval()
    randomise(layer)
    x = torch.randn(2, 16, 9, 6)
    mods = list(layer.gather)
    g = x
    i = 0
    while i < len(mods):
        g = bn_eval(depthwise_stride2(g, mods[i].weight[:, 0]), mods[i + 1])
        i += 2
        if i < len(mods):  # ReLU between the strided convolutions, not after the last
            g = torch.relu(g)
            i += 1
    assert len(mods) == 3 * {2: 1, 4: 2, 8: 3}[extent] - 1
    torch.testing.assert_close(layer(x), excite(x, mlp(g, layer.mlp)))


def test_global_extent_is_se():
    layer = convattn.create_attn("ge", 16)
    randomise(layer)
    x = torch.randn(2, 16, 5, 4)
    torch.testing.assert_close(layer(x), excite(x, mlp(x.mean((2, 3), keepdim=True), layer.mlp)))
    free = convattn.create_attn("ge", 16, use_mlp=False)
    assert not list(free.parameters())
    torch.testing.assert_close(free(x), x * torch.sigmoid(x.mean((2, 3), keepdim=True)))


def test_trains_at_batch_one_on_tiny_maps():
    layer = convattn.create_attn("ge", 16, extent=4, extra_params=True).train()
    layer(torch.randn(1, 16, 3, 4)).sum().backward()  # the gathered map is 1×1


def timm_module(c, extent, use_mlp, rd):
    """timm 1.0.31's constructor raises with an MLP; build the MLP by keyword and attach it."""
    m = TimmGatherExcite(c, extent=extent, use_mlp=False)
    if use_mlp:
        m.mlp = ConvMlp(c, rd, act_layer=torch.nn.ReLU)
    return m


def test_timm_constructor_is_broken():
    with pytest.raises(TypeError):
        TimmGatherExcite(16)
    with pytest.raises(TypeError):
        TimmGatherExcite(16, extent=4, extra_params=True, use_mlp=False)


@pytest.mark.parametrize("extent", [0, 2, 4])
@pytest.mark.parametrize("use_mlp", [False, True])
def test_matches_timm_forward(extent, use_mlp):
    ours = convattn.create_attn("ge", 32, extent=extent, use_mlp=use_mlp, rd_ratio=1 / 8)
    theirs = timm_module(32, extent, use_mlp, 4)
    randomise(theirs)
    sd = {k.replace("fc1.", "0.").replace("fc2.", "2."): v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(sd)
    x = torch.randn(2, 32, 8, 7)
    torch.testing.assert_close(ours(x), theirs(x))


def test_records_gate_at_gathered_resolution():
    layer = convattn.create_attn("ge", 16, extent=2)
    with convattn.record_attention(layer) as maps:
        layer(torch.randn(2, 16, 7, 9))
    (w,) = maps.values()
    assert w.shape == (2, 16, 4, 5)


@pytest.mark.parametrize(
    "bad",
    [dict(extent=1), dict(extent=-2), dict(extra_params=True), dict(extent=6, extra_params=True),
     dict(norm_layer="bn"), dict(rd_ratio=0), dict(act_layer="rleu")],
)
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="GatherExcite"):
        convattn.create_attn("ge", 16, **bad)
