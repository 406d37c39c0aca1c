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
