"""One weights file for all of a bundle's graphs.

An i-RevNet's inverse evaluates the same bottleneck branches F as its forward, with the same
weights, and the debug graphs repeat both: written inline, a bundle would hold the weights four
times. Every graph instead keeps its initializers as ONNX external data in one file, each distinct
tensor stored once (by content), at a page-aligned offset so that a runtime may memory-map it.
Small tensors (shapes, scalars) stay inline in their graph.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data

from ..contract import WEIGHTS

ALIGNMENT = 4096  # the page size: mmap needs page-aligned offsets
MIN_EXTERNAL_BYTES = 1024


class SharedWeights:
    """Moves initializers of successive graphs into one file, each distinct content once."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close(), after the last graph
        self.offsets: dict[bytes, tuple[int, int]] = {}  # sha256 of the bytes -> (offset, length)
        self.referenced = 0  # bytes the graphs refer to, shared ones counted once per graph

    def externalize(self, model: onnx.ModelProto) -> None:
        """Points every initializer of at least MIN_EXTERNAL_BYTES at the file (graphs live beside it)."""
        for tensor in model.graph.initializer:
            raw = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
            if len(raw) < MIN_EXTERNAL_BYTES:
                continue
            key = hashlib.sha256(raw).digest()
            if key not in self.offsets:
                self.file.write(b"\0" * (-self.file.tell() % ALIGNMENT))
                self.offsets[key] = (self.file.tell(), len(raw))
                self.file.write(raw)
            offset, length = self.offsets[key]
            for field in ("float_data", "int32_data", "int64_data", "double_data"):
                tensor.ClearField(field)
            tensor.raw_data = raw  # set_external_data wants it present; cleared right after
            set_external_data(tensor, location=WEIGHTS, offset=offset, length=length)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            self.referenced += length

    def close(self) -> dict[str, Any]:
        """Closes the file; returns the manifest's `weights` section."""
        size = self.file.tell()
        self.file.close()
        return {"file": WEIGHTS, "bytes": size, "tensors": len(self.offsets), "alignment": ALIGNMENT,
                "referenced_bytes": self.referenced}
