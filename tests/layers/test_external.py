"""External attention against a transcription of Guo et al. (2021), Eq. 5-6 and the EANet block."""

import pytest
import torch
import torch.nn.functional as F

import convattn
from convattn.exceptions import ConfigError


def reference_external(x, m):
    b, c, h, w = x.shape
    out = []
    for bi in range(b):
        xf = x[bi].reshape(c, h * w).T  # (N, C)
        f = xf @ m.conv_in.weight[:, :, 0, 0].T + m.conv_in.bias  # F = conv₁(x)
        mk = m.mk.weight[:, :, 0, 0]  # M_k (S, C)
        mv = m.mv.weight[:, :, 0, 0].T  # M_v (S, C)
        a_tilde = f @ mk.T  # (N, S)
        a_hat = torch.exp(a_tilde) / torch.exp(a_tilde).sum(dim=0, keepdim=True)  # softmax over positions
        a = a_hat / (1e-9 + a_hat.sum(dim=1, keepdim=True))  # L1 over memory units
        f_out = a @ mv  # (N, C)
        y = f_out @ m.conv_out.weight[:, :, 0, 0].T
        out.append(y.T.reshape(c, h, w))
    y = torch.stack(out)
    bn = m.norm
    y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
    return torch.relu(x + y)


def test_matches_paper_equations():
    m = convattn.create_attn("external", 8, memory_size=6).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
        m.norm.running_mean.uniform_(-0.5, 0.5)
        m.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 5, 3)
    torch.testing.assert_close(m(x), reference_external(x, m))


def test_init_ties_memories_and_records_normalised_attention():
    m = convattn.create_attn("external", 16)
    assert m.mk.weight.shape == (64, 16, 1, 1)
    torch.testing.assert_close(m.mv.weight[:, :, 0, 0], m.mk.weight[:, :, 0, 0].T)
    assert m.mv.weight.data_ptr() != m.mk.weight.data_ptr()
    with convattn.record_attention(m) as maps:
        m(torch.randn(2, 16, 4, 5))
    a = maps["ExternalAttention"]
    assert a.shape == (2, 64, 4, 5)
    torch.testing.assert_close(a.sum(1), torch.ones(2, 4, 5))


def test_without_activation_and_norm():
    m = convattn.create_attn("external", 16, act_layer=None, norm_layer=None)
    x = torch.randn(1, 16, 3, 3)
    assert (m(x) < 0).any()


@pytest.mark.parametrize("bad", [dict(memory_size=0), dict(eps=-1.0), dict(norm_layer="bnn")])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="ExternalAttention"):
        convattn.create_attn("external", 16, **bad)
