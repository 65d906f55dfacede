"""The torchvision / timm networks registered by name: each builds (shapes only) and takes attention."""

from __future__ import annotations

import pytest
import torch

from convattn import get_attn_info
from convattn.exceptions import ConfigError
from convattn.models import attn_positions, create_model, list_models
from convattn.models.zoo import TIMM_MODELS, TORCHVISION_MODELS

NAMES = list(TORCHVISION_MODELS) + [f"timm_{n}" for n in TIMM_MODELS]


def test_all_registered():
    assert set(NAMES) <= set(list_models())


# one network per family not already built in test_insert_families.py's named variants
@pytest.mark.parametrize("name", ["mobilenet_v3_large", "shufflenet_v2_x1_0", "timm_ecaresnet50d", "timm_regnety_002",
                                  "timm_mobilenetv3_small_100"])
def test_builds_with_block_attention(name):
    try:  # shapes are enough here; RegNet computes its widths with tensors and needs real ones
        with torch.device("meta"):
            net = create_model(name, num_classes=7, attention="se")
    except NotImplementedError:
        net = create_model(name, num_classes=7, attention="se")
    assert attn_positions(net, "block")  # the family was recognised
    se = get_attn_info("se").cls
    assert sum(type(m) is se for m in net.modules()) == len(attn_positions(net, "block"))


def test_small_ones_run_with_replace_and_in_chans():
    net = create_model("mobilenet_v3_small", num_classes=3, in_chans=1, attention="cbam", attn_where="replace")
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    net = create_model("timm_regnety_002", num_classes=3, in_chans=1, attention="eca", attn_where="replace")
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    with pytest.raises(ConfigError, match="found no attention modules to replace"):
        create_model("mobilenet_v2", num_classes=3, attention="cbam", attn_where="replace")
