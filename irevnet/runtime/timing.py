"""What one bench measurement is, written once for the in-process bench (bench.py) and the served
load test (load_test.py): latency statistics, the record of each round, the entry of a report,
and the inputs both feed (the bundle's reference samples tiled to the batch size).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..contract import INVERSE
from ..model.config import IRevNetConfig

if TYPE_CHECKING:
    from .backends import Backend
    from .load_test import ServerSplit
    from .reference import ReferenceSamples

K = TypeVar("K")


def conv_flops(config: IRevNetConfig) -> int:
    """Multiply-adds x 2 of the convolutions of one image's pass (forward and inverse are equal:
    each evaluates every F once). The head (BN, pooling, linear) is < 0.1% and left out."""
    _, h, w = config.in_shape
    h, w = h // (config.init_ds or 1), w // (config.init_ds or 1)
    total = 0
    for spec in config.block_specs():
        inner = spec.out_ch // config.mult
        h, w = h // spec.stride, w // spec.stride  # F's first convolution is strided
        total += 2 * 9 * h * w * (spec.f_in * inner + inner * inner + inner * spec.out_ch)
    return total


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(runners: dict[K, Backend], feeds: dict[str, np.ndarray], *, warmup_s: float, duration_s: float,
              counts: list[int | None], on_round: Callable[[K, int], None] = lambda key, r: None,
              ) -> dict[K, list[tuple[list[float], list[float]]]]:
    """Times each runner on the same feeds in alternating rounds, so that all of them see the same
    machine: each is warmed up for `warmup_s` first (one call at least; none where it is 0: a
    runner that has run already), then round r runs every runner in turn (the
    order rotated by r: none is always first) for `counts[r]` calls, or, where that is None, as
    many as fit in duration_s / len(counts) seconds (at least one).

    Returns:
        runner key -> per round, (host latencies in s, device times in ms where the backend
        measures them).
    """
    calls = {key: functools.partial(b.infer, feeds) for key, b in runners.items()}
    for run in calls.values():
        deadline = time.perf_counter() + warmup_s
        if warmup_s > 0:
            run()
        while time.perf_counter() < deadline:
            run()
    keys = list(calls)
    measured: dict[K, list[tuple[list[float], list[float]]]] = {key: [] for key in keys}
    for r, count in enumerate(counts):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            latencies, device_ms = [], []
            start, backend = time.perf_counter(), runners[key]
            while not latencies or (len(latencies) < count if count else
                                    time.perf_counter() - start < duration_s / len(counts)):
                latencies.append(timed(calls[key]))
                if backend.last_device_ms is not None:
                    device_ms.append(backend.last_device_ms)
            measured[key].append((latencies, device_ms))
            on_round(key, r)
    return measured


def tiled_input(reference: ReferenceSamples, direction: str, batch: int) -> np.ndarray:
    """What a measurement of `direction` feeds: the reference samples it takes (z for the inverse,
    the images for the forward and the round trip) repeated to `batch` of them, contiguous.

    Args:
        reference: the bundle's reference samples, Bundle.reference(REFERENCE_IMAGES, Z).
    Returns:
        (batch, *sample shape) float32.
    """
    source = reference.z if direction == INVERSE else reference.images
    return np.ascontiguousarray(np.resize(source, (batch, *source.shape[1:])))


@dataclass(frozen=True)
class LatencyStats:
    """Host-side latency over every measured call, trtexec's summary, and the throughput."""

    iterations: int
    min_ms: float
    median_ms: float
    mean_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    images_per_s: float  # over the whole measurement (a served load: all its clients together)

    @classmethod
    def of(cls, latencies_s: list[float], batch: int) -> LatencyStats:
        """The statistics of calls of `batch` images each that took `latencies_s` seconds."""
        ms = np.array(latencies_s) * 1e3
        return cls(
            iterations=len(ms), min_ms=float(ms.min()), median_ms=float(np.median(ms)), mean_ms=float(ms.mean()),
            p90_ms=float(np.percentile(ms, 90)), p95_ms=float(np.percentile(ms, 95)),
            p99_ms=float(np.percentile(ms, 99)), max_ms=float(ms.max()),
            images_per_s=float(batch * len(ms) / ms.sum() * 1e3),
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Round:
    """One round of a measurement (a bench round, or one client of a served load)."""

    runs: int
    median_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, latencies_s: list[float]) -> Round:
        return cls(len(latencies_s), float(np.median(latencies_s) * 1e3), float(min(latencies_s) * 1e3),
                   float(max(latencies_s) * 1e3))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class BenchEntry:
    """One (bundle, backend, direction, batch) measurement: latency statistics over every round,
    and its speed relative to the baseline measured in the same rounds."""

    backend: str  # what ran, as the backend labels itself (onnxruntime-cpu, torch[cpu], ...)
    kind: str  # the backend's registry name
    bundle: str
    precision: str
    direction: str
    batch: int
    stats: LatencyStats
    gflops: float
    rounds: list[Round]
    device_median_ms: float | None = None  # GPU backends: CUDA-event time
    baseline: str | None = None
    speedup: float | None = None  # baseline median / this median
    speedup_rounds: list[float] | None = None
    noisy: bool = False  # the rounds' ratios spread over bench.NOISY_SPREAD
    concurrency: int = 1  # clients sending at once (a served model under load)
    server: ServerSplit | None = None  # a served model under load: the server's own split of the time

    def __str__(self) -> str:
        noisy = " (noisy)" if self.noisy else ""
        ratio = "" if self.speedup is None else f", {self.speedup:.2f}x{noisy} vs {self.baseline}"
        s = self.stats
        return (f"{self.backend} {self.precision} {self.direction} batch {self.batch}: median {s.median_ms:.2f} ms, "
                f"p99 {s.p99_ms:.2f} ms, {s.images_per_s:,.1f} images/s{ratio}")

    def to_dict(self) -> dict[str, Any]:
        out = {"backend": self.backend, "kind": self.kind, "bundle": self.bundle, "precision": self.precision,
               "direction": self.direction, "batch": self.batch, **self.stats.to_dict(), "gflops": self.gflops,
               "rounds": [r.to_dict() for r in self.rounds]}
        if self.device_median_ms is not None:
            out["device_median_ms"] = self.device_median_ms
        out |= {"baseline": self.baseline, "speedup": self.speedup, "speedup_rounds": self.speedup_rounds,
                "noisy": self.noisy, "concurrency": self.concurrency}
        if self.server is not None:
            out["server_ms"] = self.server.to_dict()
        return out
