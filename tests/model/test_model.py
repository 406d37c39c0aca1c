import pytest
import torch

import irevnet
from tests.conftest import SMALL_FAMILIES, small_model


@pytest.mark.parametrize("family", sorted(SMALL_FAMILIES))
def test_inverse_of_forward_is_the_image(family):
    model = small_model(family)
    x = torch.randn(4, *model.config.in_shape)
    with torch.no_grad():
        logits, z = model(x)
        x_hat = model.inverse(z)
    assert logits.shape == (4, model.config.num_classes)
    assert z.shape == (4, *model.config.z_shape)
    # fp32 additive couplings: each block adds and later subtracts the same F(x2), leaving
    # ~1 ulp (6e-8 relative) per block; a few dozen blocks stay well below 1e-6.
    rel = ((x_hat - x).norm() / x.norm()).item()
    assert rel <= 1e-6, rel


@pytest.mark.parametrize("family", ["irevnet-tiny-bijective", "irevnet-301"])
def test_bijective_forward_of_inverse_is_z(family):
    model = small_model(family)
    assert not model.config.injective
    # a valid z: the image of some input
    with torch.no_grad():
        z = model(torch.randn(2, *model.config.in_shape))[1]
        z_again = model(model.inverse(z))[1]
    assert ((z_again - z).norm() / z.norm()).item() <= 1e-6


def test_injective_z_has_more_entries_than_the_image():
    cfg = irevnet.get_config("irevnet-cifar")
    c, h, w = cfg.z_shape
    assert c * h * w == 32768 > 3 * 32 * 32


def test_inverse_in_train_mode_is_refused():
    model = small_model("irevnet-tiny").train()
    z = torch.randn(1, *model.config.z_shape)
    with pytest.raises(RuntimeError, match="eval mode"):
        model.inverse(z)


def test_full_size_301_has_the_papers_parameter_count():
    model = irevnet.create_model("irevnet-301")
    assert round(model.num_parameters() / 1e6, 1) == 125.1
