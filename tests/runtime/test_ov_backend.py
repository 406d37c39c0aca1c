"""The OpenVINO backend: the inference precision comes from the bundle, never the plugin's default."""

import numpy as np
import pytest

from irevnet.errors import IRevNetError
from irevnet.runtime import Bundle, Invertible, open_backend

openvino = pytest.importorskip("openvino", reason="the openvino backend needs the openvino wheel (irevnet[openvino])")
HAS_BF16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_fp32_bundle_runs_in_f32_and_round_trips_exactly(bundles):
    """The CPU plugin's default on AVX-512 BF16 CPUs is bf16 everywhere (round trip ~2e-3 measured
    on the trained digits); set to f32 it matches ONNX Runtime to fp32 rounding."""
    bundle = Bundle.open(bundles["fp32"])
    ref = bundle.reference("images", "logits")
    with Invertible(bundle, "openvino", threads=1) as net:
        assert net.forward.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
        assert net.forward.name == "openvino[cpu,f32]"
        logits, z = net.encode(ref["images"])
        assert _rel(logits, ref["logits"]) <= 1e-5, "fp32 (measured ~3e-7)"
        assert _rel(net.decode(z), ref["images"]) <= 1e-6, "fp32 round trip (measured 1.5e-7)"


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 (AVX-512 BF16 / AMX), so OpenVINO would emulate it")
def test_bf16_runs_f_in_bf16_and_keeps_the_coupling_fp32(bundles):
    """On a mixed bundle the casts around F keep OpenVINO's bf16 inside F: z moves by bf16's
    rounding (measured 4e-3) while the round trip stays near fp32 (measured 3.4e-5 on the injective
    model: a few bf16 roundings flip between directions; 5e-8 on the bijective one). bf16
    everywhere, coupling included, measured 2.2e-3."""
    bundle = Bundle.open(bundles["mixed"])
    ref = bundle.reference("images", "z")
    with Invertible(bundle, "openvino-bf16", threads=1) as net:
        assert net.forward.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16
        _, z = net.encode(ref["images"])
        assert _rel(z, ref["z"]) > 1e-3, "F really ran in bf16"
        assert _rel(net.decode(z), ref["images"]) <= 3e-4


def test_bf16_is_refused_where_it_would_reach_the_coupling(bundles):
    with pytest.raises(IRevNetError, match="export with --precision mixed"):
        open_backend("openvino-bf16", Bundle.open(bundles["fp32"]), "forward")
