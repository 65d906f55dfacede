"""Attention pooling (Rodríguez et al., ECCV 2018 attention heads) and the gated attention head,
against direct transcriptions with explicit loops over heads and positions."""

import pytest
import torch

import convattn
from convattn.exceptions import ConfigError, DTypeError, ShapeError
from convattn.layers.attn_pool import AttentionPool2d, GatedAttentionHead


def reference_pool(x, w, b, mode, normalize, fc=None):
    bsz, c, h, wd = x.shape
    feats = x.reshape(bsz, c, h * wd)
    outs = []
    for k in range(w.shape[0]):
        z = torch.einsum("c,bcn->bn", w[k], feats) + b[k]  # 1×1 conv logit map of head k
        if mode == "softmax":
            a = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
        else:
            g = 1 / (1 + torch.exp(-z))
            a = g / g.sum(1, keepdim=True) if normalize == "sum" else g / (h * wd)
        outs.append(sum(a[:, n, None] * feats[:, :, n] for n in range(h * wd)))  # Σ_n a_n x_n
    out = torch.cat(outs, dim=1)  # head-major
    return out if fc is None else out @ fc.weight.T + fc.bias


def _perturb(m):
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))


@pytest.mark.parametrize(
    "mode,normalize,out_dim", [("softmax", "sum", None), ("sigmoid", "sum", None), ("sigmoid", "mean", 7), ("softmax", "sum", 5)]
)
def test_matches_reference(mode, normalize, out_dim):
    torch.manual_seed(0)
    pool = convattn.create_attn("attn_pool", 8, num_heads=3, mode=mode, normalize=normalize, out_dim=out_dim)
    _perturb(pool)
    x = torch.randn(2, 8, 4, 5)
    y = pool(x)
    assert y.shape == (2, out_dim or 24)
    ref = reference_pool(x, pool.logits.weight.flatten(1), pool.logits.bias, mode, normalize, pool.fc)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_starts_as_global_average_pooling_per_head(mode):
    pool = AttentionPool2d(16, num_heads=2, mode=mode)
    x = torch.randn(2, 16, 7, 9)
    gap = x.mean((2, 3))
    torch.testing.assert_close(pool(x), torch.cat([gap, gap], 1))


def test_records_per_head_maps():
    pool = AttentionPool2d(16, num_heads=4)
    _perturb(pool)
    x = torch.randn(2, 16, 5, 6)
    with convattn.record_attention(pool) as maps:
        y = pool(x)
    (a,) = maps.values()
    assert a.shape == (2, 4, 5, 6)
    torch.testing.assert_close(a.sum((2, 3)), torch.ones(2, 4))
    torch.testing.assert_close(y.view(2, 4, 16), torch.einsum("bkhw,bchw->bkc", a, x))
    sig = AttentionPool2d(16, num_heads=2, mode="sigmoid", normalize="mean")
    with convattn.record_attention(sig) as maps:
        sig(x)
    (g,) = maps.values()
    torch.testing.assert_close(g, torch.full((2, 2, 5, 6), 0.5))  # the gates themselves


@pytest.mark.parametrize("bad", [dict(mode="max"), dict(normalize="l2"), dict(num_heads=0), dict(out_dim=0)])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="AttentionPool2d"):
        convattn.create_attn("attn_pool", 16, **bad)


def reference_gated(x, gates, proj, heads):
    d = x.shape[1]
    ys = []
    for k in range(heads):
        wk, bk = gates.weight[k * d : (k + 1) * d], gates.bias[k * d : (k + 1) * d]
        ys.append(x * torch.sigmoid(x @ wk.T + bk))  # y_k = x ⊙ σ(W_k x + b_k)
    y = torch.cat(ys, 1)
    return y if proj is None else y @ proj.weight.T + proj.bias


@pytest.mark.parametrize("heads,out", [(1, None), (3, None), (2, 5)])
def test_gated_head_matches_reference(heads, out):
    torch.manual_seed(1)
    head = GatedAttentionHead(12, num_heads=heads, out_features=out).eval()
    x = torch.randn(4, 12)
    y = head(x)
    assert y.shape == (4, out or 12)
    assert (head.proj is None) == (heads == 1 and out is None)
    torch.testing.assert_close(y, reference_gated(x, head.gates, head.proj, heads))


def test_gated_head_records_gates_dropout_and_export():
    head = GatedAttentionHead(12, num_heads=2, dropout=0.5)
    x = torch.randn(4, 12)
    with convattn.record_attention(head) as maps:
        head.eval()(x)
    (g,) = maps.values()
    assert g.shape == (4, 2, 12) and ((g > 0) & (g < 1)).all()
    head.train()
    torch.manual_seed(0)
    assert not torch.allclose(head(x), head.eval()(x))  # dropout active in training only
    exported = torch.export.export(head.eval(), (x,)).module()
    torch.testing.assert_close(exported(x), head(x))
    xd = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(head.double(), (xd,))


def test_gated_head_errors():
    head = GatedAttentionHead(12)
    with pytest.raises(ShapeError, match=r"GatedAttentionHead.*\(B, 12\)"):
        head(torch.randn(4, 13))
    with pytest.raises(ShapeError, match="GatedAttentionHead"):
        head(torch.randn(4, 12, 1))
    with pytest.raises(DTypeError, match="GatedAttentionHead"):
        head(torch.ones(4, 12, dtype=torch.long))
    for bad in (dict(dropout=1.0), dict(num_heads=0), dict(out_features=-1), dict(gate_layer="sigmoyd")):
        with pytest.raises(ConfigError, match="GatedAttentionHead"):
            GatedAttentionHead(12, **bad)
