"""Comparisons of arrays with a verdict, and the tolerance table they are judged against.

numpy only: runs where the engines run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..contract import Precision
from ..metrics import rel_l2, top1_agreement


@dataclass(frozen=True)
class Comparison:
    """How far `actual` is from `expected`; truthy when the relative L2 error is within tolerance.

    Polygraphy-style: the numbers, the worst element, and a verdict against a named tolerance.
    """

    name: str
    max_abs: float
    rel_l2: float
    worst_index: tuple[int, ...]  # where |actual - expected| is largest
    worst_actual: float
    worst_expected: float
    tolerance: float | None = None  # largest rel_l2 that passes; None: reported, not judged

    def __bool__(self) -> bool:
        if not math.isfinite(self.rel_l2):
            return False
        return self.tolerance is None or self.rel_l2 <= self.tolerance

    def __str__(self) -> str:
        limit = "" if self.tolerance is None else f" (tolerance {self.tolerance:.0e}: {'pass' if self else 'FAIL'})"
        return f"{self.name}: rel. L2 {self.rel_l2:.2e}, max abs {self.max_abs:.2e} at {list(self.worst_index)}{limit}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["worst_index"] = list(self.worst_index)
        d["passed"] = bool(self)
        return d


@dataclass(frozen=True)
class Agreement:
    """The share of samples whose arg-max class two sets of logits agree on; truthy at >= `minimum`."""

    name: str
    value: float  # fraction in [0, 1]
    minimum: float

    @classmethod
    def of(cls, name: str, logits: np.ndarray, reference: np.ndarray, minimum: float) -> Agreement:
        return cls(name, top1_agreement(logits, reference), minimum)

    def __bool__(self) -> bool:
        return self.value >= self.minimum

    def __str__(self) -> str:
        return f"{self.name}: {self.value:.3f} (at least {self.minimum}: {'pass' if self else 'FAIL'})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "min": self.minimum, "passed": bool(self)}


def compare(name: str, actual: np.ndarray, expected: np.ndarray, tolerance: float | None = None) -> Comparison:
    """Compares two arrays of the same shape in float64.

    rel_l2 = ||actual - expected|| / ||expected|| (the denominator is at least 1e-30); NaN or Inf
    anywhere makes rel_l2 infinite, which fails any tolerance.
    """
    if actual.shape != expected.shape:
        raise ValueError(f"{name}: shape {actual.shape} != expected {expected.shape}")
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    diff = np.abs(a - e)
    if not np.all(np.isfinite(diff)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(diff))[0])
        return Comparison(name, math.inf, math.inf, bad, float(a[bad]), float(e[bad]), tolerance)
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape)) if diff.size else ()
    rel = rel_l2(a, e)
    return Comparison(
        name, float(diff.max()) if diff.size else 0.0, rel, worst,
        float(a[worst]) if diff.size else 0.0, float(e[worst]) if diff.size else 0.0, tolerance,
    )


@dataclass(frozen=True)
class Tolerance:
    """What an exported artifact must achieve against the PyTorch fp32 model."""

    logits: float  # largest relative L2 error of the logits
    z: float  # largest relative L2 error of z
    round_trip: float  # largest relative L2 error of inverse(forward(x)) against x
    top1: float  # smallest fraction of samples whose arg-max class agrees with PyTorch
    reason: str
    # z made elsewhere (PyTorch fp32, another backend) inverted by this bundle; default round_trip
    cross_round_trip: float | None = None

    @property
    def cross(self) -> float:
        return self.round_trip if self.cross_round_trip is None else self.cross_round_trip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# One table for export, verify and the tests. The numbers were measured on trained digits models
# and irevnet-301 with random weights (README, "Precision"); each tolerance leaves ~10x headroom.
TOLERANCES = {
    Precision.fp32: Tolerance(
        logits=1e-4, z=1e-4, round_trip=1e-5, top1=1.0,
        reason="folded BatchNorm and other conv algorithms reorder fp32 sums: ~1e-7 per layer, "
        "measured <= 2e-6 after 100 blocks; round trip measured <= 1.2e-6 (irevnet-301) and ~2e-7 (trained digits)",
    ),
    Precision.mixed: Tolerance(
        logits=2e-2, z=2e-2, round_trip=1e-2, top1=0.75,
        reason="F in fp16 (11-bit significand, ~5e-4 per rounding): outputs drift ~1e-3; the round trip stays "
        "near fp32 only while forward and inverse evaluate F to the same bits, else ~5e-4",
    ),
    Precision.int8: Tolerance(
        logits=5e-2, z=1e-1, round_trip=5e-2, top1=0.75, cross_round_trip=1e-1,
        reason="F's convolutions in int8 (7-bit weights per channel, activation ranges by MSE calibration): measured "
        "logits 0.9-1.4e-2 and z 1.8-2.4e-2 from fp32 on five trained digits models (both families, seeds 0-2 and "
        "0-1), 4.6e-3 and 1.0e-2 on irevnet-301 (random weights), on an AVX2 CPU. 7-bit weights keep the integer "
        "kernels exact with or without VNNI, so ONNX Runtime and OpenVINO agree. The exact coupling keeps the round trip at the grid's rounding",
    ),
    Precision.fp16: Tolerance(
        logits=2e-2, z=2e-2, round_trip=1e-2, top1=0.75,
        reason="everything in fp16: ~5e-4 per rounding, measured round trip ~7e-4 (trained digits)",
    ),
}
