"""Backends share one shape (see base.Backend); `open_backend` builds one for a bundle's graph."""

from __future__ import annotations

from pathlib import Path

from ... import validation as check
from ...errors import BundleError, IRevNetError
from ...io.files import machine_cache
from ..bundle import Bundle
from .base import Backend, InputError, unsupported

# openvino-bf16: OpenVINO with F in bf16 (mixed bundles), a backend of its own so that verify and
# bench show it beside the f32 one
BACKENDS = ("onnxruntime", "tensorrt", "torch", "openvino", "openvino-bf16")
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch", "ov": "openvino"}

__all__ = ["BACKENDS", "Backend", "InputError", "open_backend", "resolve_backend", "unsupported"]


def resolve_backend(name: str) -> str:
    name = ALIASES.get(name.lower(), name.lower())
    if name not in BACKENDS:
        raise IRevNetError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return name


def ort_cache_dir(bundle: Bundle, graph: str) -> Path:
    """Where ONNX Runtime's TensorRT provider caches the engine it builds for a graph: this
    machine's cache folder, keyed by the graph's sha256. Not the bundle: an engine is code for
    one GPU, and a cache that came with a bundle would be loaded unchecked."""
    return machine_cache() / "ort_trt" / bundle.manifest["files"][bundle.graphs[graph]["file"]][:32]


def open_backend(
    kind: str,
    bundle: Bundle,
    graph: str,
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
    device: str = "auto",
    checkpoint: str | None = None,
) -> Backend:
    """Opens `graph` (forward, inverse, forward_blocks, inverse_blocks) of a bundle on a backend.

    Raises:
        EngineMismatch: for tensorrt, engines built for another GPU or TensorRT version; the
            caller decides whether to rebuild them (`irevnet.export.trt_build.rebuild_stale_engines`).
    """
    kind = resolve_backend(kind)
    check.threads(threads)
    if kind == "onnxruntime":
        from .ort_backend import OrtBackend

        return OrtBackend.from_bundle(bundle, graph, providers=providers, threads=threads, cache_dir=ort_cache_dir(bundle, graph))
    if kind in ("openvino", "openvino-bf16"):
        from .ov_backend import OpenVinoBackend

        return OpenVinoBackend(bundle, graph, bf16=kind == "openvino-bf16", threads=threads)
    if kind == "tensorrt":
        from .trt_backend import TrtBackend

        if not bundle.has_engine(graph):
            raise IRevNetError(f"{bundle.path} has no TensorRT engine for {graph}; build them with `irevnet build {bundle.path}`")
        return TrtBackend(bundle.engine_bytes(graph), bundle=bundle)  # EngineMismatch: built elsewhere
    from .torch_backend import TorchBackend

    ckpt = checkpoint or bundle.manifest["checkpoint"]["path"]
    if checkpoint is None and not Path(ckpt).is_file():
        raise BundleError(
            f"the torch backend runs the checkpoint the bundle was exported from, {ckpt}, which is not "
            f"there (moved to another machine?); pass --checkpoint PATH"
        )
    return TorchBackend(
        ckpt, graph, precision=bundle.precision, projection=bundle.manifest["range_projection"],
        image_size=bundle.config.in_shape[1], device=device, threads=threads, max_batch=bundle.max_batch,
        sha256=bundle.manifest["checkpoint"]["sha256"], grid=bundle.manifest.get("exact_coupling", {}).get("exponent"),
    )
