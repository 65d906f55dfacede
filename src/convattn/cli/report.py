"""``convattn report RUN_DIR... --out report.html``: one self-contained HTML page comparing runs, and their
table grouped by variant with mean ± std over seeds."""

from __future__ import annotations

import argparse

from ._options import add_command, add_num_images, add_out, check_out_file

ORDER = 70


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "report", help="write an HTML page comparing runs", description=run.__doc__, examples=(
        "convattn report runs/demo/* --out demo.html",
        "convattn report runs/plain runs/cbam --num-images 4 --no-cam --title 'plain vs CBAM'"))
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or checkpoints")
    add_out(p, "report.html", "HTML file to write (default: report.html in the current folder)", metavar="FILE")
    add_num_images(p, 8, help="gallery images per run (default: 8)", deprecated=["--count"])
    p.add_argument("--dataset", help="gallery dataset (default: each run's own)")
    p.add_argument("--data-dir", help="dataset root")
    p.add_argument("--cam", action=argparse.BooleanOptionalAction, default=True, help="Grad-CAM column (default: on)")
    p.add_argument("--title", default="convattn report", help="page title")
    p.add_argument("--baseline", help="variant the printed table of several runs compares with (default: the first run's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Table of accuracy / parameters / FLOPs / time, accuracy-vs-cost plot, curves and attention galleries.

    Given several runs, also prints them grouped by variant (model, attention, placement, weights, dataset from
    each run's results.json or config.yaml): mean ± std over seeds against the first variant, as ``convattn compare``.
    """
    from ..viz import write_report

    check_out_file(args.out)
    path = write_report(args.runs, args.out, count=args.num_images, dataset=args.dataset, data_dir=args.data_dir,
                        cam=args.cam, title=args.title)
    if len(args.runs) > 1:
        from ..experiments import comparison_table, records_from_runs, table_markdown

        print(table_markdown(comparison_table(records_from_runs(args.runs), baseline=args.baseline)))
    print(f"wrote {path}")
    return 0
