"""The summary of an evaluation, computed from its records by one code path, whether the run was
whole, resumed or sharded: the same records give the same summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import LOGITS
from ..errors import IRevNetError
from .records import Rows, RunIdentity, batches


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
    def of(cls, identity: RunIdentity, files: list[tuple[Path, Any]],
           against: tuple[RunIdentity, Path, Any] | None = None) -> Summary:
        """From records files (open_records' files, in order), read a batch of rows at a time: what
        stays in memory is a few numbers per image, never the logits of the split."""
        unreadable: list[dict[str, Any]] = []
        hits1 = hits5 = 0
        loss, rel, psnr = [], [], []
        for batch in batches(files, ["index", "path", "status", "error", "label", "top5", "loss", "round_trip_rel_l2",
                                     "psnr_db"]):
            ok = np.asarray(batch.column("status").to_numpy(zero_copy_only=False)) == "ok"
            for i in np.flatnonzero(~ok):
                unreadable.append({"index": batch.column("index")[i].as_py(), "path": batch.column("path")[i].as_py(),
                                   "error": batch.column("error")[i].as_py()})
            if not ok.any():
                continue
            labels = batch.column("label").to_numpy()[ok]
            top5 = np.stack(batch.column("top5").filter(ok).to_numpy(zero_copy_only=False))
            hits1 += int((top5[:, 0] == labels).sum())
            hits5 += int((top5 == labels[:, None]).any(axis=1).sum())
            loss.append(batch.column("loss").to_numpy(zero_copy_only=False)[ok])
            rel.append(batch.column("round_trip_rel_l2").to_numpy(zero_copy_only=False)[ok])
            psnr.append(batch.column("psnr_db").to_numpy(zero_copy_only=False)[ok])
        images = sum(len(v) for v in loss)
        if not images:
            raise IRevNetError(f"no image of {identity.dataset}'s {identity.split} split could be read "
                               f"({unreadable[0]['error'] if unreadable else 'none listed'})")
        rel_all = np.concatenate(rel).astype(np.float64)
        psnr_all = np.concatenate(psnr).astype(np.float64)
        psnr_finite = psnr_all[np.isfinite(psnr_all)]
        return cls(
            identity=identity, images=images, unreadable=unreadable,
            top1=100.0 * hits1 / images, top5=100.0 * hits5 / images,
            loss=float(np.mean(np.concatenate(loss).astype(np.float64))),
            round_trip=_quantiles(rel_all) if identity.round_trip else None,
            psnr_db=({"median": float(np.median(psnr_finite)), "min": float(psnr_finite.min())}
                     if identity.round_trip and psnr_finite.size else None),
            agreement=_agreement(identity, files, against) if against else None,
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


def _agreement(identity: RunIdentity, files: list[tuple[Path, Any]], against: tuple[RunIdentity, Path, Any]) -> Agreement:
    """Both runs' records side by side, a batch of rows at a time (both hold every image of the
    same split, in index order)."""
    other, other_path, other_file = against
    comparable(identity, other)
    columns = ["index", "path", "status", "label", LOGITS]
    theirs = Rows(batches([(other_path, other_file)], columns))
    same, both, changed, drift = 0, 0, [], []
    for mine in batches(files, columns):
        there = theirs.take(mine.num_rows)
        index = mine.column("index").to_numpy()
        if there is None or there.num_rows != mine.num_rows or not np.array_equal(there.column("index").to_numpy(), index):
            raise IRevNetError(f"{other_path} does not hold the images of this run in its order; compare a whole run "
                               f"over the same split")
        if mine.column("path").to_pylist() != there.column("path").to_pylist():
            raise IRevNetError("--against lists other files at the same indices; compare runs over the same split")
        ok = ((np.asarray(mine.column("status").to_numpy(zero_copy_only=False)) == "ok")
              & (np.asarray(there.column("status").to_numpy(zero_copy_only=False)) == "ok"))
        if not ok.any():
            continue
        rows = np.flatnonzero(ok)
        a = np.stack(mine.column(LOGITS).filter(ok).to_numpy(zero_copy_only=False)).astype(np.float64)
        b = np.stack(there.column(LOGITS).filter(ok).to_numpy(zero_copy_only=False)).astype(np.float64)
        top_a, top_b = a.argmax(axis=1), b.argmax(axis=1)
        drift.append(np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30))
        same += int((top_a == top_b).sum())
        both += len(rows)
        labels = mine.column("label").to_numpy()
        paths = mine.column("path")
        changed += [{"index": int(index[r]), "path": paths[int(r)].as_py(), "label": int(labels[r]),
                     "top1": int(top_a[k]), "against_top1": int(top_b[k])}
                    for k, r in enumerate(rows) if top_a[k] != top_b[k]]
    if theirs.take(1) is not None:
        raise IRevNetError(f"{other_path} holds more rows than this run; compare a whole run over the same split")
    return Agreement(f"{other.target} {other.precision} on {other.backend}", both, same / both if both else 0.0,
                     changed, _quantiles(np.concatenate(drift)) if drift else None)



def comparable(identity: RunIdentity, other: RunIdentity) -> None:
    """Refuses --against records of another model or of other images, naming what differs."""
    if other.shard is not None:
        raise IRevNetError(f"--against records shard {other.shard[0]}/{other.shard[1]} of a run; merge its shards "
                           f"first (irevnet evaluate --merge A --merge B ... --records OUT)")
    if other.checkpoint_sha256 != identity.checkpoint_sha256:
        raise IRevNetError(f"--against records a run of another checkpoint (sha256 {other.checkpoint_sha256[:16]}..., "
                           f"this run's {identity.checkpoint_sha256[:16]}...); compare runs of one model")
    if (other.dataset, other.split, other.images) != (identity.dataset, identity.split, identity.images):
        raise IRevNetError(f"--against records {other.dataset} ({other.split}, {other.images} images), this run "
                           f"{identity.dataset} ({identity.split}, {identity.images} images); compare the same images")
