"""Backends share one shape (see base.Backend); `open_backend` builds one for a bundle's graph."""

from __future__ import annotations

import importlib
from typing import Any

from ... import validation as check
from ...errors import IRevNetError
from ..bundle import Bundle
from .base import Backend, InputError, unsupported

# The backends, each a class in its own module with a `for_bundle(bundle, graph, **options)`
# constructor (base.Backend), imported only when opened: a new backend is one row here.
# openvino-bf16 is OpenVINO with F in bf16 (mixed bundles), a row of its own so that verify and
# bench show it beside the f32 one.
REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "onnxruntime": ("ort_backend", "OrtBackend", {}),
    "tensorrt": ("trt_backend", "TrtBackend", {}),
    "torch": ("torch_backend", "TorchBackend", {}),
    "openvino": ("ov_backend", "OpenVinoBackend", {}),
    "openvino-bf16": ("ov_backend", "OpenVinoBackend", {"bf16": True}),
    "triton": ("triton_backend", "TritonBackend", {}),  # a live Triton server (irevnet serve)
}
BACKENDS = tuple(REGISTRY)
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch", "ov": "openvino"}

__all__ = ["BACKENDS", "Backend", "InputError", "open_backend", "resolve_backend", "resolve_backends", "unsupported"]


def resolve_backends(names: list[str] | None, server: str | None, default: list[str]) -> list[str]:
    """verify's and bench's backends: the names given (aliases resolved), else `default`; with a
    server, the triton backend beside them. The triton backend needs the server's address."""
    kinds = [resolve_backend(name) for name in names or default]
    if server is not None:
        from .triton_client import ServerAddress

        ServerAddress.parse(server)  # an empty or unparsable address is refused before any work
        if "triton" not in kinds:
            kinds.append("triton")  # side by side with the local ones asked for
    if "triton" in kinds and server is None:
        raise IRevNetError("the triton backend needs the server's address: --server http://HOST:PORT")
    return kinds


def resolve_backend(name: str) -> str:
    name = ALIASES.get(name.lower(), name.lower())
    if name not in BACKENDS:
        raise IRevNetError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return name


def open_backend(
    kind: str,
    bundle: Bundle,
    graph: str,
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
    device: str = "auto",
    checkpoint: str | None = None,
    server: str | None = None,
    server_timeout_s: float = 60.0,
) -> Backend:
    """Opens `graph` (forward, inverse, forward_blocks, inverse_blocks) of a bundle on a backend.

    Raises:
        EngineMismatch: for tensorrt, engines built for another GPU or TensorRT version; the
            caller decides whether to rebuild them (`irevnet.runtime.trt_build.rebuild_stale_engines`).
    """
    kind = resolve_backend(kind)
    check.threads(threads)
    module, name, fixed = REGISTRY[kind]
    cls = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    return cls.for_bundle(bundle, graph, providers=providers, threads=threads, device=device, checkpoint=checkpoint,
                          server=server, server_timeout_s=server_timeout_s, **fixed)
