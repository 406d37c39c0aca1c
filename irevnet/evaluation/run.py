"""`irevnet evaluate`: a bundle (or a checkpoint) over a whole split, chunk by chunk.

The split is cut into chunks of `chunk_size` images (a multiple of the batch size, so a chunk is
always computed in the same batches, whoever computes it). Each finished chunk is written to
RECORDS.parts/ atomically; `resume` skips the chunks already there (after SIGKILL at most the
chunk in flight is redone); `shard=(i, n)` takes the chunks c with c % n == i, for a scheduler's
array jobs; Ray spreads the chunks over a cluster's workers (ray_runner.py). Whichever way the
chunks were computed, they are joined in chunk order into the same records, and the summary is
computed from those.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import validation as check
from ..errors import IRevNetError
from ..io.splits import SPLITS, Split, open_split
from ..runtime.backends import resolve_backend
from .engine import Engine, Target, open_target
from .records import (
    RunIdentity,
    done_chunks,
    join_parts,
    merge,
    open_records,
    part_path,
    parts_folder,
    write_table,
)
from .summary import Summary, comparable

_SHARD = re.compile(r"^(\d{1,6})/(\d{1,6})$")


@dataclass(frozen=True)
class EvaluateOptions:
    target: str | None = None  # a bundle folder, or a checkpoint file (run on torch)
    checkpoint: str | None = None  # -c: a checkpoint, as a target
    dataset: str = "digits"
    split: str = "val"
    limit: int | None = None  # the first N images of the split
    backend: str = "onnxruntime"  # for a bundle; triton with `server`
    server: str | None = None  # a live Triton server serving the bundle
    server_timeout_s: float = 60.0
    round_trip: bool = True  # the inverse graph too: z back to the image, per image
    records: str | None = None  # Parquet, one row per image
    resume: bool = False  # continue the run whose chunks are in RECORDS.parts/
    shard: str | None = None  # "I/N": the chunks c with c % N == I
    merge: tuple[str, ...] = ()  # records of shards to join into `records`
    against: str | None = None  # records of another run of the same model on the same images
    changed_grid: str | None = None  # with `against`: PNG of the images whose top-1 changed
    strict: bool = False  # stop at the first unreadable file
    batch_size: int = 8
    chunk_size: int = 256
    workers: int = 2  # decoding threads
    threads: int | None = None  # the runtime's intra-op threads
    providers: list[str] | None = None
    device: str = "auto"
    image_size: int | None = None  # a reference checkpoint that does not store it
    projection: bool = True  # a checkpoint of an injective model: the inverse's range projection
    ray: bool = False  # spread the chunks over a local Ray instance
    ray_address: str | None = None  # ... or an existing cluster's
    ray_workers: int = 2  # actors, each with its own graphs

    def __post_init__(self) -> None:
        object.__setattr__(self, "merge", tuple(self.merge))
        given = [t for t in (self.target, self.checkpoint) if t is not None]
        if self.merge:
            if given or not self.records:
                raise IRevNetError("--merge joins shards' records into --records OUT; give no bundle or checkpoint")
        elif len(given) != 1:
            raise IRevNetError("give one bundle folder or checkpoint to evaluate (or -c CHECKPOINT)")
        for name in ("target", "checkpoint", "records", "against", "changed_grid", "ray_address"):
            if getattr(self, name) is not None:
                check.paths(self, name)
        if self.split not in SPLITS:
            raise IRevNetError(f"--split {self.split!r}: choose val (the held-out images) or train")
        object.__setattr__(self, "backend", resolve_backend("triton" if self.server is not None else self.backend))
        check.integer("limit", self.limit, 1, optional=True)
        check.integer("batch_size", self.batch_size, 1, check.MAX_BATCH)
        check.integer("chunk_size", self.chunk_size, 1, 10**7)
        if self.chunk_size % self.batch_size:
            raise IRevNetError(f"--chunk-size {self.chunk_size} must be a multiple of --batch-size {self.batch_size} "
                               f"(a chunk is computed in the same batches, whoever computes it)")
        check.integer("workers", self.workers, 0, 64)
        check.integer("ray_workers", self.ray_workers, 1, 10_000)
        check.threads(self.threads)
        check.number("server_timeout_s", self.server_timeout_s, 0.0, 86400.0, low_open=True)
        check.integer("image_size", self.image_size, 1, optional=True)
        if self.shard is not None and self.shard_index is None:
            raise IRevNetError(f"--shard {self.shard[:40]!r}: give I/N with 0 <= I < N, e.g. 0/4")
        if self.resume and not self.records:
            raise IRevNetError("--resume continues the run of --records PATH: give it")
        if self.changed_grid and not self.against:
            raise IRevNetError("--changed-grid shows the images whose top-1 changed: give --against RECORDS")
        if self.shard is not None and self.against:
            raise IRevNetError("--against compares whole runs: merge the shards first (irevnet evaluate --merge A "
                               "--merge B ... --records OUT --against RECORDS)")
        if self.shard is not None and (self.ray or self.ray_address):
            raise IRevNetError("--shard is a scheduler's slice and --ray spreads the chunks itself: use one of them")

    @property
    def shard_index(self) -> tuple[int, int] | None:
        m = _SHARD.match(self.shard or "")
        if not m or not int(m[1]) < int(m[2]):
            return None
        return int(m[1]), int(m[2])


@dataclass
class EvaluationReport:
    """An evaluation's summary, and where its records are."""

    summary: Summary
    records: str | None
    chunks: int  # computed by this run
    resumed: int  # found done and kept
    seconds: float
    skipped: list[str] = field(default_factory=list)  # what the split's listing left out, and why

    def __str__(self) -> str:
        return str(self.summary)

    def to_dict(self) -> dict[str, Any]:
        return self.summary.to_dict() | {"records": self.records, "chunks": self.chunks, "resumed_chunks": self.resumed,
                                         "seconds": self.seconds, "skipped": self.skipped}


