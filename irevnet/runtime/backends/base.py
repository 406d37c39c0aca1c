"""What every backend is: open an artifact, run a feed of named arrays, return named arrays."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ...contract import BATCH_DIM, Precision
from ...errors import BundleError, IRevNetError, Terminated, shown
from .triton_client import DEFAULT_TIMEOUT_S

if TYPE_CHECKING:
    from ..bundle import Bundle


class InputError(IRevNetError):
    """A feed that does not fit the graph: wrong name, dtype, shape or non-finite values."""


class OptionNotTaken(IRevNetError):
    """An option given to a backend that does not run with it (`-b openvino --provider cuda`)."""


@dataclass(frozen=True)
class BackendOptions:
    """What a user may ask of a backend. Each backend takes the fields it runs with (Backend.takes);
    one left at its default is not asked for, so any backend opens with the defaults."""

    providers: tuple[str, ...] | None = None  # onnxruntime: providers in order (default: all available, best first)
    threads: int | None = None  # onnxruntime, openvino, torch: intra-op threads (default: the runtime's)
    device: str = "auto"  # torch: cpu | cuda | auto
    checkpoint: str | None = None  # torch: the checkpoint to run (default: the one the manifest names)
    server: str | None = None  # triton: the server's address, http://HOST:PORT or grpc://HOST:PORT
    server_timeout_s: float = DEFAULT_TIMEOUT_S  # triton: the deadline of each call, over its whole answer

    def __post_init__(self) -> None:
        # a list from the command line; an empty one asks for nothing
        object.__setattr__(self, "providers", tuple(self.providers) if self.providers else None)

    def given(self) -> list[str]:
        """The fields set away from their defaults, in declaration order."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]

    def only(self, names: Iterable[str]) -> BackendOptions:
        """These options with every field but `names` at its default: one backend's share of options
        given for several at once."""
        keep = set(names)
        return BackendOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in keep})


def flag(option: str) -> str:
    """The command line's name of a BackendOptions field."""
    return "--provider" if option == "providers" else f"--{option.replace('_', '-')}"


class GraphFailed(BundleError):
    """A graph the runtime accepted failed while running: the bundle is malformed (a bug of a
    runtime is reported the same way, with the runtime's own first line)."""


def unsupported(kind: str, precision: str) -> str | None:
    """Why backend `kind` cannot run a bundle of `precision` (None: it can). verify and bench skip
    such pairs when given several bundles; alone, the backend refuses with this message."""
    if kind == "torch" and precision == Precision.int8:
        return ("the torch backend has no int8 path (it would run fp32 and call it int8); run int8 bundles on "
                "onnxruntime, openvino or tensorrt")
    if kind == "torch" and precision == Precision.plan:
        return ("the torch backend runs one precision for every block; run a bundle with a precision plan on "
                "onnxruntime, openvino or tensorrt")
    if kind == "openvino-bf16" and precision != Precision.mixed:
        return (f"openvino-bf16 runs F of a mixed bundle in bf16; in a {precision} bundle OpenVINO would compute the "
                f"coupling in bf16 too (round trip ~2e-3); export with --precision mixed")
    return None


_RUNS_IN_FLIGHT: dict[int, Callable[[], None]] = {}  # id -> how to stop that run
_STOP_REQUESTED = threading.Event()


def interrupt_runs() -> None:
    """Asks every runtime call in flight to stop now (safe from any thread; the SIGTERM watcher
    of the CLI calls it). The interrupted call raises; later calls run normally."""
    _STOP_REQUESTED.set()
    for stop in list(_RUNS_IN_FLIGHT.values()):
        stop()


@contextlib.contextmanager
def interruptible(stop: Callable[[], None]):
    """Registers `stop` (which makes the runtime call return early) for the call in the block."""
    key = id(stop)
    _RUNS_IN_FLIGHT[key] = stop
    try:
        yield
    finally:
        del _RUNS_IN_FLIGHT[key]


