"""DANet position / channel / dual attention against a transcription of Fu et al. (CVPR 2019)."""

import pytest
import torch

import convattn


def ref_pam(x, wb, bb, wc, bc, wd, bd, alpha):
    # Eq. 1: s_ji = exp(B_i·C_j) / Σ_i exp(B_i·C_j);  Eq. 2: E_j = α Σ_i s_ji D_i + A_j
    b, c, h, w = x.shape
    a = x.reshape(b, c, h * w)
    B = torch.einsum("kc,bcn->bkn", wb, a) + bb[None, :, None]
    C = torch.einsum("kc,bcn->bkn", wc, a) + bc[None, :, None]
    D = torch.einsum("kc,bcn->bkn", wd, a) + bd[None, :, None]
    logits = torch.einsum("bki,bkj->bji", B, C)  # [b, j, i] = B_i · C_j
    s = torch.exp(logits) / torch.exp(logits).sum(dim=2, keepdim=True)
    e = torch.einsum("bji,bci->bcj", s, D)
    return alpha * e.reshape(b, c, h, w) + x, s


def ref_cam(x, beta):
    # Eq. 3 as the authors' code computes it: x_ji = softmax_i(max_k(A_j·A_k) − A_j·A_i); Eq. 4.
    b, c, h, w = x.shape
    a = x.reshape(b, c, h * w)
    energy = torch.bmm(a, a.transpose(1, 2))
    energy_new = energy.max(dim=-1, keepdim=True).values.expand_as(energy) - energy
    att = torch.softmax(energy_new, dim=-1)
    return beta * torch.bmm(att, a).reshape(b, c, h, w) + x, att


def pam_weights(pam):
    # Eq. 1 normalises over i for each output position j: C_j queries, B_i is the key.
    return (
        pam.key.weight.flatten(1), pam.key.bias,
        pam.query.weight.flatten(1), pam.query.bias,
        pam.value.weight.flatten(1), pam.value.bias,
    )


def test_pam_matches_paper_and_recording_path():
    pam = convattn.create_attn("danet_pam", 32)
    with torch.no_grad():
        pam.gamma.fill_(0.3)
    x = torch.randn(2, 32, 5, 7)
    expected, s = ref_pam(x, *pam_weights(pam), pam.gamma)
    torch.testing.assert_close(pam(x), expected, rtol=1e-5, atol=1e-5)
    with convattn.record_attention(pam) as maps:
        torch.testing.assert_close(pam(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maps["PositionAttention"], s, rtol=1e-5, atol=1e-6)
    assert pam.query.out_channels == 4 and pam.value.out_channels == 32


@pytest.mark.parametrize("size", [(5, 7), (1, 3), (9, 2)])
def test_cam_matches_paper_at_any_size(size):
    cam = convattn.create_attn("danet_cam", 12)
    with torch.no_grad():
        cam.gamma.fill_(-0.8)
    x = torch.randn(2, 12, *size) * 0.3
    expected, att = ref_cam(x, cam.gamma)
    torch.testing.assert_close(cam(x), expected, rtol=1e-5, atol=1e-5)
    with convattn.record_attention(cam) as maps:
        cam(x)
    torch.testing.assert_close(maps["ChannelAttention"], att, rtol=1e-5, atol=1e-6)


def test_dual_adds_both_outputs_to_the_input_once():
    layer = convattn.create_attn("danet", 16)
    with torch.no_grad():
        layer.pam.gamma.fill_(0.5)
        layer.cam.gamma.fill_(0.25)
    x = torch.randn(2, 16, 6, 5) * 0.5
    pam_out, s = ref_pam(x, *pam_weights(layer.pam), layer.pam.gamma)
    cam_out, att = ref_cam(x, layer.cam.gamma)
    expected = pam_out + cam_out - x
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    with convattn.record_attention(layer) as maps:
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert sorted(maps) == ["DualAttention:channel", "DualAttention:position"]
    torch.testing.assert_close(maps["DualAttention:position"], s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps["DualAttention:channel"], att, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["danet_pam", "danet_cam", "danet"])
def test_identity_at_init(name):
    layer = convattn.create_attn(name, 16)
    x = torch.randn(2, 16, 7, 9)
    assert torch.equal(layer(x), x)


def test_gradients_match_paper():
    pam = convattn.create_attn("danet_pam", 16)
    with torch.no_grad():
        pam.gamma.fill_(0.5)
    x = torch.randn(2, 16, 4, 3, requires_grad=True)
    ours = torch.autograd.grad(pam(x).square().sum(), [x, *pam.parameters()])
    ref = torch.autograd.grad(ref_pam(x, *pam_weights(pam), pam.gamma)[0].square().sum(), [x, *pam.parameters()])
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
