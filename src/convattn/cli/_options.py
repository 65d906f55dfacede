"""The options every sub-command spells the same way: one name for one thing.

``--device`` (default ``auto``: CUDA when available, else CPU), ``--out`` (always
defaulted), ``--batch-size`` (images per batch), ``--num-images`` (a count of
images), ``--image-size`` (a spatial size in pixels), ``--progress/--no-progress``
(bars only on a terminal unless asked), deprecated spellings that keep working for
one release, and the ``examples:`` block at the end of ``--help``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..engine.config import DEVICES
from ..exceptions import ConfigError

__all__ = [
    "DEVICES", "add_command", "add_device", "add_out", "add_batch_size", "add_num_images", "add_image_size",
    "add_progress", "show_progress", "add_deprecated", "examples_epilog", "check_out_dir", "check_out_file",
]


def examples_epilog(*lines: str) -> str:
    """An ``examples:`` epilog, one command per line (shown as written by RawDescriptionHelpFormatter)."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_command(sub: argparse._SubParsersAction, name: str, *, help: str, description: str | None,
                examples: Sequence[str]) -> argparse.ArgumentParser:
    """A sub-command parser whose ``--help`` ends with an ``examples:`` block."""
    return sub.add_parser(name, help=help, description=description, epilog=examples_epilog(*examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


class _DeprecatedAlias(argparse.Action):
    """An old spelling: stores into the new option's ``dest`` and says so on stderr, one line."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated(p: argparse.ArgumentParser, old: str, new: argparse.Action) -> argparse.Action:
    """Accept ``old`` as a spelling of the option ``new`` for one more release (hidden from --help)."""
    return p.add_argument(old, dest=new.dest, type=new.type, choices=new.choices, metavar=new.metavar,
                          default=argparse.SUPPRESS, action=_DeprecatedAlias, new=new.option_strings[0],
                          help=argparse.SUPPRESS)


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _aliases(p: argparse.ArgumentParser, action: argparse.Action, deprecated: Sequence[str]) -> argparse.Action:
    for old in deprecated:
        add_deprecated(p, old, action)
    return action


def add_device(p: argparse.ArgumentParser, *, default: str = "auto") -> argparse.Action:
    """``--device {auto,cpu,cuda}``: auto = CUDA when available, else CPU."""
    return p.add_argument("--device", default=default, choices=DEVICES,
                          help=f"where to run; auto = cuda when available, else cpu (default: {default})")


def add_out(p: argparse.ArgumentParser, default: str | None, help: str, *, metavar: str = "DIR") -> argparse.Action:
    """``--out``; ``help`` says what goes there and ends with where it goes by default."""
    return p.add_argument("--out", default=default, metavar=metavar, help=help)


def add_batch_size(p: argparse.ArgumentParser, default: int | None = None, *, help: str | None = None,
                   deprecated: Sequence[str] = ()) -> argparse.Action:
    """``--batch-size N``: images per batch."""
    text = help or f"images per batch (default: {default})"
    return _aliases(p, p.add_argument("--batch-size", type=_count, default=default, metavar="N", help=text), deprecated)


def add_num_images(p: argparse.ArgumentParser, default: int | None = None, *, help: str | None = None,
                   deprecated: Sequence[str] = ()) -> argparse.Action:
    """``--num-images N``: how many images to take."""
    text = help or f"number of images (default: {default})"
    return _aliases(p, p.add_argument("--num-images", type=_count, default=default, metavar="N", help=text), deprecated)


def add_image_size(p: argparse.ArgumentParser, default: int | None = None, *, help: str | None = None,
                   deprecated: Sequence[str] = ()) -> argparse.Action:
    """``--image-size PX``: the input's height and width in pixels."""
    text = help or f"input height and width in pixels (default: {default})"
    return _aliases(p, p.add_argument("--image-size", type=_count, default=default, metavar="PX", help=text), deprecated)


def add_progress(p: argparse.ArgumentParser) -> argparse.Action:
    """``--progress/--no-progress``; unset = bars only when stderr is a terminal (and not under CI)."""
    return p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                          help="progress bars on stderr (default: only when stderr is a terminal and CI is unset)")


def show_progress(args: argparse.Namespace, stream=None) -> bool:
    """Whether to draw bars: the explicit switch, else whether ``stream`` (stderr) is a terminal outside CI."""
    if getattr(args, "progress", None) is not None:
        return bool(args.progress)
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("CI")


def _writable_from(here: Path, path: Path, option: str) -> None:
    """Refuse ``path`` when a file stands at folder ``here`` or above it, or the nearest existing folder is read-only."""
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise ConfigError(f"{option} {path}: {here} is a file, expected a directory")
    if not os.access(here, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and os.statvfs(here).f_flag & os.ST_RDONLY
        raise ConfigError(f"{option} {path}: cannot write in {here} "
                          f"({'read-only file system' if read_only else 'permission denied'})")


def check_out_dir(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse an output folder before any work is done: a file in its place or above it, or no write access."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, expected a directory")
    _writable_from(path, path, option)


def check_out_file(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse an output file before any work is done: a directory in its place, a file above it, no write access."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory, expected a file name")
    _writable_from(path.parent, path, option)
