"""Markdown table of every registered attention layer: name, paper, kind, parameters and FLOPs.

    python benchmarks/layer_table.py [--channels 64 --size 56] [--out layers.md]

FLOPs are per image (batch 1, forward) as counted by convattn.bench.count_flops:
matrix products, convolutions and attention kernels only (see docs/measure.md).
"""

from __future__ import annotations

import argparse

import torch

import convattn
from convattn.bench import count_flops, count_params
from convattn.bench.suites import layer_input
from convattn.bench.tables import atomic_write_text, human_count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--out", help="also write the table to this file")
    args = ap.parse_args()
    lines = [f"| layer | kind | params (C={args.channels}) | FLOPs ({args.size}×{args.size}) | paper |",
             "|---|---|---:|---:|---|"]
    for name in convattn.list_attn():
        info = convattn.get_attn_info(name)
        try:
            layer = convattn.create_attn(name, args.channels).eval()
            x = torch.randn(*layer_input(info.ndim, 1, args.channels, args.size))
            params, flops = human_count(count_params(layer)), human_count(count_flops(layer, x))
        except Exception as exc:  # report, keep going
            params, flops = "–", f"failed: {type(exc).__name__}"
        lines.append(f"| `{name}` | {info.kind} | {params} | {flops} | {info.paper} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        atomic_write_text(args.out, table)


if __name__ == "__main__":
    main()
