"""PooledBatchNorm2d: plain BatchNorm2d, except a training batch of one value per channel or none."""

import pytest
import torch

from convattn.layers._batchnorm import PooledBatchNorm2d


def _bn():
    bn = PooledBatchNorm2d(4).train()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.0, 4.0]))
        bn.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    return bn


@pytest.mark.parametrize("shape", [(0, 4, 1, 1), (0, 4, 5, 3), (1, 4, 1, 1)])
def test_no_batch_statistics_use_the_running_ones_and_leave_them(shape):
    bn = _bn()
    buffers = {k: v.clone() for k, v in bn.state_dict().items()}
    x = torch.randn(shape, requires_grad=True)
    out = bn(x)
    assert out.shape == x.shape
    expected = (x - bn.running_mean.view(1, 4, 1, 1)) / (bn.running_var.view(1, 4, 1, 1) + bn.eps).sqrt()
    torch.testing.assert_close(out, expected * bn.weight.view(1, 4, 1, 1) + bn.bias.view(1, 4, 1, 1))
    out.sum().backward()
    assert x.grad.shape == x.shape and bn.weight.grad is not None
    for k, v in bn.state_dict().items():  # num_batches_tracked included
        assert torch.equal(v, buffers[k]), k


def test_a_real_batch_is_plain_batch_norm():
    bn, ref = _bn(), _bn()
    ref.__class__ = torch.nn.BatchNorm2d
    x = torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    assert int(bn.num_batches_tracked) == 1
