"""What a kernel layer's Python costs per call, beside its C++ kernel: warm, and right after a large pass.

    python benchmarks/dispatch_overhead.py [--calls 300] [--evict-mb 16]

For SE and CBAM (inference, ``torch.no_grad``) on a tiny input (1×64×4×4), so that the kernel's own work
is negligible, three calls are timed:

- ``op``: the layer's ``torch.ops`` kernel called directly below autograd (``redispatch`` on the CPU key),
  the op and the parameters looked up beforehand;
- ``layer``: ``layer(x)``, which checks its input and the execution mode, finds the kernel and calls it;
- ``nothing``: an empty Python call, the timer's own cost.

Each is timed *warm* (the same call just before, as ``timeit`` measures) and *cold* (after a pass over an
``--evict-mb`` MB tensor, as in a network where the previous layer streamed its activations through the
caches). ``layer − op`` is the dispatch cost; a layer's forward on real inputs pays the cold figure.
One thread; medians of ``--calls`` calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from convattn import create_attn
from convattn.layers._cbam_ops import cbam_ops
from convattn.layers._se_ops import se_ops

_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _cases():
    """(name, layer, its op with the parameters bound) for SE and CBAM, or a reason they cannot run."""
    se, cbam = create_attn("se", 64).eval(), create_attn("cbam", 64).eval()
    se_p = (se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias)
    ch, sp = cbam.channel, cbam.spatial
    cbam_p = (ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.weight, sp.conv.bias)
    if se_ops() is None or cbam_ops() is None:
        raise SystemExit("the C++ kernels are not available here (`convattn kernels status` says why)")
    se_op, cbam_op = se_ops().forward.default, cbam_ops().forward.default
    return [("se", se, lambda x: se_op.redispatch(_CPU, x, *se_p)),
            ("cbam", cbam, lambda x: cbam_op.redispatch(_CPU, x, *cbam_p))]


def _median_us(f, calls: int, evict: torch.Tensor | None) -> float:
    times = []
    for _ in range(calls):
        if evict is None:
            f()
        else:
            evict.mul_(1.0)
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300, help="timed calls per case (default 300)")
    ap.add_argument("--evict-mb", type=float, default=16.0, help="size of the pass before a cold call (default 16)")
    args = ap.parse_args(argv)
    if args.calls < 1 or not args.evict_mb > 0:
        ap.error(f"expected --calls >= 1 and --evict-mb > 0, got --calls {args.calls} --evict-mb {args.evict_mb:g}")
    torch.set_num_threads(1)
    x = torch.randn(1, 64, 4, 4)
    evict = torch.randn(int(args.evict_mb * 2**20 / 4))
    print(f"torch {torch.__version__}, 1 thread, input 1x64x4x4, medians of {args.calls} calls (us); "
          f"cold: after a pass over {args.evict_mb:g} MB")
    print(f"{'':6} {'':6} {'nothing':>8} {'op':>8} {'layer':>8} {'layer - op':>11}")
    with torch.no_grad():
        for name, layer, op in _cases():
            for state, ev in (("warm", None), ("cold", evict)):
                nothing, o, lay = (_median_us(f, args.calls, ev) for f in (lambda: None, lambda: op(x), lambda: layer(x)))
                print(f"{name:6} {state:6} {nothing:8.1f} {o:8.1f} {lay:8.1f} {lay - o:11.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
