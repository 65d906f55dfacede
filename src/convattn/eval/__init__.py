"""Measuring what attention does: does a map point at the object?

:func:`localization` runs a model over a loader of ``(image, label, box)`` batches
(``dataset.with_boxes()`` of ``cluttered-digits``) and scores every recorded spatial
map, self-attention's map averaged over queries, each spatial transformer's sampling
window and Grad-CAM against the object's box: pointing game, energy in box and, for
windows, IoU. :func:`localize_run` does it for a trained run and stores the numbers
in its ``results.json``. The metric functions work on any maps and boxes.

Example:
    >>> import torch
    >>> from convattn.eval import pointing_game, energy_in_box
    >>> maps = torch.zeros(1, 10, 10); maps[0, 2, 3] = 1.0
    >>> box = torch.tensor([[2.0, 1.0, 5.0, 4.0]])  # x0, y0, x1, y1 in pixel edges
    >>> pointing_game(maps, box, tolerance=0.0).tolist(), energy_in_box(maps, box).tolist()
    ([1.0], [1.0])
"""

from ._localization import *  # noqa: F403  (the names in its __all__)
from ._localization import __all__  # noqa: F401
