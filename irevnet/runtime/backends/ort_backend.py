"""ONNX Runtime backend: one InferenceSession per graph, providers chosen by availability."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import IRevNetError, shown
from ...io.files import machine_cache
from ..bundle import Bundle
from .base import Backend, BackendOptions, GraphFailed, interruptible

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


def _ort_errors() -> tuple[type[BaseException], ...]:
    """The exceptions ONNX Runtime raises for a graph it cannot load or run (its pybind11
    classes derive from Exception directly)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))


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
            # tuning results are cached in this machine's cache folder (files.machine_cache), keyed
            # by the graph, so later sessions start fast and the bundle stays as it was hashed.
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
        initializers: the model's external initializers as arrays (Bundle.session_inputs).
        shared_folder: for a graph saved by ONNX Runtime's offline mode (see ort_offline): the
            folder of its external data. The graph then runs with optimizations off (they were
            applied when it was saved) and takes `initializers` as they are, without a copy, so
            sessions given the same arrays share their memory.
    """

    name = "onnxruntime"
    takes = frozenset({"providers", "threads"})

    def __init__(
        self,
        model: bytes | str | Path,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        cache_dir: Path | None = None,
        max_batch: int | None = None,
        initializers: dict[str, np.ndarray] | None = None,
        shared_folder: Path | None = None,
        origin: str = "the graph",
    ):
        ort = _ort()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; the CLI reports what matters
        if threads:
            options.intra_op_num_threads = threads
        initializers = initializers or {}
        # kept for the session's lifetime: ONNX Runtime reads their memory as it is (see __del__)
        self.arrays = list(initializers.values())
        self.initializers = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]
        self.session = None
        if shared_folder is not None:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            # the graph's external data is found (existence checked) there, then overridden here
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(shared_folder))
            for name, value in zip(initializers, self.initializers):
                options.add_initializer(name, value)
        elif initializers:
            options.add_external_initializers(list(initializers), self.initializers)  # copied into the session
        self.runtime_errors = _ort_errors()
        try:
            self.session = ort.InferenceSession(
                model if isinstance(model, bytes) else str(model), options,
                providers=_provider_list(providers or available_providers(), cache_dir),
            )
        except self.runtime_errors as e:
            raise GraphFailed(f"{origin}: ONNX Runtime cannot load it ({shown(e)}); the graph is malformed, re-export the bundle") from None
        self.origin = origin
        self.max_batch = max_batch
        self.inputs = [self._spec(v) for v in self.session.get_inputs()]
        self.outputs = [self._spec(v) for v in self.session.get_outputs()]
        self.name = f"onnxruntime[{','.join(p.removesuffix('ExecutionProvider').lower() for p in self.providers)}]"

    @classmethod
    def for_bundle(cls, bundle: Bundle, graph: str, options: BackendOptions) -> OrtBackend:
        """Opens a bundle's graph on `options.providers` with `options.threads`. On the CPU provider
        alone the graph is optimized once per machine (ort_offline), so every session of the process
        shares one copy of the weights; where that cache cannot be written the session optimizes on
        its own, with its own copy."""
        providers, threads = list(options.providers or available_providers()), options.threads
        if providers == ["cpu"]:
            from .ort_offline import prepared_session_inputs

            try:
                model, initializers, folder = prepared_session_inputs(bundle, graph)
            except (OSError, RuntimeError) as e:  # an unwritable cache; ONNX Runtime failing to save the graph
                logging.getLogger(__name__).warning(
                    "cannot cache the optimized %s graph (%s); its session keeps its own copy of the weights", graph, str(e)[:200])
            else:
                return cls(model, providers=providers, threads=threads, max_batch=bundle.max_batch,
                           initializers=initializers, shared_folder=folder, origin=f"{bundle.path}: {graph}")
        model, initializers = bundle.session_inputs(graph)
        return cls(model, providers=providers, threads=threads, cache_dir=ort_cache_dir(bundle, graph), max_batch=bundle.max_batch,
                   initializers=initializers, origin=f"{bundle.path}: {graph}")

    @staticmethod
    def _spec(value) -> dict[str, Any]:
        return {"name": value.name, "shape": list(value.shape), "dtype": _ORT_DTYPES.get(value.type, value.type)}

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        names = outputs or [o["name"] for o in self.outputs]
        run_options = _ort().RunOptions()

        def stop() -> None:  # from another thread: ONNX Runtime checks the flag between nodes
            run_options.terminate = True

        with interruptible(stop):
            return dict(zip(names, self.session.run(names, feeds, run_options)))

    def close(self) -> None:
        self.session = None

    def __del__(self) -> None:
        # the session goes before the initializers it was given (add_initializer does not copy
        # them): left to the garbage collector, the arrays could be freed first
        self.session = None


def ort_cache_dir(bundle: Bundle, graph: str) -> Path:
    """Where ONNX Runtime's TensorRT provider caches the engine it builds for a graph: this
    machine's cache folder, keyed by the graph's sha256. Not the bundle: an engine is code for
    one GPU, and a cache that came with a bundle would be loaded unchecked."""
    return machine_cache() / "ort_trt" / bundle.manifest.files[bundle.graphs[graph].file][:32]
