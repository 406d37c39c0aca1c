"""Running and judging exported bundles: numpy and ONNX Runtime or TensorRT, never torch.

    from irevnet.runtime import Bundle, open_backend

    bundle = Bundle.open("bundles/digits")            # checks the schema and every file's sha256
    bundle.manifest.batch.max                         # the manifest, typed (runtime/manifest.py)
    with open_backend("onnxruntime", bundle, "inverse") as inverse:
        image = inverse.infer({"z": z})["image"]      # (N, C, H, W) float32, normalised

`verify` and `bench` (the CLI's commands) live in irevnet.runtime.verify / .bench and return
report objects; TensorRT engines are built by irevnet.runtime.trt_build. Only the torch backend
imports torch, when it is opened.
"""

from .backends import BACKENDS, Backend, InputError, open_backend
from .bundle import Bundle
from .comparison import TOLERANCES, Comparison, Parity, RoundTrip, Tolerance, compare, tolerance_for
from .invertible import Invertible

__all__ = [
    "BACKENDS", "TOLERANCES", "Backend", "Bundle", "Comparison", "InputError", "Invertible", "Parity", "RoundTrip",
    "Tolerance", "compare", "open_backend", "tolerance_for",
]
