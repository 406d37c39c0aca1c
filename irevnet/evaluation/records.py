"""Per-image records of an evaluation: one Parquet row per image, what pandas, polars and DuckDB read.

    index, path, label      the image in its split (path relative to the split's folder)
    status, error           "ok", or "unreadable" with why (the file, one line)
    top5, top5_logits       the five highest classes and their logits
    logits                  every class's logit (float32): what --against compares
    loss                    cross-entropy of the label (float64 computed, stored float32)
    round_trip_rel_l2, psnr_db   ||inverse(forward(x)) - x|| / ||x||, and its PSNR on pixels in [0, 1]
    backend                 what ran the graphs

The file's metadata (key b"irevnet") says what the rows are of (RunIdentity): the bundle's
manifest, weights and checkpoint sha256 (or the checkpoint's), the dataset spec and split, and how
the run was cut (chunk size, shard). A run writes each finished chunk as a file of its own in RECORDS.parts/,
atomically, and joins them into RECORDS at the end; resumed, sharded and merged runs join the same
chunks, so they give the same bytes. Records are untrusted on the way in (--against, --merge,
--resume): the metadata is parsed strictly and the table's size bounded before anything is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..contract import LOGITS
from ..errors import IRevNetError
from ..io.files import atomic_output

FORMAT = "irevnet-evaluation-records"
META = b"irevnet"
_SHA = re.compile(r"^[0-9a-f]{64}$")
MAX_CLASSES = 100_000
_PART = re.compile(r"^chunk-(\d{6,9})\.parquet$")


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise IRevNetError("records are Parquet files, written with pyarrow: pip install pyarrow") from None
    return pyarrow


@dataclass(frozen=True)
class RunIdentity:
    """What a records file is of, and how its run was cut: two files join (--merge) only when
    everything but the shard is equal, and compare (--against) when the model and images are."""

    target: str  # "bundle" or "checkpoint"
    target_sha256: str  # the bundle's manifest, or the checkpoint file
    checkpoint_sha256: str  # the checkpoint the target comes from: what --against compares runs of
    weights_sha256: str  # the weights as exported (the manifest's: folded, in the bundle's precision)
    precision: str
    backend: str
    dataset: str
    split: str
    classes: int
    images: int  # items in the split (after --limit)
    chunk_size: int
    round_trip: bool
    shard: tuple[int, int] | None = None  # (index, count), None for a whole run

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "irevnet": __version__, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> RunIdentity:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            data = None
        fields = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or data.get("format") != FORMAT or set(data) - {"format", "irevnet"} != fields:
            raise IRevNetError(f"{where} is not a records file of `irevnet evaluate` (its metadata); give one it wrote")
        strings = ("target", "target_sha256", "checkpoint_sha256", "weights_sha256", "precision", "backend", "dataset",
                   "split")
        ints = ("classes", "images", "chunk_size")
        shard = data["shard"]
        if not (all(isinstance(data[k], str) and len(data[k]) <= 4096 for k in strings)
                and all(isinstance(data[k], int) and not isinstance(data[k], bool) and 0 < data[k] <= 10**9 for k in ints)
                and data["classes"] <= MAX_CLASSES and isinstance(data["round_trip"], bool)
                and all(_SHA.match(data[k]) for k in ("target_sha256", "checkpoint_sha256", "weights_sha256"))
                and (shard is None or (isinstance(shard, list) and len(shard) == 2
                                       and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
                                       and 0 <= shard[0] < shard[1] <= 10**6))):
            raise IRevNetError(f"{where}: its metadata is malformed; give a records file `irevnet evaluate` wrote")
        return cls(**{**{k: data[k] for k in fields}, "shard": tuple(shard) if shard else None})

    def whole(self) -> RunIdentity:
        return replace(self, shard=None)


def schema(identity: RunIdentity):
    pa = _pyarrow()
    k = min(5, identity.classes)
    return pa.schema([
        ("index", pa.int64()), ("path", pa.string()), ("label", pa.int32()),
        ("status", pa.string()), ("error", pa.string()),
        ("top5", pa.list_(pa.int32(), k)), ("top5_logits", pa.list_(pa.float32(), k)),
        (LOGITS, pa.list_(pa.float32(), identity.classes)),
        ("loss", pa.float32()), ("round_trip_rel_l2", pa.float32()), ("psnr_db", pa.float32()),
        ("backend", pa.string()),
    ], metadata={META: identity.to_json()})


def chunk_table(identity: RunIdentity, items, logits: np.ndarray | None, ok: np.ndarray, errors: list[str | None],
                round_trip: tuple[np.ndarray, np.ndarray] | None):
    """The rows of one chunk.

    Args:
        items: the chunk's split items (index, path, label).
        logits: (n_ok, classes) float32 for the readable items, in order.
        ok: (n,) bool, which items were decoded.
        errors: per item, why it is unreadable (None when it was read).
        round_trip: (rel_l2, psnr_db) per readable item, or None without the inverse.
    """
    pa = _pyarrow()
    n, k, classes = len(items), min(5, identity.classes), identity.classes
    labels = np.array([it.label for it in items], np.int64)
    full = np.full((n, classes), np.nan, np.float32)
    rel, psnr = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    loss = np.full(n, np.nan, np.float32)
    if logits is not None and len(logits):
        full[ok] = logits
        z = logits.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss[ok] = -log_softmax[np.arange(len(z)), labels[ok]]
        if round_trip is not None:
            rel[ok], psnr[ok] = round_trip
    top = np.argsort(-full, axis=1, kind="stable")[:, :k].astype(np.int32)
    top_logits = np.take_along_axis(full, top, axis=1)
    mask = ~ok
    columns = {
        "index": pa.array([it.index for it in items], pa.int64()),
        "path": pa.array([it.path for it in items], pa.string()),
        "label": pa.array(labels.astype(np.int32), pa.int32()),
        "status": pa.array(["ok" if v else "unreadable" for v in ok], pa.string()),
        "error": pa.array(errors, pa.string()),
        "top5": pa.FixedSizeListArray.from_arrays(pa.array(top.ravel(), pa.int32()), k, mask=pa.array(mask)),
        "top5_logits": pa.FixedSizeListArray.from_arrays(pa.array(top_logits.ravel(), pa.float32()), k,
                                                         mask=pa.array(mask)),
        LOGITS: pa.FixedSizeListArray.from_arrays(pa.array(full.ravel(), pa.float32()), classes, mask=pa.array(mask)),
        "loss": pa.array(loss, pa.float32(), mask=mask),
        "round_trip_rel_l2": pa.array(rel, pa.float32(), mask=mask | (round_trip is None)),
        "psnr_db": pa.array(psnr, pa.float32(), mask=mask | (round_trip is None) | ~np.isfinite(psnr)),
        "backend": pa.array([identity.backend] * n, pa.string()),
    }
    return pa.table(columns, schema=schema(identity))


def write_table(table, path: Path) -> None:
    """One chunk's Parquet file, atomically (written whole, then renamed into place)."""
    pq = _pyarrow().parquet
    with atomic_output(path) as tmp:
        pq.write_table(table.combine_chunks(), str(tmp), compression="zstd", write_statistics=False)


