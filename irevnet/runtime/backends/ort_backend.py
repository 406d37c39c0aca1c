"""ONNX Runtime backend: one InferenceSession per graph, providers chosen by availability."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import IRevNetError
from .base import Backend

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise IRevNetError(
            "onnxruntime is not installed; pip install 'irevnet[ort]' (CPU) or 'irevnet[gpu]' (CUDA/TensorRT)"
        ) from None
    return onnxruntime


def available_providers() -> list[str]:
    """Short names (tensorrt, cuda, cpu) of the providers this onnxruntime build offers, best first."""
    have = set(_ort().get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in have]


def _provider_list(names: list[str], cache_dir: Path | None) -> list[Any]:
    have = available_providers()
    chosen = []
    for name in names:
        if name not in PROVIDERS:
            raise IRevNetError(f"unknown provider {name!r}; choose from {', '.join(PROVIDERS)}")
        if name not in have:
            raise IRevNetError(f"provider {name!r} is not available in this onnxruntime build (have {', '.join(have)})")
        full = PROVIDERS[name]
        if name == "tensorrt":
            # Precision comes from the graph's types (fp16 casts in fp16/mixed bundles): no
            # trt_fp16_enable, which would let TensorRT lower fp32 layers on its own. Engines and
            # tuning results are cached beside the bundle so later sessions start fast.
            options: dict[str, Any] = {"trt_fp16_enable": False}
            if cache_dir is not None:
                cache_dir.mkdir(parents=True, exist_ok=True)
                options |= {
                    "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
                    "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache_dir),
                }
            chosen.append((full, options))
        else:
            chosen.append(full)
    if "cpu" not in names:
        chosen.append(PROVIDERS["cpu"])  # nodes a GPU provider does not take fall back to the CPU
    return chosen


class OrtBackend(Backend):
    """Runs one ONNX graph with ONNX Runtime.

    Args:
        model: the ONNX model as bytes (what a bundle checked, see Bundle.graph_bytes), or a .onnx path.
        providers: short provider names in priority order (default: all available, best first).
        threads: intra-op threads (default: ONNX Runtime's, one per physical core).
        cache_dir: where the TensorRT provider keeps engines and its timing cache.
        max_batch: largest batch the graph was exported for (inputs beyond it are refused).
        initializers: the model's external initializers as arrays (Bundle.session_inputs); ONNX
            Runtime uses their memory as it is, so sessions given the same arrays share it.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: bytes | str | Path,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        cache_dir: Path | None = None,
        max_batch: int | None = None,
        initializers: dict[str, np.ndarray] | None = None,
    ):
        ort = _ort()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; the CLI reports what matters
        if threads:
            options.intra_op_num_threads = threads
        # kept for the session's lifetime: ONNX Runtime does not copy them
        self.initializers = [ort.OrtValue.ortvalue_from_numpy(a) for a in (initializers or {}).values()]
        if initializers:
            options.add_external_initializers(list(initializers), self.initializers)
        self.session = ort.InferenceSession(
            model if isinstance(model, bytes) else str(model), options, providers=_provider_list(providers or available_providers(), cache_dir)
        )
        self.max_batch = max_batch
        self.inputs = [self._spec(v) for v in self.session.get_inputs()]
        self.outputs = [self._spec(v) for v in self.session.get_outputs()]
        self.name = f"onnxruntime[{','.join(p.removesuffix('ExecutionProvider').lower() for p in self.providers)}]"

    @staticmethod
    def _spec(value) -> dict[str, Any]:
        return {"name": value.name, "shape": list(value.shape), "dtype": _ORT_DTYPES.get(value.type, value.type)}

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        names = outputs or [o["name"] for o in self.outputs]
        return dict(zip(names, self.session.run(names, feeds)))

    def close(self) -> None:
        self.session = None
