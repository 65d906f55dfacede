"""convattn.maps.cam: the Grad-CAM layer found automatically, dict outputs."""

import pytest
import torch
from torch import nn

import convattn
from convattn.maps import find_cam_layer, grad_cam
from convattn.models import create_model


def test_cam_layer_found_automatically():
    resnet = create_model("resnet18", num_classes=5, attention="se")
    assert find_cam_layer(resnet, torch.randn(1, 3, 64, 64)) == "layer4"
    cnn = create_model("simple_cnn", num_classes=5, in_chans=1, attention="cbam")
    name = find_cam_layer(cnn, torch.randn(1, 1, 28, 28))
    assert "attn" not in name  # never a convolution inside an attention gate
    assert isinstance(dict(cnn.named_modules())[name], nn.Module)


def test_grad_cam_handles_dict_outputs():
    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return {"logits": self.head(self.features(x).mean((2, 3))), "maps": x}

    cams, layer = grad_cam(DictNet(), torch.randn(2, 1, 10, 12))
    assert layer == "features"
    assert cams.shape == (2, 10, 12) and cams.min() >= 0 and cams.max() <= 1
    with pytest.raises(convattn.ConfigError, match="no module"):
        grad_cam(DictNet(), torch.randn(1, 1, 8, 8), target_layer="nope")
