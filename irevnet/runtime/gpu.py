"""Just enough CUDA for the TensorRT backend: a stream, device buffers, copies and events.

(Named gpu.py: the name `cuda` belongs to cuda-python, which this module wraps.)

Through cuda-python (`pip install cuda-python`) when installed, else through torch. Device
memory is plain cudaMalloc memory (never managed memory).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import IRevNetError


def cuda_api() -> CudaPython | CudaTorch:
    """The first available implementation; raises a one-line error when neither is."""
    try:
        return CudaPython()
    except ImportError:
        pass
    try:
        return CudaTorch()
    except ImportError:
        raise IRevNetError(
            "the TensorRT backend needs cuda-python or torch for GPU buffers; pip install cuda-python"
        ) from None


class CudaPython:
    """CUDA runtime calls through cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6)."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # older cuda-python layout
        self.rt = cudart
        count = self._call(cudart.cudaGetDeviceCount())
        if not count:
            raise IRevNetError("no CUDA GPU is visible; the TensorRT backend needs one")

    def _call(self, result: tuple) -> Any:
        err, *values = result
        if err.value:
            name = self.rt.cudaGetErrorName(err)[1]
            raise IRevNetError(f"CUDA error {err.value} ({name.decode() if isinstance(name, bytes) else name})")
        return values[0] if len(values) == 1 else (values or None)

    def device(self) -> tuple[str, tuple[int, int]]:
        """(GPU name, compute capability) of the current device."""
        dev = self._call(self.rt.cudaGetDevice())
        props = self._call(self.rt.cudaGetDeviceProperties(dev))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return name.rstrip("\x00"), (int(props.major), int(props.minor))

    def stream(self) -> Any:
        return self._call(self.rt.cudaStreamCreate())

    def handle(self, stream: Any) -> int:
        return int(stream)

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._call(self.rt.cudaFree(ptr))

    def to_device(self, ptr: int, array: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, stream))

    def to_host(self, array: np.ndarray, ptr: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, kind, stream))

    def event(self) -> Any:
        return self._call(self.rt.cudaEventCreate())

    def record(self, event: Any, stream: Any) -> None:
        self._call(self.rt.cudaEventRecord(event, stream))

    def synchronize(self, stream: Any) -> None:
        self._call(self.rt.cudaStreamSynchronize(stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._call(self.rt.cudaEventElapsedTime(start, end)))


class CudaTorch:
    """The same calls through torch's CUDA runtime (used when cuda-python is absent)."""

    def __init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise IRevNetError("no CUDA GPU is visible to torch; the TensorRT backend needs one")
        self.torch = torch
        self._buffers: dict[int, Any] = {}

    def device(self) -> tuple[str, tuple[int, int]]:
        props = self.torch.cuda.get_device_properties(self.torch.cuda.current_device())
        return props.name, (props.major, props.minor)

    def stream(self) -> Any:
        return self.torch.cuda.Stream()

    def handle(self, stream: Any) -> int:
        return int(stream.cuda_stream)

    def malloc(self, nbytes: int) -> int:
        buf = self.torch.empty(nbytes, dtype=self.torch.uint8, device="cuda")
        self._buffers[buf.data_ptr()] = buf
        return buf.data_ptr()

    def free(self, ptr: int) -> None:
        self._buffers.pop(ptr, None)

    def to_device(self, ptr: int, array: np.ndarray, stream: Any) -> None:
        dst = self._buffers[ptr][: array.nbytes]
        with self.torch.cuda.stream(stream):
            dst.copy_(self.torch.from_numpy(array.reshape(-1).view(np.uint8)), non_blocking=False)

    def to_host(self, array: np.ndarray, ptr: int, stream: Any) -> None:
        src = self._buffers[ptr][: array.nbytes]
        with self.torch.cuda.stream(stream):
            out = src.cpu()
        array.reshape(-1).view(np.uint8)[:] = out.numpy()

    def event(self) -> Any:
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(start.elapsed_time(end))
