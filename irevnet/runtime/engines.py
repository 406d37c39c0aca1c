"""TensorRT helpers shared by `irevnet build` (runtime/trt_build.py) and the TensorRT backend:
importing TensorRT, a logger that keeps its errors, the optimization profile, and whether an
engine may run here.

Pure Python; `tensorrt` is imported only by `import_tensorrt`, so the rules are tested on
machines without a GPU.

A serialized engine is specific to the TensorRT version and the GPU it was built for. Two build
options relax that (both recorded in the manifest): VERSION_COMPATIBLE engines run on the same
or a later TensorRT release of the same major version, and a hardware compatibility level lets
an engine run on other GPUs (AMPERE_PLUS: any compute capability >= 8.0; SAME_COMPUTE_CAPABILITY:
any GPU of the compute capability it was built on).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from ..errors import BundleError, IRevNetError

if TYPE_CHECKING:
    from .manifest import TensorRTSection


class HardwareCompat(str, Enum):
    """Which GPUs an engine may run on besides the one it was built on."""

    none = "none"  # the build GPU's model (another of the same compute capability: a warning)
    ampere_plus = "ampere_plus"  # any GPU of compute capability 8.0 or newer
    same_compute_capability = "same_compute_capability"  # any GPU of the build GPU's compute capability


class EngineMismatch(BundleError):
    """An engine built for another TensorRT version or GPU."""


@dataclass(frozen=True)
class Profile:
    """The batch range of the one optimization profile: kernels are tuned for `opt`."""

    min: int
    opt: int
    max: int

    def shapes(self, feature_shape: list[int]) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) full input shapes for an input of shape (N, *feature_shape)."""
        return tuple((n, *feature_shape) for n in (self.min, self.opt, self.max))


def make_profile(bundle_max: int, max_batch: int | None = None, opt_batch: int | None = None) -> Profile:
    """min 1; max the requested batch (at most what the ONNX graph was exported for); opt
    defaults to max, where throughput matters most.

    Raises:
        BundleError: a batch range that the bundle cannot serve.
    """
    top = bundle_max if max_batch is None else max_batch
    if not 1 <= top <= bundle_max:
        raise BundleError(f"--max-batch {top} is outside 1..{bundle_max} (the bundle's exported range); re-export for more")
    opt = top if opt_batch is None else opt_batch
    if not 1 <= opt <= top:
        raise BundleError(f"--opt-batch {opt} must lie in 1..{top}")
    return Profile(1, opt, top)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_compatible(meta: TensorRTSection, trt_version: str, gpu_name: str,
                     compute_capability: tuple[int, int]) -> list[str]:
    """Refuses an engine that cannot run on this TensorRT version and GPU.

    Args:
        meta: the manifest's "tensorrt" section.
    Returns:
        Notes about tolerated differences (another GPU model of the same compute capability).
    Raises:
        EngineMismatch: naming both sides and saying to rebuild.
    """
    built, here = _version(meta.version), _version(trt_version)
    rebuild = "rebuild the engines here with `irevnet build BUNDLE` (or pass --rebuild)"
    if meta.version_compatible:
        if here[:1] != built[:1] or here[:3] < built[:3]:
            raise EngineMismatch(
                f"engines were built with TensorRT {meta.version} (version-compatible within {built[0]}.x, same or "
                f"newer), this is TensorRT {trt_version}; {rebuild}"
            )
    elif here[:3] != built[:3]:
        raise EngineMismatch(f"engines were built with TensorRT {meta.version}, this is TensorRT {trt_version}; {rebuild}")
    gpu = meta.gpu
    built_cc = tuple(gpu.compute_capability)
    level = meta.hardware_compatibility
    where = f"{gpu.name} (sm_{built_cc[0]}{built_cc[1]})"
    this = f"{gpu_name} (sm_{compute_capability[0]}{compute_capability[1]})"
    if level is HardwareCompat.ampere_plus:
        if compute_capability < (8, 0):
            raise EngineMismatch(f"engines are Ampere-or-newer compatible, this GPU is {this}; {rebuild}")
        return []
    if tuple(compute_capability) != built_cc:
        raise EngineMismatch(f"engines were built for {where}, this GPU is {this}; {rebuild}")
    if level is HardwareCompat.none and gpu_name != gpu.name:
        note = f"engines were built on {gpu.name}, running on {gpu_name} (same compute capability)"
        return [f"{note}; rebuild for best performance"]
    return []


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise IRevNetError(
            "TensorRT is not installed (pip install 'irevnet[tensorrt]', wheels from NVIDIA's index); "
            "the bundle's ONNX graphs run on ONNX Runtime meanwhile (--backend onnxruntime)"
        ) from None
    return tensorrt


def make_logger(trt) -> Any:
    """A TensorRT logger that keeps warnings and errors so failures can be reported in one line."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []

        def log(self, severity, msg) -> None:
            # pybind11 enums compare reliably as ints: INTERNAL_ERROR 0, ERROR 1, WARNING 2, ...
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append((int(severity), msg))

        def errors(self) -> str:
            text = [m for s, m in self.messages if s <= int(trt.ILogger.Severity.ERROR)]
            return "; ".join(text[-3:]) or "no error message"

    return Logger()
