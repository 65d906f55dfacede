"""convattn.maps.kinds: reading recorded tensors as spatial / channel / query / matrix / theta maps."""

import numpy as np
import torch

from convattn.maps import interpret_maps, query_map


def test_query_map_picks_the_query_row():
    h, w = 3, 4
    attn = torch.zeros(h * w, h * w)
    attn[1 * w + 2, 2 * w + 0] = 1.0  # query (1, 2) attends to key (2, 0)
    m = query_map(attn, (h, w), (1, 2))
    assert m.shape == (3, 4) and np.unravel_index(m.argmax(), m.shape) == (2, 0)
    # pooled keys (non-local subsampling): 12 queries, 6 keys -> a (h/2-ish) grid with the aspect kept
    pooled = torch.rand(h * w, 6)
    assert query_map(pooled, (h, w), (0, 0)).shape in {(2, 3), (3, 2)}


def test_interpret_maps_kinds():
    B, C, h, w = 2, 6, 3, 5
    maps = {
        "a": torch.rand(B, C),
        "b:spatial": torch.rand(B, 1, h, w),
        "c": torch.rand(B, h * w, h * w),
        "d": torch.rand(B, C, C),
        "e:theta": torch.rand(B, 2, 3),
        "f": torch.rand(B, 4, h * w, h * w),
    }
    shapes = {k: (B, C, h, w) for k in "abcdef"}
    kinds = {m.key: m.kind for m in interpret_maps(maps, shapes, image_hw=(12, 20))}
    assert kinds == {"a": "channel", "b:spatial": "spatial", "c": "query", "d": "matrix", "e:theta": "theta",
                     "f": "query"}
    q = [m for m in interpret_maps(maps, shapes, image_hw=(12, 20), query=(0, 19)) if m.key == "c"][0]
    assert q.query == (0, 4) and q.data.shape == (B, h, w)  # input pixel (0, 19) -> grid cell (0, 4)
