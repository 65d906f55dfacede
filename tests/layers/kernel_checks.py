"""Checks shared by the SE / CBAM tests: each runs a layer through one workflow of the PyTorch
toolchain and compares it with plain autograd (``CONVATTN_EXTENSIONS=0``) or eager mode; and
the stand-in for the compiler used by the kernel-cache tests."""

import copy
import os
import subprocess

import pytest
import torch
from torch import nn

from convattn.layers import kernels
from convattn.layers.cbam import cbam_ops
from convattn.layers.se import se_ops

LOADERS = {"convattn_se": se_ops, "convattn_cbam": cbam_ops}


def require(library):
    """The library's ops; where they could not be built, a skip, or in CI (``CI=true``) a failure."""
    ops = LOADERS[library]()
    if ops is None:
        why = kernels._ERRORS.get(library, "disabled by CONVATTN_EXTENSIONS")
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"{library} did not build in CI: {why}")
        pytest.skip(f"convattn's C++ kernels could not be built here: {why}")
    return ops


def kernel_backends(library):
    """An autouse fixture for a test module: every test runs on ``library``'s C++ kernels (where they
    build; in CI they must) and on the PyTorch-op path (``CONVATTN_EXTENSIONS=0``)."""

    @pytest.fixture(autouse=True, params=["cpp", "torch-ops"])
    def backend(request, monkeypatch):
        if request.param == "torch-ops":
            monkeypatch.setenv("CONVATTN_EXTENSIONS", "0")
        else:
            require(library)
        return request.param

    return backend


def fake_build(calls, ok=True):
    """Stands in for the compiler subprocess: records the call and writes the library (or fails)."""

    real_run = subprocess.run

    def run(cmd, env=None, **kwargs):
        if env is None:  # not the build (the compiler's or ninja's version): the real thing
            return real_run(cmd, **kwargs)
        calls.append(env["PATH"])
        folder = cmd[5]
        if ok:
            open(os.path.join(folder, f"{cmd[3]}.so"), "w").close()
            return subprocess.CompletedProcess(cmd, 0, "ninja: built", "")
        return subprocess.CompletedProcess(cmd, 1, "", "se_cpu.cpp:12:3: error: 'foo' was not declared\nmore\n")

    return run


def _input(layer, batch=2, size=(3, 4), dtype=torch.float64):
    return torch.randn(batch, layer.channels, *size, dtype=dtype, requires_grad=True)


def check_gradgradcheck(layer):
    """First and second derivatives in float64 against finite differences, every parameter included."""
    layer = layer.double()
    x, params = _input(layer, size=(3, 3)), list(layer.parameters())
    torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params))
    torch.autograd.gradgradcheck(lambda x, *p: layer(x), (x, *params))


def _penalty_step(conv, layer, x):
    """An R1-style step: the loss plus the squared norm of its input gradient (a graph of the gradient)."""
    out = layer(conv(x))
    (g,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    (out.sum() + g.pow(2).sum()).backward()
    return [q.grad for q in (*conv.parameters(), *layer.parameters())]


def check_penalty_matches_plain_autograd(layer):
    """Parameter gradients of a gradient-penalty step in float32 equal plain autograd's to 1e-6 of
    each gradient's largest entry (the kernels sum in another order than PyTorch's ops)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, layer.channels, 3, padding=1)
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    ours = _penalty_step(conv, layer, x)
    conv2, layer2 = copy.deepcopy(conv), copy.deepcopy(layer)
    for q in (*conv2.parameters(), *layer2.parameters()):
        q.grad = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVATTN_EXTENSIONS", "0")
        ref = _penalty_step(conv2, layer2, x)
    for u, v in zip(ours, ref):
        assert u is not None
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6 * float(v.abs().max()))


def check_vmap_grad_matches_loop(layer):
    """``vmap(grad(...))`` per-sample parameter gradients equal a loop over the samples."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = torch.randn(3, layer.channels, 5, 4)

    def loss(p, sample):
        return functional_call(layer, p, (sample.unsqueeze(0),)).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        ref = torch.autograd.grad(layer(x[i : i + 1]).square().sum(), list(layer.parameters()))
        for name, r in zip(params, ref):
            torch.testing.assert_close(per_sample[name][i], r, rtol=1e-5, atol=1e-6)


def check_autocast_after_conv(layer):
    """bfloat16 CPU autocast, forward and backward, after a convolution: the layer runs in bfloat16
    (its output is bfloat16), every parameter gets a finite gradient, and the result is float32's within
    bfloat16's precision."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, layer.channels, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(conv(x))
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    for q in (*conv.parameters(), *layer.parameters()):
        assert q.grad is not None and q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()
    torch.testing.assert_close(y.float(), layer(conv(x)), rtol=0.05, atol=0.05)


def check_low_precision_parameters(layer, dtype):
    """A layer converted to float16 / bfloat16 runs forward and backward on input of its dtype, close to float32."""
    x = torch.randn(2, layer.channels, 6, 5)
    ref = layer(x)
    low = copy.deepcopy(layer).to(dtype)
    xl = x.to(dtype).requires_grad_()
    y = low(xl)
    assert y.dtype == dtype
    y.float().square().sum().backward()
    assert xl.grad is not None and all(q.grad is not None for q in low.parameters())
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05)


def check_compile_matches_eager(layer):
    """``torch.compile(fullgraph=True)``: forward and backward equal eager mode (the AOT-autograd
    backend, which traces what Inductor would compile, without the C++ code generation)."""
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, layer.channels, 6, 5, requires_grad=True)
    params = [x, *layer.parameters()]
    eager_out = layer(x)
    eager = torch.autograd.grad(eager_out.square().sum(), params)
    out = compiled(x)
    torch.testing.assert_close(out, eager_out)
    for u, v in zip(torch.autograd.grad(out.square().sum(), params), eager):
        torch.testing.assert_close(u, v)


def check_opcheck(ops, x, params):
    """``torch.library.opcheck`` of a kernel op pair: the forward on ``(x, *params)`` with every test, and the
    backward (schema and fake tensors) with and without the input gradient."""
    torch.library.opcheck(ops.forward.default, (x, *params))
    detached = [p if p is None else p.detach() for p in params]
    saved = ops.forward(x.detach(), *detached)[1:]
    for need_dx in (True, False):
        args = (x.detach(), torch.randn_like(x), *detached, *saved, need_dx)
        torch.library.opcheck(ops.backward.default, args, test_utils=("test_schema", "test_faketensor"))


def check_blend_matches_plain(layer, *, kernels, channels_last, gamma=0.3, shape=(3, 4, 5)):
    """``layer.forward_blended(x, γ)`` (float64) against the plain blend ``x + γ (layer(x) − x)``: output and
    gradients of the input, γ and every parameter; ``None`` exactly where the kernels are off (``kernels``)."""
    layer = layer.double()
    x = torch.randn(shape[0], layer.channels, *shape[1:], dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.tensor(gamma, dtype=torch.float64, requires_grad=True)
    out = layer.forward_blended(x, g)
    assert (out is not None) == kernels
    if out is None:
        return
    ref = x + g * (layer(x) - x)
    torch.testing.assert_close(out, ref)
    dy = torch.randn_like(ref)
    wrt = [x, g, *layer.parameters()]
    for u, v in zip(torch.autograd.grad(out, wrt, dy), torch.autograd.grad(ref, wrt, dy)):
        torch.testing.assert_close(u, v)
