"""``convattn viz RUN_DIR|CKPT``: attention overlays, Grad-CAM, spatial-transformer grids, training curves."""

from __future__ import annotations

import argparse

from ._options import add_command, add_device, add_num_images, add_out, check_out_dir

ORDER = 60


def _query(text: str) -> tuple[float, float]:
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--query expects Y,X in input pixels (e.g. 14,14), got {text!r}") from None
    return y, x


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "viz", help="draw attention maps, Grad-CAM and transformer grids of a run",
                    description=run.__doc__, examples=(
                        "convattn viz runs/simple_cnn-cbam-cluttered-digits-20250101-120000",
                        "convattn viz runs/my-run --num-images 4 --no-cam --out figs",
                        "convattn viz runs/my-run/best.pt --images cat.png dog.jpg --query 14,14"))
    p.add_argument("run", metavar="RUN_DIR|CKPT", help="a run directory (best.pt, else last.pt) or a checkpoint")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", nargs="+", metavar="PATH", help="image files (resized/normalised as the run's data)")
    src.add_argument("--dataset", help="take test images from this dataset (default: the run's)")
    add_num_images(p, 16, help="number of dataset images (default: 16)", deprecated=["--count"])
    p.add_argument("--data-dir", help="dataset root")
    add_out(p, None, "output folder (default: figures/ in the run directory, i.e. beside the checkpoint)")
    p.add_argument("--cam", action=argparse.BooleanOptionalAction, default=True, help="add Grad-CAM (default: on)")
    p.add_argument("--cam-layer", metavar="NAME", help="Grad-CAM target module path (default: found automatically)")
    p.add_argument("--query", type=_query, metavar="Y,X", help="self-attention query in input pixels (default: centre)")
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write attention heat maps of every convattn layer, Grad-CAM, spatial-transformer grids and curves as PNG."""
    from ..engine.checkpoint import resolve_checkpoint
    from ..engine.distributed import resolve_device
    from ..exceptions import ConfigError
    from ..viz import visualize_run

    if args.num_images < 1:
        raise ConfigError(f"--num-images must be >= 1, got {args.num_images}")
    out = args.out if args.out is not None else str(resolve_checkpoint(args.run).parent / "figures")
    check_out_dir(out)
    paths = visualize_run(args.run, images=args.images, dataset=args.dataset, count=args.num_images, out_dir=out,
                          cam=args.cam, cam_layer=args.cam_layer, query=args.query, data_dir=args.data_dir,
                          device=resolve_device(args.device))
    for p in paths:
        print(p)
    print(f"wrote {len(paths)} file(s) to {out}")
    return 0
