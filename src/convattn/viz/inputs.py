"""Which images ``viz`` draws and what it calls them: files, folders, class folders, output names, layer globs.

A folder stands for the image files directly inside it (sorted by name); a folder holding no
image files but class sub-folders (the ``folder:`` dataset layout) stands for the images of each
sub-folder, labelled with that sub-folder's class when its name is one of the run's class names.
"""

from __future__ import annotations

import fnmatch
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..exceptions import ConfigError, DatasetNotFoundError

__all__ = ["ImageInput", "image_inputs", "output_stems", "parse_target_class", "parse_layers", "select_layers"]


@dataclass(frozen=True)
class ImageInput:
    """One image file to draw and its true class index (``None``: unknown)."""

    path: Path
    label: int | None = None


def _files_in(folder: Path) -> list[Path]:
    from ..engine.inference import image_files

    try:
        return image_files([folder])
    except DatasetNotFoundError:
        return []


def _class_folder(folder: Path, class_names: Sequence[str] | None) -> list[ImageInput]:
    subs = sorted(d for d in folder.iterdir() if d.is_dir() and _files_in(d))
    if not subs:
        raise DatasetNotFoundError(f"viz: folder {str(folder)!r} holds no image files and no sub-folders of images "
                                   "(expected FOLDER/<image> or FOLDER/<class>/<image>)")
    index = {str(name): i for i, name in enumerate(class_names or ())}
    unknown = [d.name for d in subs if d.name not in index]
    if class_names and len(unknown) == len(subs):
        raise ConfigError(f"viz: the sub-folders of {str(folder)!r} ({', '.join(unknown[:5])}) are none of the "
                          f"run's classes ({', '.join(map(str, class_names[:10]))})")
    if class_names and unknown:
        warnings.warn(f"viz: sub-folders of {str(folder)!r} that name no class of the run, drawn without a true "
                      f"label: {', '.join(unknown)}", stacklevel=3)
    return [ImageInput(f, index.get(d.name)) for d in subs for f in _files_in(d)]


def image_inputs(paths: Iterable[str | os.PathLike], class_names: Sequence[str] | None = None) -> list[ImageInput]:
    """The image files ``paths`` stand for, in order, each with its true label where a class folder gives it.

    Raises:
        DatasetNotFoundError: a path does not exist, or a folder holds no images.
        ConfigError: no path given, or a folder's sub-folders match none of ``class_names``.
    """
    out: list[ImageInput] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            files = _files_in(p)
            out.extend([ImageInput(f) for f in files] if files else _class_folder(p, class_names))
        elif p.is_file():
            out.append(ImageInput(p))
        else:
            raise DatasetNotFoundError(f"viz: image file {str(p)!r} does not exist")
    if not out:
        raise ConfigError("viz: --images was given no files")
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "image"


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A distinct file-name stem per input: its own stem, prefixed by its folder's name where stems repeat,
    then numbered (``-2``, ``-3``) where that still repeats."""
    stems = [_safe(p.stem) for p in paths]
    counts = {s: stems.count(s) for s in stems}
    named = [f"{_safe(p.parent.name)}_{s}" if counts[s] > 1 and p.parent.name else s for p, s in zip(paths, stems)]
    seen: dict[str, int] = {}
    out = []
    for s in named:
        seen[s.lower()] = seen.get(s.lower(), 0) + 1
        out.append(s if seen[s.lower()] == 1 else f"{s}-{seen[s.lower()]}")
    return out


def parse_target_class(text: str | int, class_names: Sequence[str] | None, num_classes: int) -> int:
    """``--target-class``: a class name of the run, or an index below ``num_classes``."""
    names = [str(n) for n in class_names or ()]
    if str(text) in names:
        return names.index(str(text))
    try:
        index = int(text)
    except ValueError:
        index = -1
    if 0 <= index < num_classes:
        return index
    listed = f"a class name ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}) or " if names else ""
    raise ConfigError(f"--target-class expects {listed}an index 0..{num_classes - 1}, got {str(text)!r}")


def parse_layers(values: Iterable[str] | str | None) -> list[str] | None:
    """``--layers`` given once or more, each a glob or a comma-separated list of globs -> the globs."""
    if values is None:
        return None
    values = [values] if isinstance(values, str) else list(values)
    globs = [g.strip() for v in values for g in v.split(",") if g.strip()]
    if not globs:
        raise ConfigError(f"--layers expects glob patterns (e.g. 'layer4*' or '*:spatial'), got {values!r}")
    return globs


def select_layers(keys: Sequence[str], globs: Sequence[str] | None) -> list[str]:
    """The keys (``"module.path:map"``, or a module path) that a glob matches, as a whole or by module path."""
    if globs is None:
        return list(keys)
    return [k for k in keys if any(fnmatch.fnmatchcase(k, g) or fnmatch.fnmatchcase(k.split(":")[0], g)
                                   for g in globs)]
