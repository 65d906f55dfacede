"""``convattn bench layers|models``: cost tables (parameters, FLOPs, latency, memory), optionally next to timm."""

from __future__ import annotations

import argparse
import platform

from ._options import (add_batch_size, add_command, add_device, add_image_size, add_progress, check_out_file,
                       show_progress)

ORDER = 50


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="compute dtype")
    p.add_argument("--channels-last", action="store_true", help="use the channels-last memory format")
    add_device(p)
    add_progress(p)
    p.add_argument("--compare", choices=["timm"], help="also measure timm's implementation in the same run")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (median/min/max)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default: 2)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory pass")
    p.add_argument("--threads", type=int, help="torch.set_num_threads for CPU runs")
    p.add_argument("--csv", metavar="PATH", help="also write all columns as CSV")
    p.add_argument("--json", metavar="PATH", help="also write rows and run settings as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "bench", help="measure the cost of layers or models", description=run.__doc__, examples=(
        "convattn bench layers --layers se,cbam,eca --channels 64 --image-size 56 --batch-size 8",
        "convattn bench layers --layers 'se*' --compare timm --markdown layers.md",
        "convattn bench models --models resnet18 --attention none,se,cbam --train --csv models.csv"))
    what = p.add_subparsers(dest="what", metavar="WHAT")
    what.required = True

    pl = add_command(what, "layers", help="attention layers next to a 3x3 conv of the same width",
                     description="Per layer: parameters, FLOPs, forward and forward+backward latency, "
                                 "throughput, peak memory, overhead relative to a 3x3 conv of the same width.",
                     examples=("convattn bench layers --layers se,cbam --channels 64 --image-size 56 --batch-size 8",
                               "convattn bench layers --layers all --device cuda --dtype bfloat16 --json layers.json"))
    pl.add_argument("--layers", default="all", help="comma list / wildcards of layer names, or 'all' (default)")
    pl.add_argument("--channels", type=int, default=64, help="width C (default: 64)")
    add_image_size(pl, 56, deprecated=["--size"])
    add_batch_size(pl, 8, deprecated=["--batch"])
    pl.add_argument("--no-backward", dest="train", action="store_false", help="forward only")
    _common(pl)
    pl.set_defaults(func=run)

    pm = add_command(what, "models", help="whole models, inference or an SGD training step",
                     description="Per model and attention layer: parameters, FLOPs, latency, throughput, "
                                 "peak memory, and the ratio to the plain model.",
                     examples=("convattn bench models --models resnet18,resnet50 --attention none,se,cbam",
                               "convattn bench models --models simple_cnn --image-size 60 --in-chans 1 "
                               "--num-classes 10 --train --threads 1"))
    pm.add_argument("--models", default="resnet18", help="comma list / wildcards of model names (default: resnet18)")
    pm.add_argument("--attention", default="none,se,cbam", help="comma list of attention layers; 'none' = plain")
    pm.add_argument("--placement", choices=("block", "stage", "conv", "replace"),
                    help="where the attention goes (replace: swap the model's own SE); default: the model's")
    add_image_size(pm, 224, deprecated=["--size"])
    add_batch_size(pm, 32, deprecated=["--batch"])
    pm.add_argument("--in-chans", type=int, default=3, help="input channels (default: 3)")
    pm.add_argument("--num-classes", type=int, default=1000, help="classifier width (default: 1000)")
    pm.add_argument("--train", action="store_true", help="time an SGD training step instead of inference")
    _common(pm)
    pm.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Measure parameters, FLOPs, latency, throughput and peak memory of attention layers or models."""
    import torch

    from ..bench import bench_layers, bench_models, format_table, write_rows
    from ..engine.distributed import resolve_device
    from ..exceptions import ConfigError

    if args.repeats is not None and args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    positive = ("channels", "image_size", "batch_size") if args.what == "layers" else (
        "image_size", "batch_size", "in_chans", "num_classes")
    for name in positive:
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    for option in ("csv", "json", "markdown"):
        if getattr(args, option) is not None:
            check_out_file(getattr(args, option), f"--{option}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    size, batch, progress = args.image_size, args.batch_size, show_progress(args)
    meta = {k: v for k, v in vars(args).items() if k not in ("func", "csv", "json", "markdown", "progress")}
    meta.update(device=device, torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(),
                processor=platform.processor() or platform.machine())
    if args.what == "layers":
        rows = bench_layers(args.layers, channels=args.channels, size=size, batch=batch, dtype=args.dtype,
                            channels_last=args.channels_last, device=device, compare=args.compare,
                            repeats=args.repeats or 10, warmup=args.warmup, train=args.train, memory=args.memory,
                            progress=progress)
        title = (f"layers: C={args.channels}, {size}x{size}, batch {batch}, {args.dtype}"
                 f"{', channels_last' if args.channels_last else ''}, {device}")
    else:
        rows = bench_models(args.models, args.attention, size=size, batch=batch,
                            num_classes=args.num_classes, in_chans=args.in_chans, train=args.train,
                            dtype=args.dtype, channels_last=args.channels_last, device=device,
                            compare=args.compare, repeats=args.repeats or 5, warmup=args.warmup,
                            memory=args.memory, progress=progress, placement=args.placement)
        title = (f"models ({'SGD training step' if args.train else 'inference'}): {size}x{size}, "
                 f"batch {batch}, {args.dtype}{', channels_last' if args.channels_last else ''}, {device}")
    print(title)
    print(format_table(rows))
    for path in write_rows(rows, csv_path=args.csv, json_path=args.json, markdown_path=args.markdown, meta=meta):
        print(f"wrote {path}")
    return 0
