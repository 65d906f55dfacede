"""Non-local blocks against a transcription of Wang et al. (CVPR 2018), Eq. 1–6, and timm's NonLocalAttn."""

import pytest
import torch
import torch.nn.functional as F

import convattn
import convattn.layers.functional as functional
import convattn.layers.non_local as non_local
from convattn.exceptions import ConfigError, ShapeError

MODES = ["embedded_gaussian", "gaussian", "dot_product", "concatenation"]
NAMES = {1: "non_local1d", 2: "non_local", 3: "non_local3d"}


def conv1x1(x, w, b):
    # a 1×1 convolution written as a per-position matrix product over (B, C, positions)
    return torch.einsum("oc,bcn->bon", w.flatten(1), x) + b[None, :, None]


def pool(x, dims):
    if dims == 1:
        return F.max_pool1d(x, 2)
    if dims == 2:
        return F.max_pool2d(x, 2)
    return F.max_pool3d(x, (1, 2, 2))


def ref_non_local(block, x):
    """y_i = 1/C(x) Σ_j f(x_i, x_j) g(x_j);  z_i = BN(W_z y_i) + x_i  (Eq. 1, 6), pairwise f from Sec. 3.2."""
    dims = x.dim() - 2
    b, c = x.shape[:2]
    flat = x.flatten(2)
    sub = (lambda t: pool(t.reshape(b, -1, *x.shape[2:]), dims).flatten(2)) if block.sub_sample else (lambda t: t)
    g = sub(conv1x1(flat, block.g.weight, block.g.bias))  # (B, d, M)
    if block.mode == "gaussian":
        theta, phi = flat, sub(flat)
    else:
        theta = conv1x1(flat, block.theta.weight, block.theta.bias)
        phi = sub(conv1x1(flat, block.phi.weight, block.phi.bias))
    n, m = theta.shape[-1], phi.shape[-1]
    if block.mode in ("gaussian", "embedded_gaussian"):  # f = exp(θᵢᵀφⱼ), C(x) = Σ_j f
        f = torch.exp(torch.einsum("bdi,bdj->bij", theta, phi))
        weights = f / f.sum(dim=2, keepdim=True)
    elif block.mode == "dot_product":  # f = θᵢᵀφⱼ, C(x) = N
        weights = torch.einsum("bdi,bdj->bij", theta, phi) / m
    else:  # f = ReLU(w_fᵀ [θᵢ; φⱼ]), C(x) = N: build every concatenated pair explicitly
        pairs = torch.cat(
            [theta.transpose(1, 2)[:, :, None, :].expand(b, n, m, -1), phi.transpose(1, 2)[:, None, :, :].expand(b, n, m, -1)],
            dim=-1,
        )
        weights = torch.relu(pairs @ block.concat_project.weight[0]) / m
    y = torch.einsum("bij,bdj->bdi", weights, g)
    z = conv1x1(y, block.W.weight, block.W.bias).reshape(x.shape)
    if block.bn is not None:
        z = F.batch_norm(z, block.bn.running_mean, block.bn.running_var, block.bn.weight, block.bn.bias, False, 0.0, block.bn.eps)
    return z + x, weights


def randomize(block):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return block.eval()


def make_input(dims, b=2, c=16, scale=0.5):
    sizes = {1: (11,), 2: (5, 6), 3: (3, 4, 5)}[dims]
    return torch.randn(b, c, *sizes) * scale


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dims,sub_sample", [(2, False), (2, True), (1, True), (3, True), (3, False)])
def test_matches_paper(mode, dims, sub_sample):
    block = randomize(convattn.create_attn(NAMES[dims], 16, mode=mode, sub_sample=sub_sample))
    x = make_input(dims)
    expected, weights = ref_non_local(block, x)
    torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)
    with convattn.record_attention(block) as maps:
        recorded = block(x)
    torch.testing.assert_close(recorded, block(x), rtol=1e-5, atol=1e-5)  # explicit path == default path
    (attn,) = maps.values()
    torch.testing.assert_close(attn, weights, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bn_layer", [True, False])
def test_identity_at_init(mode, bn_layer):
    block = convattn.create_attn("non_local", 16, mode=mode, bn_layer=bn_layer, sub_sample=True)
    x = torch.randn(2, 16, 7, 9)
    assert torch.equal(block(x), x)


def test_inter_channels_default_is_half():
    block = convattn.create_attn("non_local", 64)
    assert block.g.out_channels == block.theta.out_channels == 32
    assert convattn.create_attn("non_local", 64, inter_channels=8).phi.out_channels == 8


def test_concatenation_in_query_chunks_equals_one_block(monkeypatch):
    block = randomize(convattn.create_attn("non_local", 16, mode="concatenation"))
    x = make_input(2)
    whole = block(x)
    monkeypatch.setattr(non_local, "_PAIRWISE_BUDGET", 2 * 30 * 4)  # 4 queries per chunk
    torch.testing.assert_close(block(x), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian", "dot_product"])
def test_default_path_never_builds_the_attention_matrix(monkeypatch, mode):
    def refuse(*args, **kwargs):
        raise AssertionError("explicit N×N attention built outside recording")

    monkeypatch.setattr(functional, "attention_explicit", refuse)
    monkeypatch.setattr(torch.Tensor, "softmax", refuse)
    block = randomize(convattn.create_attn("non_local", 16, mode=mode)).train()
    block(torch.randn(1, 16, 10, 10)).sum().backward()


def test_matches_timm_non_local_attn_without_scale():
    timm_nl = pytest.importorskip("timm.layers.non_local_attn")
    theirs = timm_nl.NonLocalAttn(32, use_scale=False, rd_channels=8)
    ours = convattn.create_attn("non_local", 32, inter_channels=8)
    randomize(theirs)
    with torch.no_grad():
        for a, b in [(ours.theta, theirs.t), (ours.phi, theirs.p), (ours.g, theirs.g), (ours.W, theirs.z)]:
            a.load_state_dict(b.state_dict())
        ours.bn.load_state_dict(theirs.norm.state_dict())
    x = torch.randn(2, 32, 5, 6) * 0.3
    for mode in (True, False):
        theirs.train(mode), ours.train(mode)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_export_concatenation_mode():
    block = randomize(convattn.create_attn("non_local", 16, mode="concatenation", sub_sample=True))
    x = torch.randn(2, 16, 4, 5)
    torch.testing.assert_close(torch.export.export(block, (x,)).module()(x), block(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["gaussian", "dot_product", "concatenation"])
def test_gradcheck_other_modes(mode):
    block = randomize(convattn.create_attn("non_local", 8, mode=mode, sub_sample=True)).double()
    x = torch.randn(1, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-4, fast_mode=True)


def test_sub_sample_needs_two_positions():
    block = convattn.create_attn("non_local", 16, sub_sample=True)
    with pytest.raises(ShapeError, match="NonLocal2d"):
        block(torch.randn(1, 16, 1, 5))
    block3d = convattn.create_attn("non_local3d", 16, sub_sample=True)
    assert block3d(torch.randn(1, 16, 1, 2, 2)).shape == (1, 16, 1, 2, 2)  # time is not pooled
    with pytest.raises(ShapeError, match="NonLocal3d"):
        block3d(torch.randn(1, 16, 4, 1, 2))


@pytest.mark.parametrize("bad", [dict(mode="cosine"), dict(inter_channels=0), dict(inter_channels=2.5)])
def test_bad_arguments(bad):
    with pytest.raises(ConfigError, match="NonLocal2d"):
        convattn.create_attn("non_local", 16, **bad)
