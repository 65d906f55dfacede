"""``convattn viz RUN_DIR|CKPT``: attention overlays, class activation maps, spatial-transformer grids, curves."""

from __future__ import annotations

import argparse

from ..maps.cam import CAM_METHODS
from ._options import add_command, add_device, add_num_images, add_out, check_out_dir

ORDER = 60


def _query(text: str) -> tuple[float, float]:
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--query expects Y,X in input pixels (e.g. 14,14), got {text!r}") from None
    return y, x


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "viz", help="draw attention maps, class activation maps and transformer grids of a run",
                    description=run.__doc__, examples=(
                        "convattn viz runs/simple_cnn-cbam-cluttered-digits-20250101-120000",
                        "convattn viz runs/my-run --num-images 4 --no-cam --out figs",
                        "convattn viz runs/my-run --images photos/ cat.png --layers 'layer4*,*:spatial'",
                        "convattn viz runs/my-run --images data/test --cam gradcam++ --target-class cat"))
    p.add_argument("run", metavar="RUN_DIR|CKPT", help="a run directory (best.pt, else last.pt) or a checkpoint")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", nargs="+", metavar="PATH",
                     help="image files and folders (a folder: the images inside it; a folder of class sub-folders: "
                          "their images, with the true label), resized/normalised as the run's data")
    src.add_argument("--dataset", help="take test images from this dataset (default: the run's)")
    add_num_images(p, 16, help="number of dataset images (default: 16)", deprecated=["--count"])
    p.add_argument("--data-dir", help="dataset root")
    add_out(p, None, "output folder (default: figures/ in the run directory, i.e. beside the checkpoint)")
    p.add_argument("--layers", action="append", metavar="GLOB",
                   help="draw only the maps whose key ('layer1.0.attn:spatial') or module path matches; "
                        "repeatable or comma-separated (default: all)")
    p.add_argument("--cam", nargs="?", const="gradcam", default="gradcam", choices=CAM_METHODS, metavar="METHOD",
                   help=f"class activation map method: {', '.join(CAM_METHODS)} (default: gradcam, built in; "
                        "the others need pytorch-grad-cam, pip install 'convattn[cam]')")
    p.add_argument("--no-cam", dest="cam", action="store_const", const=None, help="no class activation map")
    p.add_argument("--target-class", metavar="N|NAME", help="the class the CAM explains (default: the predicted one)")
    p.add_argument("--cam-layer", metavar="NAME", help="CAM target module path (default: found automatically)")
    p.add_argument("--query", type=_query, metavar="Y,X", help="self-attention query in input pixels (default: centre)")
    add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write each image's attention maps and class activation map as PNGs named after it, plus STN grids and curves."""
    from ..engine.checkpoint import resolve_checkpoint
    from ..engine.distributed import resolve_device
    from ..exceptions import ConfigError
    from ..viz import visualize_run

    if args.num_images < 1:
        raise ConfigError(f"--num-images must be >= 1, got {args.num_images}")
    if args.target_class is not None and not args.cam:
        raise ConfigError(f"--target-class {args.target_class} chooses the class a CAM explains; got --no-cam")
    out = args.out if args.out is not None else str(resolve_checkpoint(args.run).parent / "figures")
    check_out_dir(out)
    paths = visualize_run(args.run, images=args.images, dataset=args.dataset, count=args.num_images, out_dir=out,
                          cam=args.cam or False, cam_layer=args.cam_layer, target_class=args.target_class,
                          layers=args.layers, query=args.query, data_dir=args.data_dir,
                          device=resolve_device(args.device))
    for p in paths:
        print(p)
    print(f"wrote {len(paths)} file(s) to {out}")
    return 0
