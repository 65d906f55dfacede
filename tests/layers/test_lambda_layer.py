"""Lambda layer against a transcription of Bello (ICLR 2021), Sec. 3-4, and against timm."""

import pytest
import torch
import torch.nn.functional as F

import convattn
from convattn.exceptions import ConfigError


def _bn(t, bn):
    return F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


def reference_lambda(x, m):
    b, c, h, w = x.shape
    nh, dk, dv, r = m.num_heads, m.dim_k, m.dim_v, m.r
    qkv = torch.einsum("oc,bchw->bohw", m.qkv.weight[:, :, 0, 0], x)
    q, k, v = qkv[:, : nh * dk], qkv[:, nh * dk: nh * dk + dk], qkv[:, nh * dk + dk:]
    q = _bn(q, m.norm_q).reshape(b, nh, dk, h, w)
    v = _bn(v, m.norm_v)  # (B, v, H, W)
    kbar = k.reshape(b, dk, h * w).softmax(-1).reshape(b, dk, h, w)
    lam_c = torch.einsum("bkhw,bvhw->bkv", kbar, v)  # λ^c = K̄ᵀ V
    e = m.pos_weight[:, 0]  # (k, r, r): E indexed by the offset m - n
    y = torch.zeros(b, nh, dv, h, w)
    for i in range(h):
        for j in range(w):
            lam_p = torch.zeros(b, dk, dv)
            for di in range(-(r // 2), r // 2 + 1):
                for dj in range(-(r // 2), r // 2 + 1):
                    if 0 <= i + di < h and 0 <= j + dj < w:
                        lam_p += e[:, di + r // 2, dj + r // 2][None, :, None] * v[:, None, :, i + di, j + dj]
            y[..., i, j] = torch.einsum("bhk,bkv->bhv", q[..., i, j], lam_c + lam_p)  # y_n = q_nᵀ(λ^c + λ^p_n)
    return y.reshape(b, nh * dv, h, w)


def _randomise_norms(m):
    with torch.no_grad():
        for bn in (m.norm_q, m.norm_v):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("r", [3, 5])
def test_matches_paper_equations(r):
    m = convattn.create_attn("lambda", 8, num_heads=2, dim_head=3, r=r).eval()
    _randomise_norms(m)
    x = torch.randn(2, 8, 4, 5)
    torch.testing.assert_close(m(x), reference_lambda(x, m), rtol=1e-4, atol=1e-5)


def test_matches_timm_with_zero_conv_bias():
    timm_lambda = pytest.importorskip("timm.layers.lambda_layer")
    ref = timm_lambda.LambdaLayer(16, num_heads=4, dim_head=8, r=5).eval()
    m = convattn.create_attn("lambda", 16, num_heads=4, dim_head=8, r=5).eval()
    _randomise_norms(m)
    with torch.no_grad():
        ref.conv_lambda.bias.zero_()
        m.qkv.weight.copy_(ref.qkv.weight)
        m.pos_weight.copy_(ref.conv_lambda.weight[..., 0])
    ref.norm_q.load_state_dict(m.norm_q.state_dict())
    ref.norm_v.load_state_dict(m.norm_v.state_dict())
    x = torch.randn(2, 16, 6, 7)
    torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-5)


def test_defaults_and_no_norm():
    m = convattn.create_attn("lambda", 16)
    assert (m.dim_k, m.dim_v, m.r, m.num_heads) == (16, 4, 9, 4)
    m2 = convattn.create_attn("lambda", 16, norm_layer=None, dim_head=None)
    assert m2.dim_k == 4
    assert m2(torch.randn(1, 16, 1, 1)).shape == (1, 16, 1, 1)


@pytest.mark.parametrize("bad", [dict(r=4), dict(num_heads=3), dict(dim_head=0), dict(norm_layer="bnx")])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="LambdaLayer"):
        convattn.create_attn("lambda", 16, **bad)