class Backend(ABC):
    """One graph on one runtime (Polygraphy's runner shape: activate, infer, deactivate).

    Subclasses open a bundle's graph in `for_bundle`, reading only the options they name in `takes`,
    set `inputs`/`outputs` (name, shape with contract.BATCH_DIM for the batch, dtype) and implement
    `_infer` and `close`. `infer` validates the feed first, so every runtime refuses bad input
    with the same one-line messages.
    """

    name = "backend"
    takes: ClassVar[frozenset[str]] = frozenset()  # the BackendOptions fields for_bundle runs with
    origin = "the graph"  # where the graph came from, for messages ("BUNDLE: forward")
    runtime_errors: tuple[type[BaseException], ...] = ()  # the runtime's exceptions of a failed run
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    max_batch: int | None = None
    last_device_ms: float | None = None  # GPU time of the last infer (CUDA events), where measured

    @classmethod
    @abstractmethod
    def for_bundle(cls, bundle: Bundle, graph: str, options: BackendOptions) -> Backend:
        """Opens `graph` (forward, inverse, forward_blocks, inverse_blocks) of an opened bundle.

        Args:
            options: what was asked of the backend; open_backend has refused any option given
                that is not in `takes`, so the others are at their defaults.
        """

    def __enter__(self) -> Backend:  # noqa: PYI034 - typing.Self needs Python 3.11; the package supports 3.10
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def infer(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Runs the graph.

        Args:
            feeds: input name -> float32 array of the graph's shape (any batch size in range).
            outputs: names to return (default all).
        Returns:
            output name -> array.
        """
        self.check_feeds(feeds)
        _STOP_REQUESTED.clear()
        try:
            return self._infer(feeds, outputs)
        except self.runtime_errors as e:
            if _STOP_REQUESTED.is_set():
                raise Terminated from None  # the run was interrupted (SIGTERM), it did not fail
            raise GraphFailed(f"{self.origin}: {self.name} failed running it ({self._error_line(e)}); the graph is malformed, "
                              f"re-export the bundle") from None

    def infer_in_batches(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """`infer` over feeds of any length, in slices of the graph's largest batch, the outputs
        concatenated (what verify, the served model and the demo run their whole inputs with)."""
        n = len(next(iter(feeds.values())))
        step = self.max_batch or n
        parts = [self.infer({name: a[i:i + step] for name, a in feeds.items()}, outputs) for i in range(0, n, step)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _error_line(self, e: BaseException) -> str:
        """The runtime's exception in one short line."""
        return shown(e)

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]: ...

    def close(self) -> None:  # an optional hook, so not abstract
        """Releases the runtime's resources; the default holds none."""

    def check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        """Raises InputError, one line, when a feed is not what the graph takes (names, dtype,
        shape, batch range, finite values); the servers check each request of a batch with it."""
        expected = {i["name"]: i for i in self.inputs}
        if set(feeds) != set(expected):
            raise InputError(f"{self.name}: inputs {sorted(feeds)} given, the graph takes {sorted(expected)}")
        for name, array in feeds.items():
            spec = expected[name]
            if not isinstance(array, np.ndarray) or array.dtype != np.dtype(spec["dtype"]):
                got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
                raise InputError(f"{self.name}: input {name!r} must be {spec['dtype']}, got {got}; convert it first")
            shape = spec["shape"]
            if array.ndim != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(shape, array.shape)):
                raise InputError(
                    f"{self.name}: input {name!r} has shape {list(array.shape)}, the graph takes "
                    f"{[BATCH_DIM if isinstance(d, str) else d for d in shape]}"
                )
            n = array.shape[0]
            if n < 1 or (self.max_batch is not None and n > self.max_batch):
                raise InputError(f"{self.name}: batch {n} is outside the exported range 1..{self.max_batch}")
            if not np.all(np.isfinite(array)):
                raise InputError(f"{self.name}: input {name!r} contains NaN or Inf; check the data feeding it")
