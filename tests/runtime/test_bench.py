"""bench's FLOP count, checked against the convolutions PyTorch actually runs."""

import pytest
import torch

import irevnet
from irevnet.runtime.bench import conv_flops
from tests.conftest import SMALL_FAMILIES


@pytest.mark.parametrize("family", sorted(SMALL_FAMILIES))
def test_conv_flops_match_the_convolutions_a_forward_runs(family):
    model = irevnet.create_model(family, **SMALL_FAMILIES[family]).eval()
    counted = []

    def count(module, args, output):  # 2 x multiply-adds of a convolution: 2 * out elements * k*k*in
        counted.append(2 * output[0].numel() * module.weight[0].numel())

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.zeros(1, *model.config.in_shape))
    # exact: the same shapes counted two ways (the head, <0.1%, is left out of both)
    assert conv_flops(model.config) == sum(counted)
