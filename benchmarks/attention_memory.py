"""Memory and time of self-attention layers: fused default path vs explicit N×N path.

For each layer (created by name with ``convattn.create_attn``) and each square size
H = W, one forward pass at batch B and C channels runs on the default path (fused
``scaled_dot_product_attention``, no N×N matrix) and on the explicit path
(``softmax(QKᵀ)V`` with the matrix built, which is what runs inside
``convattn.record_attention``).

Measurement:
- time: median wall time of ``--repeats`` forward passes after ``--warmup`` passes,
  under ``torch.no_grad()``, eval mode;
- peak memory: every (layer, size) runs in a fresh subprocess; just before the first
  forward it reads its current resident set size (``/proc/self/statm``), and after
  each path it reads the process's lifetime peak RSS (``resource.getrusage``,
  ``ru_maxrss``). "Peak MB" is the difference: the extra resident memory the forward
  passes needed, input and weights excluded. The default path runs first; the
  explicit path's figure is the peak over both (it is the larger one). Because the
  peak is a lifetime figure, anything that peaked earlier (imports) can only make
  the number larger, never smaller: it is an upper bound.
- the explicit path runs under an address-space limit (``--mem-limit-gb`` above the
  process's size before the forward, via ``resource.setrlimit(RLIMIT_AS)``) so that
  a case whose N×N matrices do not fit is reported as refused instead of taking
  the shared machine's memory.

Usage::

    python benchmarks/attention_memory.py                 # table
    python benchmarks/attention_memory.py --markdown      # markdown table
    python benchmarks/attention_memory.py --names mhsa --sizes 32 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_NAMES = ["non_local", "self_attn", "danet_pam", "mhsa"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _vms_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _time_forward(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def worker(args: argparse.Namespace) -> dict:
    """Run one (layer, size) case in this process and return its measurements."""
    import torch

    import convattn

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    layer = convattn.create_attn(args.name, args.channels).eval()
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    result = {"name": args.name, "size": args.size, "threads": torch.get_num_threads()}

    with torch.no_grad():
        base = _rss_mb()
        result["default_ms"] = _time_forward(lambda: layer(x), args.repeats, args.warmup)
        result["default_mb"] = max(0.0, _peak_mb() - base)

        limit = _vms_bytes() + int(args.mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        try:
            with convattn.record_attention(layer) as maps:

                def explicit():
                    layer(x)
                    maps.clear()  # drop the recorded N×N map between passes

                result["explicit_ms"] = _time_forward(explicit, args.repeats, args.warmup)
            result["explicit_mb"] = max(0.0, _peak_mb() - base)
        except (RuntimeError, MemoryError) as err:
            result["explicit_ms"] = None
            result["explicit_mb"] = None
            result["explicit_error"] = f"over {args.mem_limit_gb:g} GB limit" if "alloc" in str(err).lower() or isinstance(err, MemoryError) else str(err).splitlines()[0][:60]
    return result


def run_case(args: argparse.Namespace, name: str, size: int) -> dict:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker",
        "--name", name, "--size", str(size), "--channels", str(args.channels),
        "--batch", str(args.batch), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
        "--mem-limit-gb", str(args.mem_limit_gb), "--threads", str(args.threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"name": name, "size": size, "error": f"exit {proc.returncode}: {tail[:80]}"}
    return json.loads(lines[-1])


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--names", nargs="+", default=DEFAULT_NAMES)
    p.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 96, 128])
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--mem-limit-gb", type=float, default=6.0,
                   help="address-space allowance of the explicit path per case")
    p.add_argument("--case-timeout", type=float, default=240.0)
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--json", action="store_true", help="print one JSON object per case")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return 0

    import convattn  # only to check the names; the cases run in subprocesses

    from tabulate import tabulate

    known = set(convattn.list_attn())
    rows, notes = [], []
    start = time.perf_counter()
    for name in args.names:
        if name not in known:
            notes.append(f"{name}: not registered in this checkout, skipped")
            continue
        for size in args.sizes:
            r = run_case(args, name, size)
            if args.json:
                print(json.dumps(r), flush=True)
            if "error" in r:
                rows.append([name, f"{size}x{size}", "-", "-", "-", "-", "-", "-", r["error"]])
                continue
            speed = r["explicit_ms"] / r["default_ms"] if r.get("explicit_ms") else None
            mem = r["explicit_mb"] / max(r["default_mb"], 1.0) if r.get("explicit_mb") is not None else None
            rows.append([
                name, f"{size}x{size}",
                _fmt(r["default_ms"], ".1f"), _fmt(r.get("explicit_ms"), ".1f"), _fmt(speed, ".2f"),
                _fmt(r["default_mb"], ".0f"), _fmt(r.get("explicit_mb"), ".0f"), _fmt(mem, ".1f"),
                r.get("explicit_error", ""),
            ])
            print(f"  {name} {size}x{size} done ({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)
    headers = [
        "layer", "H×W", "default ms", "explicit ms", "explicit/default time",
        "default peak MB", "explicit peak MB", "explicit/default mem", "note",
    ]
    print(f"B={args.batch}, C={args.channels}, forward under no_grad, median of {args.repeats}; "
          f"peak MB = peak RSS growth over the RSS before the first forward (fresh process per case)")
    print(tabulate(rows, headers=headers, tablefmt="github" if args.markdown else "simple"))
    for n in notes:
        print(f"note: {n}")
    print(f"total {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
