"""Comparisons of arrays with a verdict, the checks export and verify build from them (round trip,
parity with PyTorch), and the one tolerance table they are judged against.

numpy only: runs where the engines run. Each result is an object: truthy when it passes, printable
in one line, and `to_dict()` for `--json` and the manifest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contract import FORWARD, INVERSE, LOGITS, Precision, Z
from ..io.images import reconstruction_metrics
from ..metrics import rel_l2, top1_accuracy, top1_agreement

if TYPE_CHECKING:
    from .manifest import Normalization


@dataclass(frozen=True)
class Comparison:
    """How far `actual` is from `expected`; truthy when the relative L2 error is within tolerance
    (the one pass rule: export, verify, the demo and the tests judge by it).

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

# With the exact coupling (export/coupling.py) forward and inverse add and subtract the same bits,
# so the round trip is the input's rounding to the coupling grid, whatever the precision of F.
EXACT_COUPLING_ROUND_TRIP = 1e-5  # measured 5e-7 on the digits; ~10x headroom as the table


def tolerance_for(precision: Precision | str, exact_coupling_exponent: int | None = None) -> Tolerance:
    """The tolerances an export of `precision` is judged against (the table's, tightened for the
    round trip when the bundle has the exact coupling on the grid 2^-exponent)."""
    tol = TOLERANCES[Precision(precision)]
    if exact_coupling_exponent is None:
        return tol
    return replace(
        tol, round_trip=EXACT_COUPLING_ROUND_TRIP, cross_round_trip=tol.cross,
        reason=f"{tol.reason}. Exact coupling: forward and inverse see the same bits, the round trip is the input's "
        f"rounding to the grid 2^-{exact_coupling_exponent} (measured 5e-7 on the digits)",
    )


# -- the checks of export and verify ------------------------------------------------------------


@dataclass(frozen=True)
class RoundTrip:
    """x -> forward -> z -> inverse -> x_hat against x; truthy when within its tolerance.

    `forward` made z and `inverse` inverted it: the same backend, another one, or PyTorch (a z
    made elsewhere, judged with the bundle's cross tolerance).
    """

    precision: str
    forward: str  # who made z: a backend's label, or "PyTorch fp32"
    inverse: str  # the backend's label that inverted it
    kind: str  # the registry name of the backend that inverted z (onnxruntime, torch, ...)
    comparison: Comparison  # x_hat vs x in normalised space
    max_abs_pixels: float  # after undoing the normalisation (pixel range 1.0)
    psnr_db: float | None  # None: exact
    worst_sample: int  # the sample with the largest relative error

    @classmethod
    def measure(cls, precision: str, forward: str, inverse: str, kind: str, x_hat: np.ndarray, x: np.ndarray,
                normalization: Normalization, tolerance: float) -> RoundTrip:
        pixels = reconstruction_metrics(x, x_hat, normalization.mean, normalization.std)
        per_sample = [rel_l2(a, b) for a, b in zip(x_hat, x)]
        return cls(precision, forward, inverse, kind, compare("round trip", x_hat, x, tolerance), pixels["max_abs"],
                   pixels["psnr_db"], int(np.argmax(per_sample)))

    @property
    def rel_l2(self) -> float:
        return self.comparison.rel_l2

    @property
    def tolerance(self) -> float | None:
        return self.comparison.tolerance

    def __bool__(self) -> bool:
        return bool(self.comparison)

    def __str__(self) -> str:
        psnr = "exact" if self.psnr_db is None else f"{self.psnr_db:.1f} dB"
        return (f"{self.precision} round trip, z from {self.forward} inverted by {self.inverse}: rel. L2 {self.rel_l2:.2e}, "
                f"{psnr} (tolerance {self.tolerance:.0e}: {'pass' if self else 'FAIL'})")

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, FORWARD: self.forward, INVERSE: self.inverse, "kind": self.kind,
                "rel_l2": self.rel_l2,
                "max_abs_pixels": self.max_abs_pixels, "psnr_db": self.psnr_db, "worst_sample": self.worst_sample,
                "tolerance": self.tolerance, "passed": bool(self)}


@dataclass(frozen=True)
class Parity:
    """A backend's logits and z against PyTorch fp32's for the same inputs; truthy when all three
    checks pass (logits and z within tolerance, top-1 agreement at least its minimum)."""

    precision: str
    backend: str
    logits: Comparison
    z: Comparison
    agreement: Agreement
    top1_backend: float | None = None  # percent, with labels
    top1_pytorch: float | None = None

    @classmethod
    def measure(cls, precision: str, backend: str, out: dict[str, np.ndarray], logits: np.ndarray, z: np.ndarray,
                tol: Tolerance, labels: np.ndarray | None = None) -> Parity:
        accuracy = (top1_accuracy(out[LOGITS], labels), top1_accuracy(logits, labels)) if labels is not None else (None, None)
        return cls(precision, backend, compare(LOGITS, out[LOGITS], logits, tol.logits), compare(Z, out[Z], z, tol.z),
                   Agreement.of("top-1 agreement", out[LOGITS], logits, tol.top1), *accuracy)

    @property
    def checks(self) -> list[Comparison | Agreement]:
        return [self.logits, self.z, self.agreement]

    def __bool__(self) -> bool:
        return all(self.checks)

    def __str__(self) -> str:
        return f"{self.precision} on {self.backend} vs PyTorch fp32: " + "; ".join(map(str, self.checks))

    def to_dict(self) -> dict[str, Any]:
        entry = {"precision": self.precision, "backend": self.backend, LOGITS: self.logits.to_dict(), Z: self.z.to_dict(),
                 "top1_agreement": self.agreement.value, "top1_agreement_min": self.agreement.minimum, "passed": bool(self)}
        if self.top1_backend is not None:
            entry |= {"top1_backend": self.top1_backend, "top1_pytorch": self.top1_pytorch,
                      "top1_difference": self.top1_backend - self.top1_pytorch}
        return entry
