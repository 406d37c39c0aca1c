"""The ONNX Runtime backend: provider choice."""

import pytest

from irevnet.errors import IRevNetError
from irevnet.runtime import Bundle, open_backend


def test_onnxruntime_provider_choice_errors(bundles):
    bundle = Bundle.open(bundles["fp32"])
    with pytest.raises(IRevNetError, match="unknown provider 'rocm'"):
        open_backend("onnxruntime", bundle, "forward", providers=["rocm"])
    from irevnet.runtime.backends.ort_backend import available_providers

    if "cuda" not in available_providers():
        with pytest.raises(IRevNetError, match="provider 'cuda' is not available"):
            open_backend("onnxruntime", bundle, "forward", providers=["cuda"])


def test_both_directions_share_the_weights_in_memory(bundles):
    """Invertible opens forward and inverse through one Bundle: the initializers both sessions
    use are the same memory (ONNX Runtime keeps user-provided initializers as they are)."""
    import numpy as np

    from irevnet.runtime import Invertible

    with Invertible(bundles["fp32"]) as net:
        _, fwd = net.bundle.session_inputs("forward")
        _, inv = net.bundle.session_inputs("inverse")
        both = set(fwd) & set(inv)  # F's weights of 1 KiB and more: the small first-block ones stay inline
        assert len(both) >= 10 and max(fwd[n].nbytes for n in both) >= 100_000
        assert all(fwd[n].ctypes.data == inv[n].ctypes.data for n in both), "one buffer, not two copies"
        given = {v.data_ptr() for v in net.forward.initializers} & {v.data_ptr() for v in net.inverse.initializers}
        assert given == {fwd[n].ctypes.data for n in both}, "the sessions were handed that same memory"
        x = net.bundle.reference("images")["images"]
        _, z = net.encode(x)
        rel = np.linalg.norm(net.decode(z) - x) / np.linalg.norm(x)
        assert rel <= 1e-5, "fp32 round trip (measured ~1e-7)"
