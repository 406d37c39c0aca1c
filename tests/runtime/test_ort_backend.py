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
        fwd = {id(v): v.data_ptr() for v in net.forward.initializers}
        shared = {v.data_ptr() for v in net.forward.initializers} & {v.data_ptr() for v in net.inverse.initializers}
        # every block's F weights are used by both directions: 6 blocks x 3 convolutions at least
        assert len(shared) >= 18 and len(fwd) >= 18
        x = net.bundle.reference("images")["images"]
        _, z = net.encode(x)
        rel = np.linalg.norm(net.decode(z) - x) / np.linalg.norm(x)
        assert rel <= 1e-5, "fp32 round trip (measured ~1e-7)"
