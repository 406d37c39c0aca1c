"""Backends share one shape (see base.Backend); `open_backend` builds one for a bundle's graph."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable
from typing import Any

from ... import validation as check
from ...errors import IRevNetError
from ..bundle import Bundle
from .base import Backend, BackendOptions, InputError, OptionNotTaken, flag, unsupported

# The backends, each a class in its own module with a `for_bundle(bundle, graph, options)`
# constructor (base.Backend), imported only when opened: a new backend is one row here.
# openvino-bf16 is OpenVINO with F in bf16 (mixed bundles), a row of its own so that verify and
# bench show it beside the f32 one.
REGISTRY: dict[str, tuple[str, str]] = {
    "onnxruntime": ("ort_backend", "OrtBackend"),
    "tensorrt": ("trt_backend", "TrtBackend"),
    "torch": ("torch_backend", "TorchBackend"),
    "openvino": ("ov_backend", "OpenVinoBackend"),
    "openvino-bf16": ("ov_backend", "OpenVinoBf16Backend"),
    "triton": ("triton_backend", "TritonBackend"),  # a live Triton server (irevnet serve)
}
BACKENDS = tuple(REGISTRY)
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch", "ov": "openvino"}

__all__ = ["BACKENDS", "GRAPH_BACKENDS", "Backend", "BackendOptions", "InputError", "OptionNotTaken", "backend_class",
           "open_backend", "open_graph", "options_for", "refuse_options_not_taken", "resolve_backend",
           "resolve_backends", "unsupported"]


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


def backend_class(kind: str) -> type[Backend]:
    """The class of a backend (its module imported, not its runtime: that happens when it is opened)."""
    module, name = REGISTRY[resolve_backend(kind)]
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def refuse_options_not_taken(kinds: Iterable[str], options: BackendOptions, *, taken: Iterable[str] = ()) -> None:
    """Raises OptionNotTaken, one line, for an option given (away from its default) that none of
    the backends `kinds` runs with, nor the caller itself (`taken`: verify's --checkpoint is its
    live reference too); options given for several backends at once go each to those taking it."""
    kinds = [resolve_backend(kind) for kind in kinds]
    taken = set(taken).union(*(backend_class(kind).takes for kind in kinds))
    for option in options.given():
        if option not in taken:
            owners = ", ".join(f"-b {kind}" for kind in BACKENDS if option in backend_class(kind).takes)
            who = f"-b {kinds[0]} does not" if len(kinds) == 1 else f"none of {', '.join(f'-b {k}' for k in kinds)}"
            raise OptionNotTaken(f"{who} take{'s' if len(kinds) > 1 else ''} {flag(option)} (an option of {owners}); "
                                 f"leave it out")


def options_for(kind: str, options: BackendOptions) -> BackendOptions:
    """One backend's share of options given for several (verify's and bench's `-b onnxruntime -b
    torch --provider cuda --checkpoint C`): those it takes, the others at their defaults."""
    return options.only(backend_class(kind).takes)


def open_backend(kind: str, bundle: Bundle, graph: str, options: BackendOptions | None = None,
                 **fields: Any) -> Backend:
    """Opens `graph` (forward, inverse, forward_blocks, inverse_blocks) of a bundle on a backend.

    Args:
        options: what to ask of the backend (BackendOptions); its fields can also be given as
            keywords, `open_backend("onnxruntime", bundle, "forward", threads=1)`.

    Raises:
        OptionNotTaken: an option given that this backend does not run with.
        EngineMismatch: for tensorrt, engines built for another GPU or TensorRT version; the
            caller decides whether to rebuild them (`irevnet.runtime.trt_build.rebuild_stale_engines`).
    """
    kind = resolve_backend(kind)
    options = dataclasses.replace(options or BackendOptions(), **fields)
    check.threads(options.threads)
    refuse_options_not_taken([kind], options)
    return backend_class(kind).for_bundle(bundle, graph, options)


GRAPH_BACKENDS = ("onnxruntime", "openvino", "tensorrt")  # what open_graph runs a graph outside a bundle on


def open_graph(kind: str, model: bytes, outputs: list[str], *, max_batch: int, origin: str = "the graph",
               threads: int | None = None, engines: Any = None) -> Backend:
    """Opens an ONNX graph that is not in a bundle, weights inline: what the precision search
    judges each plan with before it writes the bundle of the one it chose.

    Args:
        kind: onnxruntime or openvino (on the CPU), or tensorrt (an engine built for this GPU).
        outputs: the graph's output names, in order.
        engines: for tensorrt, the trt_build.GraphEngines that builds the engine (its timing
            cache shared by every graph it builds); one of its own where None.
    """
    kind = resolve_backend(kind)
    check.threads(threads)
    if kind == "onnxruntime":
        return backend_class(kind)(model, providers=["cpu"], threads=threads, max_batch=max_batch, origin=origin)
    if kind == "openvino":
        return backend_class(kind)(model, outputs=outputs, threads=threads, max_batch=max_batch, origin=origin)
    if kind == "tensorrt":
        if engines is None:
            from ..trt_build import GraphEngines

            engines = GraphEngines(max_batch)
        return backend_class(kind)(engines.build(model, origin), origin=origin)
    raise IRevNetError(f"-b {kind} runs the graphs of a bundle; choose one of {', '.join(GRAPH_BACKENDS)} for a "
                       f"graph outside one")
