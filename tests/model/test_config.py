import pytest

from irevnet.errors import ConfigError
from irevnet.model.config import IRevNetConfig, get_config, list_presets


def test_presets_match_the_paper():
    cifar, net301 = get_config("irevnet-cifar"), get_config("irevnet-301")
    assert (cifar.blocks, cifar.strides, cifar.channels, cifar.init_ds) == ((18, 18, 18), (1, 2, 2), (16, 64, 256), 0)
    assert cifar.injective and cifar.z_shape == (512, 8, 8)
    assert (net301.blocks, net301.channels, net301.init_ds) == ((6, 16, 72, 6), (24, 96, 384, 1536), 2)
    assert not net301.injective and net301.z_shape == (3072, 7, 7) and net301.depth == 301
    # the paper's two configurations and the two tiny ones the tests and the demo train, each buildable
    assert list_presets() == ["irevnet-301", "irevnet-cifar", "irevnet-tiny", "irevnet-tiny-bijective"]
    assert [get_config(name).injective for name in list_presets()] == [False, True, True, False]


def test_config_round_trips_through_a_plain_dict():
    for name in list_presets():
        cfg = get_config(name)
        assert IRevNetConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"in_shape": (3, 30, 30)}, "not divisible by the total downsampling 4"),
        ({"channels": (16, 48, 256)}, "stride-2 block maps 32 input channels to 64"),
        ({"channels": (1, 4, 16), "mult": 1}, "cannot hold a 3-channel input"),
        ({"strides": (3, 2, 2)}, "strides must be 1 or 2"),
        ({"init_ds": 4}, "init_ds must be 0 or 2"),
        ({"blocks": (18, 18)}, "same length"),
        ({"channels": (2, 8, 32)}, "leave F no inner channels with the bottleneck mult 4"),
        ({"in_shape": (3, 10**6, 10**6)}, "exceeds 64 channels or 8192 pixels a side"),
    ],
)
def test_invalid_architectures_are_refused_with_the_reason(overrides, message):
    with pytest.raises(ConfigError, match=message):
        get_config("irevnet-cifar", **overrides)


def test_unknown_preset_and_fields_name_the_choices():
    with pytest.raises(ConfigError, match="irevnet-301"):
        get_config("resnet50")
    with pytest.raises(ConfigError, match="unknown config field"):
        IRevNetConfig.from_dict({**get_config("irevnet-tiny").to_dict(), "width": 3})


def test_structural_zeros_of_the_cifar_model():
    # 3 image channels are padded to 32 and split 16/16: x2 of block 0 is the 16 padded zeros,
    # which become block 1's x1; no later block carries structural zeros.
    zeros = get_config("irevnet-cifar").structural_zeros()
    assert zeros[0] == (True,) * 16
    assert not any(any(z) for z in zeros[1:])
    # a bijective model has none
    assert not any(any(z) for z in get_config("irevnet-301").structural_zeros())
