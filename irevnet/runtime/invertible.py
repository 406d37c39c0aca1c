"""Both directions of a bundle in one object, for applications: encode images, edit z, decode.

    from irevnet.runtime import Invertible

    with Invertible("bundles/digits") as net:
        logits, z = net.encode(images)        # (N, C, H, W) float32, normalised
        images_back = net.decode(z)           # inverse(forward(x)) == x to fp32 rounding

On ONNX Runtime's CPU provider the two sessions hold one copy of the weights between them
(backends/ort_offline.py): irevnet-301 takes 558 MiB for 477 MiB of weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..contract import FORWARD, IMAGE, INVERSE, LOGITS, Z
from .backends import open_backend
from .bundle import Bundle


class Invertible:
    """The forward graph (image -> logits, z) and the inverse graph (z -> image) of one bundle.

    Args:
        bundle: a bundle folder or an opened Bundle.
        backend: onnxruntime (default), tensorrt, torch, openvino or openvino-bf16.
        **options: passed to `open_backend` (providers, threads, device, checkpoint).
    """

    def __init__(self, bundle: str | Path | Bundle, backend: str = "onnxruntime", **options: Any):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        self.forward = open_backend(backend, self.bundle, FORWARD, **options)
        try:
            self.inverse = open_backend(backend, self.bundle, INVERSE, **options)
        except BaseException:
            self.forward.close()
            raise

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, C, H, W) normalised images -> logits (N, classes), z (N, *z_shape)."""
        out = self.forward.infer({IMAGE: images})
        return out[LOGITS], out[Z]

    def decode(self, z: np.ndarray) -> np.ndarray:
        """z (N, *z_shape) -> the images it encodes, (N, C, H, W), normalised."""
        return self.inverse.infer({Z: z})[IMAGE]

    def close(self) -> None:
        self.forward.close()
        self.inverse.close()

    def __enter__(self) -> Invertible:  # noqa: PYI034 - typing.Self needs Python 3.11; the package supports 3.10
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
