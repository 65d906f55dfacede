"""Cost of twice-differentiable attention: a training step on the default path vs plain SDPA.

The self-attention layers run ``scaled_dot_product_attention`` inside a function whose
backward replays the fused kernel's own backward and switches to plain tensor ops only
when that backward is itself differentiated (``create_graph=True``). This script checks
that the ordinary training step pays nothing for it.

For each layer and size it times a training step (forward, ``loss.backward()``) two ways,
interleaved so that load on the machine hits both alike:

- ``default``: the layer as shipped;
- ``sdpa``: the same layer with ``attention`` calling SDPA directly (the fused
  kernel's backward, not differentiable again);

and prints the median of each and the ratio default / sdpa. With ``--memory`` each
variant also runs once in a fresh subprocess and reports its peak resident memory
above the state before the step (``ru_maxrss``; an upper bound, as in
``attention_memory.py``), which shows both stay O(N): no N×N matrix.

Usage::

    python benchmarks/attention_backward.py --threads 1
    python benchmarks/attention_backward.py --names self_attn --sizes 64 --memory
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

import convattn
from convattn.layers import functional

DEFAULT_NAMES = ["self_attn", "non_local", "danet_pam", "mhsa", "bottleneck_attn"]


def _variant(name: str) -> None:
    if name == "sdpa":
        functional.double_backward_wrapper_may_run = lambda *t: False


def _step(layer: torch.nn.Module, x: torch.Tensor) -> None:
    layer.zero_grad(set_to_none=True)
    layer(x).square().mean().backward()


def _setup(name: str, size: int, channels: int, batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    layer = convattn.create_attn(name, channels)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer, torch.randn(batch, channels, size, size, requires_grad=True)


def time_case(name: str, size: int, args: argparse.Namespace) -> dict:
    layer, x = _setup(name, size, args.channels, args.batch)
    original = functional.double_backward_wrapper_may_run
    times: dict[str, list[float]] = {"default": [], "sdpa": []}
    try:
        for i in range(args.warmup + args.repeats):
            for variant in ("default", "sdpa") if i % 2 == 0 else ("sdpa", "default"):
                functional.double_backward_wrapper_may_run = original
                _variant(variant)
                t0 = time.perf_counter()
                _step(layer, x)
                if i >= args.warmup:
                    times[variant].append(time.perf_counter() - t0)
    finally:
        functional.double_backward_wrapper_may_run = original
    d, s = statistics.median(times["default"]), statistics.median(times["sdpa"])
    return {"name": name, "size": size, "default_ms": 1e3 * d, "sdpa_ms": 1e3 * s, "ratio": d / s}


def memory_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(max(args.threads, 1))
    _variant(args.variant)
    layer, x = _setup(args.name, args.size, args.channels, args.batch)
    _step(layer, torch.randn(1, args.channels, 4, 4, requires_grad=True))  # lazy initialisation, tiny
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * resource.getpagesize() / 2**20
    _step(layer, x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak - before}))


def memory_case(name: str, size: int, variant: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--worker", "--name", name, "--size", str(size), "--variant", variant,
           "--channels", str(args.channels), "--batch", str(args.batch), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--names", nargs="+", default=DEFAULT_NAMES)
    p.add_argument("--sizes", nargs="+", type=int, default=[16, 32])
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--memory", action="store_true", help="also peak memory per variant (subprocesses)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        memory_worker(args)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    header = f"{'layer':<16}{'H=W':>5}{'default ms':>12}{'sdpa ms':>10}{'ratio':>7}"
    if args.memory:
        header += f"{'default MB':>12}{'sdpa MB':>10}"
    print(f"training step (forward + backward), B={args.batch}, C={args.channels}, "
          f"median of {args.repeats}, threads={torch.get_num_threads()}")
    print(header)
    ratios = []
    for name in args.names:
        for size in args.sizes:
            r = time_case(name, size, args)
            ratios.append(r["ratio"])
            line = f"{name:<16}{size:>5}{r['default_ms']:>12.2f}{r['sdpa_ms']:>10.2f}{r['ratio']:>7.3f}"
            if args.memory:
                line += f"{memory_case(name, size, 'default', args):>12.1f}{memory_case(name, size, 'sdpa', args):>10.1f}"
            print(line, flush=True)
    print(f"geometric mean ratio default/sdpa: {statistics.geometric_mean(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
