"""OpenVINO backend (CPU): one compiled model per graph, one infer request.

The inference precision is always set, never left to the plugin: on CPUs with AVX-512 BF16 or
AMX the CPU plugin's default is bf16 for everything, coupling included, and an fp32 bundle then
round-trips at ~2e-3 instead of ~1e-7. Here it is f32 for every bundle (the graph's own types
decide: fp16 F in mixed bundles, int8 F in int8 bundles), or bf16 on request for mixed bundles
only: there explicit casts separate F from the coupling, so OpenVINO runs F in bf16 and keeps the
additions and subtractions in f32 (measured: the round trip stays at 5e-8 on the trained
bijective digits model). On fp32 bundles the plugin fuses the coupling's subtraction into F's
last convolution and computes it in bf16, with or without the "precise" runtime-info mark on
the coupling nodes, so bf16 is refused there. The backend's name says what OpenVINO reports it
ran (the convolutions' runtime precision), which is f32 under a bf16 hint on CPUs without bf16.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...contract import BATCH_DIM, Precision
from ...errors import IRevNetError
from ..bundle import Bundle
from .base import Backend, BackendOptions, GraphFailed, interruptible, unsupported

# bundle precision -> the CPU plugin's inference precision
INFERENCE_PRECISION = {Precision.fp32: "f32", Precision.fp16: "f32", Precision.mixed: "f32", Precision.int8: "f32",
                       Precision.plan: "f32"}
_DTYPES = {"f32": "float32", "f16": "float16"}


def _openvino():
    try:
        import openvino
    except ImportError:
        raise IRevNetError("OpenVINO is not installed; pip install 'irevnet[openvino]'") from None
    return openvino


class OpenVinoBackend(Backend):
    """Runs one ONNX graph with OpenVINO on the CPU.

    Args:
        model: the ONNX model as bytes, weights inline (a bundle's: Bundle.graph_bytes, checked).
        outputs: the graph's output names, in order.
        precision: the CPU plugin's inference precision, f32 or bf16 (see the module docstring).
        threads: inference threads (default: OpenVINO's).
        max_batch: largest batch the graph was exported for (inputs beyond it are refused).
    """

    name = "openvino"
    takes = frozenset({"threads"})
    bf16 = False  # what for_bundle asks for: F in bf16 (OpenVinoBf16Backend)

    @classmethod
    def for_bundle(cls, bundle: Bundle, graph: str, options: BackendOptions) -> OpenVinoBackend:
        """Opens a bundle's graph: in f32 whatever the bundle's precision (the graph's types
        decide), in bf16 for openvino-bf16 on a mixed bundle."""
        if cls.bf16 and (reason := unsupported("openvino-bf16", bundle.precision)):
            raise IRevNetError(f"{bundle.path}: {reason}")
        return cls(bundle.graph_bytes(graph), outputs=[o.name for o in bundle.graphs[graph].outputs],
                   precision="bf16" if cls.bf16 else INFERENCE_PRECISION[bundle.precision], threads=options.threads,
                   max_batch=bundle.max_batch, origin=f"{bundle.path}: {graph}")

    def __init__(self, model: bytes, *, outputs: list[str], precision: str = "f32", threads: int | None = None,
                 max_batch: int | None = None, origin: str = "the graph"):
        ov = _openvino()
        self.precision = precision
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        try:
            self.compiled = core.compile_model(core.read_model(model), "CPU", config)
        except RuntimeError as e:
            raise GraphFailed(f"{origin}: OpenVINO cannot compile it ({_message(e)}); the graph is malformed, "
                              f"re-export the bundle") from None
        self.request = self.compiled.create_infer_request()
        self.origin, self.runtime_errors = origin, (RuntimeError,)
        self.max_batch = max_batch
        self.inputs = [self._spec(p, p.get_any_name()) for p in self.compiled.inputs]
        # by the graph's names: OpenVINO merges an output that aliases another (h0 = image) into one
        # port with two names, and get_any_name() would give one of them twice
        self.outputs = [self._spec(self.compiled.output(name), name) for name in outputs]
        # what ran, not what was asked: a CPU without bf16 (AVX2, AVX-512 without BF16) runs a
        # bf16 hint in f32, and int8 convolutions run as u8/i8
        self.name = f"openvino[cpu,{_convolution_precisions(self.compiled) or self.precision}]"

    def _error_line(self, e: BaseException) -> str:
        return _message(e)

    @staticmethod
    def _spec(port, name: str) -> dict[str, Any]:
        shape = [BATCH_DIM if i == 0 else int(d.get_length()) for i, d in enumerate(port.get_partial_shape())]
        return {"name": name, "shape": shape, "dtype": _DTYPES.get(port.get_element_type().get_type_name(), "float32")}

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        with interruptible(self.request.cancel):  # from another thread: the request stops early
            results = self.request.infer({name: np.ascontiguousarray(a) for name, a in feeds.items()})
        names = outputs or [o["name"] for o in self.outputs]
        # copies: the request reuses its output buffers on the next call
        return {name: np.array(results[self.compiled.output(name)]) for name in names}

    def close(self) -> None:
        self.request = None
        self.compiled = None


class OpenVinoBf16Backend(OpenVinoBackend):
    """openvino-bf16: F of a mixed bundle in bf16, the coupling in f32 (see the module docstring)."""

    bf16 = True


def _message(e: BaseException) -> str:
    """The informative line of an OpenVINO exception (its first lines name the C++ source file)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.startswith("Exception from ")]
    return (lines[0] if lines else type(e).__name__)[:200]


def _convolution_precisions(compiled) -> str:
    """The precisions OpenVINO's runtime model reports for its convolutions (runtimePrecision),
    joined with '+': 'f32', 'bf16', 'u8', 'i8+u8'; '' for a graph without convolutions."""
    found = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) == "Convolution":
            found.add(info["runtimePrecision"].astype(str))
    return "+".join(sorted(found))
