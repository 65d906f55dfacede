"""``convattn export RUN --format onnx|pt2``: the run's model as an ONNX file or a ``torch.export`` program,
checked against PyTorch, with its preprocessing and class names."""

from __future__ import annotations

import argparse

from ._options import add_command, add_out

ORDER = 35


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export", help="export a trained run as ONNX or a torch.export program (.pt2)",
                    description=run.__doc__, examples=(
                        "convattn export runs/simple_cnn-cbam-cluttered-digits-20250101-120000",
                        "convattn export runs/my-run --format pt2 --out deploy/model.pt2",
                        "convattn export runs/my-halonet --fixed-size --opset 18"))
    p.add_argument("path", metavar="RUN_DIR|CKPT", help="run directory (uses best.pt, else last.pt) or a .pt checkpoint")
    p.add_argument("--format", default="onnx", choices=["onnx", "pt2"],
                   help="onnx (torch's torch.export-based exporter) or pt2 (a torch.export program) (default: onnx)")
    add_out(p, None, "file to write; the metadata goes beside it as FILE.json (default: model.onnx / model.pt2 "
                     "beside the checkpoint)", metavar="FILE")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset version (default: the exporter's)")
    p.add_argument("--fixed-size", action="store_true",
                   help="export at the run's image size with a dynamic batch only (models that fix their input size "
                        "when traced: HaloNet)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running the export (onnxruntime / the reloaded program) against the PyTorch model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export a trained run's model for deployment.

    The model is traced once with torch.export at a dynamic batch, height and width, written
    as ONNX or as a .pt2 program, then run from the written bytes (onnxruntime for ONNX) at two
    batch sizes and image sizes and compared with the PyTorch model; the largest absolute
    difference of the logits is printed, and nothing is written when it is over 1e-4 of their
    scale. The input is "image" (N, C, H, W), normalised as the run's data was; the output
    "logits". Preprocessing (channels, image size, mean, std), class names, the convattn version
    and the run's config go into the ONNX file's metadata_props (the .pt2 archive's
    convattn.json) and a JSON file beside it.
    """
    from ..engine.export import export

    r = export(args.path, args.format, out=args.out, opset=args.opset, fixed_size=args.fixed_size, check=args.check)
    print(f"wrote {r['path']} ({r['format']}; dynamic: {', '.join(r['dynamic_axes'])})")
    if r["max_abs_diff"] is not None:
        checker = "onnxruntime" if r["format"] == "onnx" else "the reloaded program"
        inputs = " and ".join("x".join(map(str, s)) for s in r["checked"])
        print(f"checked with {checker} at inputs {inputs}: max abs difference {r['max_abs_diff']:.3g} "
              "from the PyTorch model's logits")
    print(f"preprocessing and class names: {r['metadata']}")
    return 0
