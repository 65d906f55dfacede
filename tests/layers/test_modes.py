"""``convattn.layers.modes``: each execution mode detected, and each question answered, as documented."""

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwad

from convattn.layers import modes


def answers(x):
    """Every question of :mod:`convattn.layers.modes`, asked about ``x`` where it takes a tensor."""
    return {
        "symbolic": modes.is_symbolic(x),
        "plain": modes.must_run_plain(x),
        "forward_ad": modes.forward_mode_ad(),
        "fused": modes.fused_attention_may_run(),
        "wrapper": modes.double_backward_wrapper_may_run(x),
        "kernels": modes.kernels_may_run(x, ()),
    }


def expect(symbolic=False, plain=False, forward_ad=False, fused=True, wrapper=False, kernels=False):
    return dict(symbolic=symbolic, plain=plain, forward_ad=forward_ad, fused=fused, wrapper=wrapper, kernels=kernels)


def x_():
    return torch.randn(2, 3, requires_grad=True)


def eager():
    return answers(x_())


def no_grad():
    with torch.no_grad():
        return answers(x_())


def autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return answers(x_())


def vmap():
    out = {}
    torch.func.vmap(lambda x: out.update(answers(x)) or x)(x_())
    return out


def grad():
    out = {}
    torch.func.grad(lambda x: out.update(answers(x)) or x.sum())(x_())
    return out


def jvp():
    out = {}
    x = x_()
    torch.func.jvp(lambda x: out.update(answers(x)) or x, (x,), (torch.ones_like(x),))
    return out


def jacfwd():
    out = {}
    torch.func.jacfwd(lambda x: out.update(answers(x)) or x)(x_())
    return out


def dual_tensors():
    with fwad.dual_level():
        x = x_()
        return answers(fwad.make_dual(x, torch.ones_like(x)))


def flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False):
        return answers(x_())


def jit_trace():
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(lambda x: out.update(answers(x)) or x * 2, x_(), check_trace=False)
    return out


def compiled():
    torch._dynamo.reset()
    out = {}
    torch.compile(lambda x: out.update(answers(x)) or x * 2, backend="eager", fullgraph=True)(x_())
    return out


CASES = {
    eager: expect(wrapper=True, kernels=True),
    no_grad: expect(kernels=True),
    # intended differences: autocast keeps the twice-differentiable SDPA wrapper, not the kernels
    autocast: expect(plain=True, wrapper=True),
    vmap: expect(plain=True),
    grad: expect(plain=True),
    jvp: expect(plain=True, forward_ad=True, fused=False),
    jacfwd: expect(plain=True, forward_ad=True, fused=False),
    dual_tensors: expect(plain=True, forward_ad=True, fused=False),
    flop_counter: expect(plain=True),
    jit_trace: expect(symbolic=True, plain=True),
    compiled: expect(symbolic=True, plain=True),
}


@pytest.mark.parametrize("mode", list(CASES), ids=lambda f: f.__name__)
def test_each_mode_answers_as_documented(mode):
    assert mode() == CASES[mode]


def test_fx_proxy_is_symbolic_and_takes_no_kernel():
    seen = {}

    def f(x):
        seen.update(proxy=modes.is_fx_proxy(x), symbolic=modes.is_symbolic(x), plain=modes.must_run_plain(x))
        seen.update(kernels=modes.kernels_may_run(x, ()))
        return x * 2

    torch.fx.symbolic_trace(f)
    assert seen == dict(proxy=True, symbolic=True, plain=True, kernels=False)
    assert not modes.is_fx_proxy(torch.zeros(1)) and not modes.is_symbolic()


def test_kernels_need_a_plain_cpu_float_tensor_and_parameters_of_its_dtype():
    x = torch.randn(2, 4, 3, 3)
    assert modes.kernels_may_run(x, (torch.randn(4), None))
    assert modes.kernels_may_run(x.double().contiguous(memory_format=torch.channels_last), ())
    assert not modes.kernels_may_run(x, (torch.randn(4).double(),))
    assert not modes.kernels_may_run(x.half(), ())
    assert not modes.kernels_may_run(x[:, :, ::2], ())
    assert not modes.kernels_may_run(x.to("meta"), ())
    assert not modes.kernels_may_run(x, (torch.randn(4, device="meta"),))
