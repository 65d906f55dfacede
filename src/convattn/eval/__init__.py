"""Measuring what attention does: does a map point at the object?

:func:`localization` runs a model over a loader of ``(image, label, box)`` batches
(``dataset.with_boxes()`` of ``cluttered-digits``) and scores every recorded spatial
map, self-attention's map averaged over queries, each spatial transformer's sampling
window and Grad-CAM against the object's box: pointing game, energy in box and, for
windows, IoU. :func:`localize_run` does it for a trained run and stores the numbers
in its ``results.json``. The metric functions work on any maps and boxes.

Modules: :mod:`~convattn.eval.geometry` (boxes, frames, sampling windows),
:mod:`~convattn.eval.metrics` (the scores), :mod:`~convattn.eval.localize` (the loop and
``results.json``); the maps come from :mod:`convattn.maps`.

Example:
    >>> import torch
    >>> from convattn.eval import pointing_game, energy_in_box
    >>> maps = torch.zeros(1, 10, 10); maps[0, 2, 3] = 1.0
    >>> box = torch.tensor([[2.0, 1.0, 5.0, 4.0]])  # x0, y0, x1, y1 in pixel edges
    >>> pointing_game(maps, box, tolerance=0.0).tolist(), energy_in_box(maps, box).tolist()
    ([1.0], [1.0])
"""

from .geometry import box_mask, box_share, to_image_frame, window_corners
from .localize import format_localization, localization, localize_run
from .metrics import DEFAULT_TOLERANCE, energy_in_box, pointing_game, window_scores

__all__ = [
    "DEFAULT_TOLERANCE",
    "box_mask",
    "box_share",
    "energy_in_box",
    "format_localization",
    "localization",
    "localize_run",
    "pointing_game",
    "to_image_frame",
    "window_corners",
    "window_scores",
]
