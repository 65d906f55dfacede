"""Reading image files as what they are: 8-bit, 16-bit and float images scaled to 0–1 by their type's range.

Every place convattn decodes an image file (``predict``, ``viz --images``, ``folder:`` datasets)
goes through :func:`open_image` and :func:`unit_image`:

* 8-bit images (``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ``CMYK``, ...) become ``L`` / ``RGB``,
  read later as value / 255;
* 16-bit images (PIL modes ``I;16*`` and ``I``, e.g. 16-bit PNG and TIFF) become a float image
  (mode ``F``) of value / 65535;
* float images (mode ``F``, e.g. 32-bit float TIFF) are taken as 0–1 values as they are, clamped.

PIL keeps 16-bit and float images single-channel; they are repeated into RGB where three
channels are asked for. A file PIL cannot read, a truncated one and one over PIL's
decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) raise one :class:`ConfigError` naming it.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from ..exceptions import ConfigError

__all__ = ["open_image", "unit_image", "image_tensor", "read_image"]

_HIGH_DEPTH = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}
_OPEN_LOCK = threading.Lock()  # the warnings filter below is process-wide: one opener at a time


def open_image(path: str | os.PathLike):
    """Open and decode ``path`` with PIL (close it, or use it in a ``with``); a bad file raises one
    :class:`ConfigError` naming it.

    Over ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (PIL only warns below twice that) is an error too.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(p)
        try:
            img.load()
        except BaseException:
            img.close()
            raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ConfigError(f"{str(p)!r} is too large to read safely ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS "
                          "if you trust it") from None
    except UnidentifiedImageError:
        raise ConfigError(f"{str(p)!r} is not a readable image (PIL knows no format that matches it)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, OSError) and exc.filename is not None:
            raise  # the file itself cannot be opened (permission, vanished): the OS error says so
        raise ConfigError(f"{str(p)!r} is not a readable image ({exc})") from None
    return img


def unit_image(img, channels: int):
    """``img`` as ``L`` / ``RGB`` (8-bit) or as a single-channel ``F`` image of 0–1 values (16-bit, float).

    Always a new image: ``img`` can be closed.
    """
    from PIL import Image

    scale = _HIGH_DEPTH.get(img.mode)
    if scale is None:
        return img.convert("L" if channels == 1 else "RGB")
    values = np.asarray(img).astype(np.float32) / scale
    return Image.fromarray(np.clip(np.nan_to_num(values), 0.0, 1.0))


def image_tensor(img, channels: int) -> torch.Tensor:
    """A :func:`unit_image` as a float ``(C, H, W)`` tensor in 0–1; ``C`` is 1 for ``channels == 1``, else 3."""
    arr = np.array(img, dtype=np.float32)
    if img.mode != "F":
        arr = arr / 255.0
    t = torch.from_numpy(arr)
    t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
    return t.expand(3, -1, -1).contiguous() if channels != 1 and t.shape[0] == 1 else t


def read_image(path: str | os.PathLike, channels: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Read ``path`` as a float ``(1 or 3, H, W)`` tensor in 0–1, resized (PIL bilinear) to ``size = (H, W)``."""
    from PIL import Image

    with open_image(path) as opened:
        img = unit_image(opened, channels)
    if size is not None:
        img = img.resize((int(size[1]), int(size[0])), Image.BILINEAR)
    return image_tensor(img, channels)
