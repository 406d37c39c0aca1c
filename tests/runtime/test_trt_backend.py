"""The TensorRT backend's plumbing (buffers, shapes, engine checks), through the TensorRT test double."""

from __future__ import annotations

import shutil

import numpy as np

from irevnet.contract import FORWARD, IMAGE, INVERSE, REFERENCE, Precision, Z
from irevnet.runtime import Bundle, open_backend


def test_backend_buffers_profile_and_verify(fake_trt, bundles, tmp_path):
    from irevnet.runtime.trt_build import BuildOptions, build_engines
    from irevnet.runtime.verify import VerifyOptions, verify

    fake_trt("10.13.0.35")
    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "b")
    build_engines(BuildOptions(bundle=str(bundle), opt_batch=4))
    ref = np.load(bundle / REFERENCE)
    with open_backend("tensorrt", Bundle.open(bundle), FORWARD) as fwd:
        assert fwd.max_batch == 8, "the profile's max, read from the engine (export max 8)"
        allocated = []
        for n in (1, 5, 2):
            x = np.ascontiguousarray(np.resize(ref["images"], (n, 1, 16, 16)))
            assert fwd.infer({IMAGE: x})[Z].shape == (n, 256, 4, 4), "outputs take the input's batch"
            allocated.append(fwd.buffers[IMAGE][1])
        # device buffers grow to the largest batch seen (5) and are reused for smaller ones
        assert allocated == [1 * 256 * 4, 5 * 256 * 4, 5 * 256 * 4]
    r = verify(VerifyOptions(bundles=[str(bundle)], backends=["tensorrt", "onnxruntime"])).to_dict()
    assert {e[INVERSE] for e in r["round_trip"]} == {"tensorrt[10.13.0.35]", "onnxruntime[cpu]"}
    assert {(e[FORWARD], e[INVERSE]) for e in r["cross_round_trip"]} >= {
        ("tensorrt[10.13.0.35]", "onnxruntime[cpu]"), ("onnxruntime[cpu]", "tensorrt[10.13.0.35]")}, "z crosses backends"
