"""``convattn viz RUN_DIR|CKPT``: attention overlays, Grad-CAM, spatial-transformer grids, training curves."""

from __future__ import annotations

import argparse

ORDER = 60


def _query(text: str) -> tuple[float, float]:
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--query expects Y,X in input pixels (e.g. 14,14), got {text!r}") from None
    return y, x


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("viz", help="draw attention maps, Grad-CAM and transformer grids of a run",
                       description=run.__doc__)
    p.add_argument("run", metavar="RUN_DIR|CKPT", help="a run directory (best.pt, else last.pt) or a checkpoint")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", nargs="+", metavar="PATH", help="image files (resized/normalised as the run's data)")
    src.add_argument("--dataset", help="take test images from this dataset (default: the run's)")
    p.add_argument("--count", type=int, default=16, help="number of dataset images (default: 16)")
    p.add_argument("--data-dir", help="dataset root")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--cam", action=argparse.BooleanOptionalAction, default=True, help="add Grad-CAM (default: on)")
    p.add_argument("--cam-layer", metavar="NAME", help="Grad-CAM target module path (default: found automatically)")
    p.add_argument("--query", type=_query, metavar="Y,X", help="self-attention query in input pixels (default: centre)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write attention heat maps of every convattn layer, Grad-CAM, spatial-transformer grids and curves as PNG."""
    from ..viz import visualize_run

    paths = visualize_run(args.run, images=args.images, dataset=args.dataset, count=args.count, out_dir=args.out,
                          cam=args.cam, cam_layer=args.cam_layer, query=args.query, data_dir=args.data_dir,
                          device=args.device)
    for p in paths:
        print(p)
    print(f"wrote {len(paths)} file(s) to {args.out}")
    return 0
