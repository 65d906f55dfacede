"""Split attention against a transcription of ResNeSt (Zhang et al.), Sec. 3.1–3.2, and timm."""

import pytest
import torch
import torch.nn.functional as F
from timm.layers.split_attn import SplitAttn as TimmSplitAttn

import convattn
from convattn.exceptions import ConfigError


def randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2)


def bn_eval(y, bn, sl):
    # y: (B, n) or (B, n, H, W) for the channels `sl` of the norm.
    shape = (1, -1) + (1,) * (y.dim() - 2)
    g = lambda t: t[sl].view(shape)  # noqa: E731
    return (y - g(bn.running_mean)) / torch.sqrt(g(bn.running_var) + bn.eps) * g(bn.weight) + g(bn.bias)


def reference_splat(x, layer):
    """Feature-map group (k, i) = cardinal group k, split i; the code stores it radix-major (conv group i·K + k)."""
    b, c, h, w = x.shape
    R, K = layer.radix, layer.cardinality
    cg, cin = c // K, c // (K * R)
    inter = layer.fc1.out_channels // K
    ks = layer.conv.kernel_size[0]
    out = []
    for k in range(K):
        us = []
        for i in range(R):
            j = i * K + k
            wgt = layer.conv.weight[j * cg:(j + 1) * cg]
            u = F.conv2d(x[:, j * cin:(j + 1) * cin], wgt, padding=ks // 2)
            us.append(torch.relu(bn_eval(u, layer.bn0, slice(j * cg, (j + 1) * cg))))
        # s^k = GAP(Σ_i U_i^k)
        s = sum(us).mean((2, 3))
        hs = slice(k * inter, (k + 1) * inter)
        z = torch.relu(bn_eval(s @ layer.fc1.weight[hs, :, 0, 0].T + layer.fc1.bias[hs], layer.bn1, hs))
        os_ = slice(k * R * cg, (k + 1) * R * cg)
        g = (z @ layer.fc2.weight[os_, :, 0, 0].T + layer.fc2.bias[os_]).reshape(b, R, cg)
        # a_i^k(c) = exp(G_i^c) / Σ_j exp(G_j^c)  (sigmoid for R = 1)
        a = g.exp() / g.exp().sum(1, keepdim=True) if R > 1 else torch.sigmoid(g)
        out.append(sum(a[:, i, :, None, None] * us[i] for i in range(R)))
    return torch.cat(out, 1)  # V = [V^1, ..., V^K]


@pytest.mark.parametrize("radix, card", [(2, 1), (2, 2), (4, 2), (1, 2)])
def test_matches_paper_equations(radix, card):
    layer = convattn.create_attn("splat", 32, radix=radix, cardinality=card).eval()
    randomise(layer)
    x = torch.randn(2, 32, 5, 6)
    torch.testing.assert_close(layer(x), reference_splat(x, layer), rtol=1e-4, atol=1e-5)


def test_hidden_width_follows_official_code():
    assert convattn.create_attn("splat", 64).fc1.out_channels == 32  # max(64·2/4, 32)
    assert convattn.create_attn("splat", 256).fc1.out_channels == 128
    assert convattn.create_attn("splat", 256, rd_channels=40).fc1.out_channels == 40


@pytest.mark.parametrize("radix, card", [(2, 1), (2, 4), (1, 1)])
def test_matches_timm(radix, card):
    ours = convattn.create_attn("splat", 64, radix=radix, cardinality=card, rd_divisor=8)
    theirs = TimmSplitAttn(64, radix=radix, groups=card, norm_layer=torch.nn.BatchNorm2d)
    assert ours.fc1.out_channels == theirs.fc1.out_channels
    randomise(theirs)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 64, 5, 4)
    for mode in (False, True):
        ours.train(mode), theirs.train(mode)
        torch.testing.assert_close(ours(x), theirs(x))


def test_records_split_weights_summing_to_one():
    layer = convattn.create_attn("splat", 16, radix=2)
    with convattn.record_attention(layer) as maps:
        layer.eval()(torch.randn(2, 16, 3, 4))
    (a,) = maps.values()
    assert a.shape == (2, 2, 16)
    torch.testing.assert_close(a.sum(1), torch.ones(2, 16))


def test_trains_at_batch_one():
    convattn.create_attn("splat", 16).train()(torch.randn(1, 16, 3, 4)).sum().backward()


@pytest.mark.parametrize(
    "bad", [dict(radix=0), dict(cardinality=3), dict(kernel_size=2), dict(rd_ratio=0),
            dict(radix=2, cardinality=4, rd_channels=30), dict(norm_layer="bnn")]
)
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="SplitAttn"):
        convattn.create_attn("splat", 16, **bad)