def identity_of(target: Target, split: Split, opts: EvaluateOptions, backend: str) -> RunIdentity:
    return RunIdentity(target.kind, target.sha256, target.checkpoint_sha256, target.weights_sha256, target.precision,
                       backend, opts.dataset, opts.split, split.classes, len(split), opts.chunk_size, opts.round_trip,
                       opts.shard_index)


def chunks_of(split: Split, chunk_size: int, shard: tuple[int, int] | None) -> list[int]:
    count = -(-len(split) // chunk_size)
    return [c for c in range(count) if shard is None or c % shard[1] == shard[0]]


def items_of(split: Split, chunk: int, chunk_size: int):
    return split.items[chunk * chunk_size:(chunk + 1) * chunk_size]


def evaluate(opts: EvaluateOptions, progress: Callable[[str, int, int, float], None] = lambda *_: None,
             on_batch: Callable | None = None, *, target: Target | None = None,
             split: Split | None = None) -> EvaluationReport:
    """Evaluates the target over the split (or joins shards' records); see the module docstring.

    Args:
        progress: called with (what, images done, images in this run, seconds) as chunks finish.
        on_batch: called with (items, images, reconstructions) of every batch computed here
            (`irevnet invert` writes them); not with Ray.
        target, split: the options' target and split, when the caller has opened them already
            (opening a bundle hashes every file of it; listing a split walks its folders).

    Raises:
        IRevNetError: one line: the target, the dataset, records of another run, a Ray cluster
            that does not answer, or an unreadable file with `strict`.
    """
    start = time.monotonic()
    if opts.merge:
        identity = merge([Path(p) for p in opts.merge], Path(opts.records))
        summary = _summary(identity, [Path(opts.records)], opts)
        return EvaluationReport(summary, opts.records, 0, 0, time.monotonic() - start)
    target = target or open_target(opts)
    split = split or open_split(opts.dataset, opts.split, target.in_shape, opts.limit)
    if split.classes != target.classes:
        raise IRevNetError(f"{target.path} has {target.classes} classes but {opts.dataset} has {split.classes}; "
                           f"evaluate on the dataset it was trained on")
    with _parts(opts) as folder, _runner(opts, target, split) as runner:
        identity = identity_of(target, split, opts, runner.backend)
        runner.identity = identity
        if opts.against:  # before the work: records of another model or other images are refused now
            comparable(identity, open_records(Path(opts.against), what="--against records")[0])
        todo = chunks_of(split, opts.chunk_size, opts.shard_index)
        done = _resumable(folder, identity, opts) & set(todo)
        pending = [c for c in todo if c not in done]
        total = sum(len(items_of(split, c, opts.chunk_size)) for c in pending)
        computed, images, t0 = 0, 0, time.monotonic()
        for chunk, table in runner.run([(c, items_of(split, c, opts.chunk_size)) for c in pending], on_batch):
            write_table(table, part_path(folder, chunk))
            computed += 1
            images += table.num_rows
            progress(f"chunk {chunk}", images, total, time.monotonic() - t0)
        seconds = time.monotonic() - t0
        if opts.records:
            join_parts(folder, todo, identity, Path(opts.records))
        else:  # the parts are all there is, in a temporary folder
            summary = _summary(identity, [part_path(folder, c) for c in todo], opts)
    if opts.records:
        summary = _summary(identity, [Path(opts.records)], opts)
    summary = replace(summary, images_per_s=images / seconds if computed and seconds else None)
    if opts.changed_grid and summary.agreement:
        from .grids import changed_grid

        changed_grid(summary.agreement, target, split, opts)
    return EvaluationReport(summary, opts.records, computed, len(done), time.monotonic() - start, split.skipped)


@contextlib.contextmanager
def _runner(opts: EvaluateOptions, target: Target, split: Split):
    """What computes the chunks: this process's Engine, or Ray actors each holding one."""
    if opts.ray or opts.ray_address:
        from .ray_runner import RayRunner

        runner = RayRunner(opts, target, split)
    else:
        runner = Engine(target, split, round_trip=opts.round_trip, batch_size=opts.batch_size, workers=opts.workers,
                        strict=opts.strict)
    try:
        yield runner
    finally:
        runner.close()


def _summary(identity: RunIdentity, files: list[Path], opts: EvaluateOptions) -> Summary:
    """The summary from the run's records files (its own, checked again: one code path for every run)."""
    opened = [(path, open_records(path, identity=identity)[1]) for path in files]
    against = None
    if opts.against:
        other, file = open_records(Path(opts.against), what="--against records")
        against = (other, Path(opts.against), file)
    return Summary.of(identity, opened, against)


@contextlib.contextmanager
def _parts(opts: EvaluateOptions):
    """The folder of this run's chunk files: RECORDS.parts/ beside --records (kept on failure, for
    --resume; removed once the records are written), else a temporary one."""
    if not opts.records:
        with tempfile.TemporaryDirectory(prefix="irevnet-evaluate-") as tmp:
            yield Path(tmp)
        return
    records = Path(opts.records)
    from ..io.files import check_writable

    check_writable(records)
    folder = parts_folder(records)
    if folder.exists() and not opts.resume:
        raise IRevNetError(f"{folder} holds the chunks of an unfinished run: continue it with --resume, or remove it "
                           f"to start again")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # reached only once the records are written


def _resumable(folder: Path, identity: RunIdentity, opts: EvaluateOptions) -> set[int]:
    """The chunks a resumed run keeps: each part is checked to be of this run (same target,
    dataset, split, cut) before it is trusted."""
    if not opts.resume:
        return set()
    done = done_chunks(folder)
    for chunk in sorted(done)[:1]:  # every part carries the run's identity: one refuses a foreign folder
        open_records(part_path(folder, chunk), identity=identity, what="chunk")
    return done
