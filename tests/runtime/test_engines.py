"""TensorRT engine metadata without TensorRT: the optimization profile and the rules for whether an
engine built elsewhere may run here."""

from __future__ import annotations

import re

import pytest

from irevnet.errors import BundleError
from irevnet.runtime.engines import EngineMismatch, check_compatible, make_profile
from irevnet.runtime.manifest import TensorRTSection

META = {
    "version": "10.13.0.35", "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]},
    "hardware_compatibility": "none", "version_compatible": False, "profile": {"min": 1, "opt": 8, "max": 8},
    "engines": {},
}


def test_profile_defaults_and_limits():
    p = make_profile(32)
    assert (p.min, p.opt, p.max) == (1, 32, 32) and p.shapes([3, 8, 8])[1] == (32, 3, 8, 8)
    assert make_profile(32, max_batch=8, opt_batch=4).shapes([1]) == ((1, 1), (4, 1), (8, 1))
    with pytest.raises(BundleError, match="outside 1..32"):
        make_profile(32, max_batch=64)
    with pytest.raises(BundleError, match="--opt-batch 9 must lie in 1..8"):
        make_profile(32, max_batch=8, opt_batch=9)


@pytest.mark.parametrize(
    "meta, version, gpu, cc, outcome",
    [
        ({}, "10.13.0.35", "NVIDIA H100 80GB HBM3", (9, 0), None),
        ({}, "10.13.1.4", "NVIDIA H100 80GB HBM3", (9, 0), "built with TensorRT 10.13.0.35, this is TensorRT 10.13.1.4"),
        ({}, "10.13.0.35", "NVIDIA A100-SXM4-80GB", (8, 0), "built for NVIDIA H100 80GB HBM3 (sm_90), this GPU is NVIDIA A100"),
        ({}, "10.13.0.35", "NVIDIA H200", (9, 0), "note"),
        ({"version_compatible": True}, "10.14.0.1", "NVIDIA H100 80GB HBM3", (9, 0), None),
        ({"version_compatible": True}, "11.1.0.106", "NVIDIA H100 80GB HBM3", (9, 0), "version-compatible within 10.x"),
        ({"hardware_compatibility": "ampere_plus"}, "10.13.0.35", "NVIDIA A100-SXM4-80GB", (8, 0), None),
        ({"hardware_compatibility": "ampere_plus"}, "10.13.0.35", "Tesla T4", (7, 5), "Ampere-or-newer"),
        ({"hardware_compatibility": "same_compute_capability"}, "10.13.0.35", "NVIDIA H200", (9, 0), None),
    ],
)
def test_engine_compatibility_rules(meta, version, gpu, cc, outcome):
    meta = TensorRTSection.from_dict({**META, **meta})
    if outcome is None:
        assert check_compatible(meta, version, gpu, cc) == []
    elif outcome == "note":
        (note,) = check_compatible(meta, version, gpu, cc)
        assert "same compute capability" in note
    else:
        with pytest.raises(EngineMismatch, match=re.escape(outcome)) as err:
            check_compatible(meta, version, gpu, cc)
        assert "irevnet build" in str(err.value), "the refusal says how to rebuild"