def write_records(path: Path, identity: RunIdentity, chunks: Iterable[Any]) -> None:
    """The records of a run, from its chunks' tables in chunk order, atomically: one row group
    per chunk, so the same rows give the same bytes however they were gathered (whole, resumed,
    merged shards), and one chunk is in memory at a time."""
    pq = _pyarrow().parquet
    with atomic_output(path) as tmp, pq.ParquetWriter(str(tmp), schema(identity), compression="zstd",
                                                      write_statistics=False) as writer:
        for table in chunks:
            writer.write_table(table.replace_schema_metadata(schema(identity).metadata).combine_chunks())


def parts_folder(records: Path) -> Path:
    return records.with_name(records.name + ".parts")


def part_path(folder: Path, chunk: int) -> Path:
    return folder / f"chunk-{chunk:06d}.parquet"


def done_chunks(folder: Path) -> set[int]:
    """The chunks already recorded in a parts folder (each part is complete: written atomically)."""
    if not folder.is_dir():
        return set()
    return {int(m[1]) for entry in folder.iterdir() if (m := _PART.match(entry.name))}


def open_records(path: Path, *, identity: RunIdentity | None = None, what: str = "records"):
    """(RunIdentity, pyarrow ParquetFile) of a records file, checked before a row is read: its
    metadata, its schema, and a size bounded by what the metadata says it holds.

    Raises:
        IRevNetError: one line naming the file and what is wrong.
    """
    pa = _pyarrow()
    pq = pa.parquet
    try:
        file = pq.ParquetFile(str(path))
    except FileNotFoundError:
        raise IRevNetError(f"{path}: no such {what} file; give one `irevnet evaluate --records` wrote") from None
    except (OSError, pa.ArrowException) as e:
        raise IRevNetError(f"{path} is not a Parquet file ({str(e).splitlines()[0][:100]}); give one "
                           f"`irevnet evaluate --records` wrote") from None
    meta = file.metadata
    raw = (meta.metadata or {}).get(META)
    if raw is None or len(raw) > 1 << 16:
        raise IRevNetError(f"{path} is not a records file of `irevnet evaluate` (no irevnet metadata)")
    found = RunIdentity.from_json(raw, str(path))
    if identity is not None and found != identity:
        raise IRevNetError(f"{path} records another run ({_difference(found, identity)}); give the same --records "
                           f"with the same options, or a new path")
    rows = found.images if found.shard is None else -(-found.images // found.shard[1]) + found.chunk_size
    # every row at most its logits, top-5 and path: far more than a real file needs, far less than a bomb
    bound = rows * (8 * found.classes + 8192)
    if meta.num_rows > found.images or sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) > bound:
        raise IRevNetError(f"{path} holds more than its metadata says it records; give a file `irevnet evaluate` wrote")
    if not file.schema_arrow.equals(schema(found), check_metadata=False):
        raise IRevNetError(f"{path} does not have the columns of `irevnet evaluate`'s records; give a file it wrote")
    return found, file


