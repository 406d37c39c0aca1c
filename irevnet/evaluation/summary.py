"""The summary of an evaluation, computed from its records by one code path, whether the run was
whole, resumed or sharded: the same records give the same summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..contract import LOGITS
from ..errors import IRevNetError
from .records import RunIdentity


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    return {"median": float(np.median(values)), "p99": float(np.percentile(values, 99)), "max": float(values.max())}


@dataclass(frozen=True)
class Agreement:
    """This run's top-1 against another run's on the same images (its --against records)."""

    against: str  # the other run: its target, precision and backend
    images: int  # read by both runs
    top1: float  # fraction of those whose top-1 class is the same
    changed: list[dict[str, Any]]  # index, path, label, top1 here, top1 there: every image whose top-1 changed
    drift: dict[str, float]  # logits rel. L2 to the other run's, per image: median, p99, max

    def to_dict(self) -> dict[str, Any]:
        return {"against": self.against, "images": self.images, "top1": self.top1, "changed": len(self.changed),
                "changed_images": self.changed, "logits_drift": self.drift}


@dataclass(frozen=True)
class Summary:
    """What an evaluation found over its split: accuracy, the round trip's exactness, what could
    not be read and, with --against, the agreement with another run."""

    identity: RunIdentity
    images: int  # read and evaluated
    unreadable: list[dict[str, Any]]  # index, path, error of each file that could not be read
    top1: float  # percent of the images read
    top5: float
    loss: float  # mean cross-entropy of the label
    round_trip: dict[str, float] | None  # rel. L2 of inverse(forward(x)) to x, per image: median, p99, max
    psnr_db: dict[str, float] | None  # per image: median and min (an exact image has none: infinite)
    agreement: Agreement | None = None
    images_per_s: float | None = field(default=None, compare=False)  # of this run (not from the records)

    @classmethod
    def of(cls, identity: RunIdentity, table, against: tuple[RunIdentity, Any] | None = None) -> Summary:
        ok = np.asarray(table.column("status").to_numpy(zero_copy_only=False)) == "ok"
        index = table.column("index").to_numpy()
        paths = table.column("path").to_pylist()
        errors = table.column("error").to_pylist()
        unreadable = [{"index": int(index[i]), "path": paths[i], "error": errors[i]} for i in np.flatnonzero(~ok)]
        if not ok.any():
            raise IRevNetError(f"no image of {identity.dataset}'s {identity.split} split could be read "
                               f"({unreadable[0]['error'] if unreadable else 'none listed'})")
        labels = table.column("label").to_numpy()[ok]
        top5 = np.stack(table.column("top5").filter(ok).to_numpy(zero_copy_only=False))
        rel = table.column("round_trip_rel_l2").to_numpy(zero_copy_only=False)[ok].astype(np.float64)
        psnr = table.column("psnr_db").to_numpy(zero_copy_only=False)[ok].astype(np.float64)
        psnr_finite = psnr[np.isfinite(psnr)]
        return cls(
            identity=identity, images=int(ok.sum()), unreadable=unreadable,
            top1=100.0 * float(np.mean(top5[:, 0] == labels)),
            top5=100.0 * float(np.mean((top5 == labels[:, None]).any(axis=1))),
            loss=float(np.mean(table.column("loss").to_numpy(zero_copy_only=False)[ok].astype(np.float64))),
            round_trip=_quantiles(rel) if identity.round_trip else None,
            psnr_db=({"median": float(np.median(psnr_finite)), "min": float(psnr_finite.min())}
                     if identity.round_trip and psnr_finite.size else None),
            agreement=_agreement(identity, table, against) if against else None,
        )

    def __str__(self) -> str:
        line = (f"{self.images:,} images of {self.identity.dataset} ({self.identity.split}): top-1 {self.top1:.3f}%, "
                f"top-5 {self.top5:.3f}%, loss {self.loss:.4f}")
        if self.round_trip:
            line += f", round trip rel. L2 median {self.round_trip['median']:.2e}, max {self.round_trip['max']:.2e}"
        if self.unreadable:
            line += f"; {len(self.unreadable)} unreadable"
        if self.agreement:
            line += f"; top-1 agreement {self.agreement.top1:.4f} with {self.agreement.against}"
        return line

    def to_dict(self) -> dict[str, Any]:
        out = {"images": self.images, "top1": self.top1, "top5": self.top5, "loss": self.loss,
               "unreadable": len(self.unreadable), "unreadable_files": self.unreadable,
               "round_trip": self.round_trip, "psnr_db": self.psnr_db,
               "agreement": self.agreement.to_dict() if self.agreement else None,
               "images_per_s": self.images_per_s}
        return out | {"run": {k: v for k, v in self.identity.__dict__.items()}}


def _agreement(identity: RunIdentity, table, against: tuple[RunIdentity, Any]) -> Agreement:
    other, other_table = against
    if other.checkpoint_sha256 != identity.checkpoint_sha256:
        raise IRevNetError(f"--against records a run of another checkpoint (sha256 {other.checkpoint_sha256[:16]}..., "
                           f"this run's {identity.checkpoint_sha256[:16]}...); compare runs of one model")
    if (other.dataset, other.split, other.images) != (identity.dataset, identity.split, identity.images):
        raise IRevNetError(f"--against records {other.dataset} ({other.split}, {other.images} images), this run "
                           f"{identity.dataset} ({identity.split}, {identity.images} images); compare the same images")
    mine = {int(i): k for k, i in enumerate(table.column("index").to_numpy())}
    theirs = {int(i): k for k, i in enumerate(other_table.column("index").to_numpy())}
    common = sorted(set(mine) & set(theirs))
    paths, other_paths = table.column("path").to_pylist(), other_table.column("path").to_pylist()
    if any(paths[mine[i]] != other_paths[theirs[i]] for i in common):
        raise IRevNetError("--against lists other files at the same indices; compare runs over the same split")
    ok = np.asarray(table.column("status").to_numpy(zero_copy_only=False)) == "ok"
    other_ok = np.asarray(other_table.column("status").to_numpy(zero_copy_only=False)) == "ok"
    both = [i for i in common if ok[mine[i]] and other_ok[theirs[i]]]
    a = np.stack(table.column(LOGITS).take([mine[i] for i in both]).to_numpy(zero_copy_only=False)).astype(np.float64)
    b = np.stack(other_table.column(LOGITS).take([theirs[i] for i in both]).to_numpy(zero_copy_only=False)).astype(np.float64)
    top_a, top_b = a.argmax(axis=1), b.argmax(axis=1)
    drift = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)
    labels = table.column("label").to_numpy()
    changed = [{"index": i, "path": paths[mine[i]], "label": int(labels[mine[i]]), "top1": int(top_a[k]),
                "against_top1": int(top_b[k])} for k, i in enumerate(both) if top_a[k] != top_b[k]]
    return Agreement(f"{other.target} {other.precision} on {other.backend}", len(both),
                     float(np.mean(top_a == top_b)), changed, _quantiles(drift))
