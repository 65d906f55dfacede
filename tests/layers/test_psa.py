"""Polarized self-attention against a transcription of Liu et al. (2021), Eq. 1-4."""

import pytest
import torch
import torch.nn.functional as F

import convattn
from convattn.exceptions import ConfigError


def _conv(x, conv):
    return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x) + (
        0 if conv.bias is None else conv.bias[None, :, None, None]
    )


def a_ch(x, m):
    # Eq. 1: A^ch = F_SG[W_z|θ1((σ1(W_v(X))) × F_SM(σ2(W_q(X))))], LayerNorm inside W_z|θ1
    b, c, h, w = x.shape
    wv = _conv(x, m.ch_wv).reshape(b, c // 2, h * w)  # σ1
    wq = _conv(x, m.ch_wq).reshape(b, h * w, 1)  # σ2
    z = wv @ torch.softmax(wq, dim=1)  # (B, C/2, 1)
    z = torch.einsum("oc,bc->bo", m.ch_wz.weight[:, :, 0, 0], z[..., 0])
    if m.ch_wz.bias is not None:
        z = z + m.ch_wz.bias
    z = F.layer_norm(z, (c,), m.ln.weight, m.ln.bias, m.ln.eps)
    return torch.sigmoid(z)[:, :, None, None]


def a_sp(x, m):
    # Eq. 3: A^sp = F_SG[σ3(F_SM(σ1(F_GP(W_q(X)))) × σ2(W_v(X)))]
    b, c, h, w = x.shape
    gp = _conv(x, m.sp_wq).mean(dim=(2, 3)).reshape(b, 1, c // 2)  # σ1(F_GP(.))
    wv = _conv(x, m.sp_wv).reshape(b, c // 2, h * w)  # σ2
    return torch.sigmoid((torch.softmax(gp, dim=-1) @ wv).reshape(b, 1, h, w))  # σ3


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_matches_paper_equations(mode, bias):
    m = convattn.create_attn("psa", 8, mode=mode, bias=bias)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 8, 5, 4)
    zch = a_ch(x, m) * x  # Eq. 2
    if mode == "parallel":
        ref = zch + a_sp(x, m) * x  # Eq. 5: PSA_p = Z^ch + Z^sp
    else:
        ref = a_sp(zch, m) * zch  # Eq. 6: PSA_s = Z^sp(Z^ch(X))
    torch.testing.assert_close(m(x), ref)


def test_records_both_gates():
    m = convattn.create_attn("psa", 16)
    x = torch.randn(2, 16, 3, 5)
    with convattn.record_attention(m) as maps:
        y = m(x)
    ch, sp = maps["PolarizedSelfAttention:channel"], maps["PolarizedSelfAttention:spatial"]
    assert ch.shape == (2, 16) and sp.shape == (2, 1, 3, 5)
    torch.testing.assert_close(y, x * ch[:, :, None, None] + x * sp)


@pytest.mark.parametrize("bad", [dict(mode="serial"), dict(gate_layer="x")])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="PolarizedSelfAttention"):
        convattn.create_attn("psa", 16, **bad)
    with pytest.raises(ConfigError, match="channels >= 2"):
        convattn.create_attn("psa", 1)
