"""TensorRT backend: a serialized engine, one execution context, device buffers, one stream.

Written against the TensorRT 10.x / 11.x Python API (tensor-name I/O: set_input_shape,
set_tensor_address, execute_async_v3). Needs the `tensorrt` package and a CUDA GPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...contract import BATCH_DIM
from ...errors import BundleError, IRevNetError
from .. import gpu
from ..bundle import Bundle
from ..engines import check_compatible, import_tensorrt, make_logger
from .base import Backend, BackendOptions

log = logging.getLogger(__name__)


class TrtBackend(Backend):
    """Runs one engine of a bundle.

    Args:
        engine: the serialized engine (a bundle's checked bytes, see Bundle.engine_bytes) or an .engine path.
        bundle: when given, the engine's build record in its manifest is checked against this
            TensorRT version and GPU first (EngineMismatch says to rebuild).
    """

    name = "tensorrt"
    takes = frozenset()  # the engine was built with all it runs with

    @classmethod
    def for_bundle(cls, bundle: Bundle, graph: str, options: BackendOptions) -> TrtBackend:
        """The bundle's checked engine of `graph`.

        Raises:
            EngineMismatch: built for another GPU or TensorRT version; the caller decides whether
                to rebuild (verify's and bench's `rebuild` option, irevnet.runtime.trt_build).
        """
        if not bundle.has_engine(graph):
            raise IRevNetError(f"{bundle.path} has no TensorRT engine for {graph}; build them with `irevnet build {bundle.path}`")
        return cls(bundle.engine_bytes(graph), bundle=bundle)

    def __init__(self, engine: bytes | str | Path, *, bundle: Bundle | None = None, origin: str = "the graph"):
        self.origin = origin  # what its messages name
        trt = import_tensorrt()
        self.trt = trt
        self.cuda = gpu.cuda_api()
        gpu_name, cc = self.cuda.device()
        if bundle is not None and bundle.manifest.tensorrt is not None:
            for note in check_compatible(bundle.manifest.tensorrt, trt.__version__, gpu_name, cc):
                log.warning(note)
        self.logger = make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        if not isinstance(engine, bytes):
            if not Path(engine).is_file():
                raise BundleError(f"engine not found: {engine}; build it with `irevnet build`")
            engine = Path(engine).read_bytes()
        self.engine = self.runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise BundleError(f"TensorRT could not deserialize the engine ({self.logger.errors()}); rebuild with `irevnet build`")
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream()
        self.start, self.end = self.cuda.event(), self.cuda.event()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.inputs = [self._spec(n) for n in names if is_input[n]]
        self.outputs = [self._spec(n) for n in names if not is_input[n]]
        first = self.inputs[0]["name"]
        self.max_batch = int(self.engine.get_tensor_profile_shape(first, 0)[2][0])  # (min, opt, max)
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.name = f"tensorrt[{trt.__version__}]"

    def _spec(self, name: str) -> dict[str, Any]:
        shape = [d if d >= 0 else BATCH_DIM for d in self.engine.get_tensor_shape(name)]
        return {"name": name, "shape": shape, "dtype": self.dtypes[name].name}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:  # grow to the largest batch seen; re-used afterwards
            if ptr:
                self.cuda.free(ptr)
            ptr = self.cuda.malloc(nbytes)
            self.buffers[name] = (ptr, nbytes)
        return ptr

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        cuda, ctx, stream = self.cuda, self.context, self.stream
        for name, array in feeds.items():
            array = np.ascontiguousarray(array, dtype=self.dtypes[name])
            if not ctx.set_input_shape(name, array.shape):
                raise IRevNetError(f"TensorRT refused input shape {array.shape} for {name!r} (profile 1..{self.max_batch})")
            ptr = self._buffer(name, array.nbytes)
            cuda.to_device(ptr, array, stream)
            ctx.set_tensor_address(name, ptr)
        results = {}
        for spec in self.outputs:
            name = spec["name"]
            host = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=self.dtypes[name])
            ctx.set_tensor_address(name, self._buffer(name, max(host.nbytes, 1)))
            results[name] = host
        cuda.record(self.start, stream)
        if not ctx.execute_async_v3(cuda.handle(stream)):
            raise IRevNetError(f"TensorRT execution failed ({self.logger.errors()})")
        cuda.record(self.end, stream)
        wanted = outputs or list(results)
        for name in wanted:
            cuda.to_host(results[name], self.buffers[name][0], stream)
        cuda.synchronize(stream)
        self.last_device_ms = cuda.elapsed_ms(self.start, self.end)
        return {n: results[n] for n in wanted}

    def close(self) -> None:
        for ptr, _ in getattr(self, "buffers", {}).values():
            self.cuda.free(ptr)
        self.buffers = {}
        self.context = self.engine = None