def read_chunk(path: Path, identity: RunIdentity):
    """One chunk's part, whole (a chunk is bounded by --chunk-size), checked to be of this run."""
    pa = _pyarrow()
    _, file = open_records(path, identity=identity, what="chunk")
    try:
        return file.read()
    except (OSError, pa.ArrowException) as e:
        raise IRevNetError(f"{path} cannot be read ({str(e).splitlines()[0][:100]})") from None


def batches(files: list[tuple[Path, Any]], columns: list[str], rows: int = 1024) -> Iterator[Any]:
    """The given columns of checked records files (open_records' files), `rows` at a time, in order."""
    pa = _pyarrow()
    for path, file in files:
        try:
            yield from file.iter_batches(batch_size=rows, columns=columns)
        except (OSError, pa.ArrowException) as e:
            raise IRevNetError(f"{path} cannot be read ({str(e).splitlines()[0][:100]})") from None


class Rows:
    """Rows of a stream of record batches, taken n at a time whatever the batches' sizes (to
    walk two records files side by side)."""

    def __init__(self, stream: Iterator[Any]):
        self.stream, self.held, self.offset = stream, None, 0

    def take(self, n: int):
        """The next n rows as a table (fewer at the end of the stream, None past it)."""
        pa = _pyarrow()
        parts = []
        while n > 0:
            if self.held is None or self.offset >= self.held.num_rows:
                self.held, self.offset = next(self.stream, None), 0
                if self.held is None:
                    break
            piece = self.held.slice(self.offset, n)
            self.offset += piece.num_rows
            n -= piece.num_rows
            parts.append(piece)
        return pa.Table.from_batches(parts) if parts else None


def _difference(a: RunIdentity, b: RunIdentity) -> str:
    da, db = asdict(a), asdict(b)
    key = next(k for k in da if da[k] != db[k])
    return f"{key} {str(da[key])[:80]} where this run has {str(db[key])[:80]}"


def join_parts(folder: Path, chunks: list[int], identity: RunIdentity, out: Path) -> None:
    """Writes the records of the given chunks' parts (each checked) into `out`, in chunk order."""
    write_records(out, identity, (read_chunk(part_path(folder, c), identity) for c in chunks))


def merge(paths: list[Path], out: Path) -> RunIdentity:
    """Joins the records of shards of one run into `out`, a chunk at a time: refuses files of other
    runs (naming what differs), overlaps and gaps, from their index columns, before a row is
    written.

    Returns:
        the whole run's identity.
    """
    pa = _pyarrow()
    if len(paths) < 2:
        raise IRevNetError("--merge joins the records of several shards: give --merge A --merge B ...")
    opened = [(p, *open_records(p)) for p in paths]
    first_path, first, _ = opened[0]
    for p, found, _ in opened[1:]:
        if found.whole() != first.whole():
            raise IRevNetError(f"{p} records another run than {first_path} ({_difference(found.whole(), first.whole())}); "
                               f"merge the shards of one run")
    identity = first.whole()
    indices = []  # 8 bytes per image: the only whole-split column read
    for p, _, file in opened:
        column = np.concatenate([np.asarray(b.column(0)) for b in batches([(p, file)], ["index"], rows=65536)]
                                or [np.zeros(0, np.int64)])
        if column.size > 1 and not (np.diff(column) > 0).all():
            raise IRevNetError(f"{p}: its rows are not in the order `irevnet evaluate` writes them; give a file it wrote")
        indices.append(column)
    every = np.sort(np.concatenate(indices), kind="stable")
    duplicates = every[1:][every[1:] == every[:-1]]
    if duplicates.size:
        owners = [str(p) for (p, _, _), column in zip(opened, indices, strict=True) if int(duplicates[0]) in column]
        raise IRevNetError(f"image {int(duplicates[0])} is in {owners[0]} and {owners[1]}: the shards overlap; merge "
                           f"each shard once")
    if every.size and (every[0] < 0 or every[-1] >= identity.images):
        raise IRevNetError(f"the shards hold rows of images the split does not have (index {int(every[-1])} of "
                           f"{identity.images}); give files `irevnet evaluate` wrote")
    missing = np.setdiff1d(np.arange(identity.images), every)
    if missing.size:
        raise IRevNetError(f"{missing.size} images of the split are in no file given (the first: index "
                           f"{int(missing[0])}); give every shard")
    columns = schema(identity).names
    streams = [(Rows(batches([(p, file)], columns)), column) for (p, _, file), column in zip(opened, indices, strict=True)]

    def chunks():
        taken = [0] * len(streams)
        for start in range(0, identity.images, identity.chunk_size):
            end = min(start + identity.chunk_size, identity.images)
            pieces = []
            for k, (rows, column) in enumerate(streams):
                n = int(np.searchsorted(column, end)) - taken[k]  # this shard's rows of the chunk: next in its file
                if n:
                    pieces.append(rows.take(n))
                    taken[k] += n
            table = pa.concat_tables(pieces)
            yield table.take(pa.array(np.argsort(table.column("index").to_numpy(), kind="stable")))

    write_records(out, identity, chunks())
    return identity
