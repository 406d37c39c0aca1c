"""`irevnet invert`: a split reconstructed from z by a bundle's inverse (or a checkpoint's model),
the reference's `invert_ilsvrc-2012.sh` on the deployed graphs: each image and its reconstruction
as PNGs under OUT/originals/ and OUT/reconstructions/ at its path in the split, a grid of the
first ones, and the records and summary of `irevnet evaluate`, with the same streaming, resume
and shards. An OUT ending in .png writes only the grid of the first --samples images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import validation as check
from ..errors import IRevNetError
from .engine import open_target
from .run import EvaluateOptions, EvaluationReport, evaluate


@dataclass(frozen=True)
class InvertOptions:
    target: str | None = None  # a bundle folder, or a checkpoint file (run on torch)
    checkpoint: str | None = None  # -c: a checkpoint, as a target
    dataset: str = "digits"
    out: str = "inversion"  # a folder (PNGs and grid.png), or a .png: the grid alone
    split: str = "val"
    limit: int | None = None  # the first N images of the split
    samples: int = 8  # images in the grid
    projection: bool = True  # a checkpoint of an injective model: the inverse's range projection
    backend: str = "onnxruntime"
    records: str | None = None
    resume: bool = False
    shard: str | None = None
    strict: bool = False
    batch_size: int = 8
    chunk_size: int = 256
    workers: int = 2
    threads: int | None = None
    device: str = "auto"
    image_size: int | None = None

    def __post_init__(self) -> None:
        check.paths(self, "out")
        check.integer("samples", self.samples, 1, 1024)
        self.evaluation()  # every option the evaluation takes, checked by it

    @property
    def grid_only(self) -> bool:
        return self.out.lower().endswith(".png")

    def evaluation(self) -> EvaluateOptions:
        names = ("target", "checkpoint", "dataset", "split", "projection", "backend", "records", "resume", "shard",
                 "strict", "batch_size", "chunk_size", "workers", "threads", "device", "image_size")
        limit = min(self.limit or self.samples, self.samples) if self.grid_only else self.limit
        return EvaluateOptions(**{n: getattr(self, n) for n in names}, limit=limit, round_trip=True)


@dataclass
class InversionReport:
    evaluation: EvaluationReport
    grid: str
    images_written: int  # PNG pairs written by this run (0 for a grid alone)
    folder: str | None = field(default=None)

    def __str__(self) -> str:
        where = f"; originals and reconstructions under {self.folder}" if self.folder else ""
        return f"{self.evaluation}; grid {self.grid}{where}"

    def to_dict(self) -> dict[str, Any]:
        return self.evaluation.to_dict() | {"grid": self.grid, "images_written": self.images_written,
                                            "folder": self.folder}


def invert(opts: InvertOptions, progress=lambda *_: None) -> InversionReport:
    """Reconstructs the split (see the module docstring).

    Raises:
        IRevNetError: as `irevnet evaluate`, or an output folder that is a file.
    """
    from ..io.splits import open_split
    from .engine import Engine
    from .grids import reconstruct, save_pair_pngs

    out = Path(opts.out)
    if not opts.grid_only and out.exists() and not out.is_dir():
        raise IRevNetError(f"{out} is a file: give a folder for the PNGs (or a .png for the grid alone)")
    evaluation = opts.evaluation()
    target = open_target(evaluation)
    split = open_split(evaluation.dataset, evaluation.split, target.in_shape, evaluation.limit)
    written = [0]

    def on_batch(items, images, reconstructions) -> None:
        if not opts.grid_only:
            save_pair_pngs(items, images, reconstructions, split, out)
            written[0] += len(items)

    report = evaluate(evaluation, progress, on_batch, target=target, split=split)
    readable = {u["index"] for u in report.summary.unreadable}
    first = [it for it in split.items if it.index not in readable][:opts.samples]
    with Engine(target, split, round_trip=True, batch_size=min(opts.batch_size, len(first)), workers=0,
                strict=True) as engine:
        originals, reconstructions = reconstruct(engine, first)
    from ..io.images import save_inversion

    grid = out if opts.grid_only else out / "grid.png"
    save_inversion(originals, reconstructions, split.mean, split.std, grid)
    return InversionReport(report, str(grid), written[0], None if opts.grid_only else str(out))
