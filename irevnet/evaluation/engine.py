"""Running a target's graphs over chunks of a split: images decoded by a pool of threads a bounded
number of batches ahead, the forward graph (and the inverse, for the round trip) on one backend,
one records table per chunk.

Threads, not processes: Pillow releases the GIL while it decodes and resizes, and so does the
runtime while it runs a graph, so decoding overlaps inference without copying images between
processes; memory is bounded by the batches in flight (`prefetch`), whatever the split's size.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contract import FORWARD, IMAGE, INVERSE, LOGITS, MANIFEST, Precision, Z
from ..errors import IRevNetError
from ..io.images import reconstruction_metrics
from ..io.splits import Item, Split, Unreadable
from ..metrics import rel_l2
from .records import RunIdentity, chunk_table

if TYPE_CHECKING:
    from ..io.checkpoint import Checkpoint
    from ..runtime.backends import BackendOptions


@dataclass
class Target:
    """What runs: a bundle's graphs on a backend, or a checkpoint's model on torch."""

    kind: str  # bundle | checkpoint | graph (a precision plan's forward graph, judged before any bundle is written)
    path: str
    sha256: str  # the manifest's, or the checkpoint file's
    checkpoint_sha256: str  # the checkpoint it comes from
    weights_sha256: str  # the weights as exported (a checkpoint's: folded fp32, as its fp32 bundle's)
    precision: str
    in_shape: tuple[int, int, int]
    classes: int
    max_batch: int | None
    open_graphs: Callable[[bool], tuple[Any, Any | None]]  # round_trip -> (forward, inverse or None) backends


def bundle_target(path: str, backend: str, options: BackendOptions) -> Target:
    """A bundle, checked (Bundle.open: the schema and every file's sha256), on `backend`."""
    from ..runtime import Bundle, open_backend
    from ..runtime.backends import refuse_options_not_taken

    refuse_options_not_taken([backend], options)  # here, before any image is read or any worker started
    bundle = Bundle.open(path)

    def open_graphs(round_trip: bool):
        forward = open_backend(backend, bundle, FORWARD, options)
        try:
            return forward, open_backend(backend, bundle, INVERSE, options) if round_trip else None
        except BaseException:
            forward.close()
            raise

    cfg = bundle.config
    return Target("bundle", str(bundle.path), hashlib.sha256((bundle.path / MANIFEST).read_bytes()).hexdigest(),
                  bundle.manifest.checkpoint.sha256, bundle.manifest.weights_sha256, bundle.precision,
                  tuple(cfg.in_shape), cfg.num_classes, bundle.max_batch, open_graphs)


def checkpoint_target(path: str, *, image_size: int | None = None, device: str = "auto",
                      threads: int | None = None, projection: bool = True, loaded: Checkpoint | None = None,
                      sha256: str | None = None, weights: str | None = None) -> Target:
    """A checkpoint's model on torch (PyTorch fp32): the reference an exported bundle is judged by.

    Args:
        loaded, sha256, weights: the checkpoint as loaded from `path` already, its file's digest
            and its folded fp32 weights' (an export's search, which traced them): its model runs,
            nothing is read, folded or hashed again.
    """
    from ..io.checkpoint import load_checkpoint, weights_sha256
    from ..io.files import sha256_file
    from ..model.graphs import prepare
    from ..runtime.backends.torch_backend import TorchBackend

    ckpt = loaded or load_checkpoint(path, image_size=image_size)
    cfg = ckpt.config
    digest = sha256 or sha256_file(path)

    def open_graphs(round_trip: bool):
        kw = {"image_size": cfg.in_shape[1], "device": device, "threads": threads, "projection": projection,
              "model": ckpt.model if loaded else None}
        forward = TorchBackend(path, FORWARD, **kw)
        return forward, TorchBackend(path, INVERSE, **kw) if round_trip else None

    weights = weights or weights_sha256(prepare(ckpt.model, Precision.fp32))
    return Target("checkpoint", path, digest, digest, weights, Precision.fp32, tuple(cfg.in_shape), cfg.num_classes,
                  None, open_graphs)


def open_target(opts: Any) -> Target:
    """The target of an evaluation's options (run.EvaluateOptions): a bundle on its backend, or a
    checkpoint on torch."""
    from ..runtime.backends import BackendOptions, refuse_options_not_taken

    path = opts.checkpoint or opts.target
    options = BackendOptions(providers=opts.providers, threads=opts.threads, device=opts.device, server=opts.server,
                             server_timeout_s=opts.server_timeout_s)
    if opts.checkpoint is None and (Path(path) / MANIFEST).is_file():
        return bundle_target(path, opts.backend, options)
    if Path(path).is_dir():
        raise IRevNetError(f"{path} is a folder without {MANIFEST}: give a bundle of `irevnet export` or a checkpoint file")
    if opts.backend not in ("onnxruntime", "torch"):
        raise IRevNetError(f"a checkpoint runs on torch, not -b {opts.backend}; export a bundle to run it there")
    refuse_options_not_taken(["torch"], options)
    return checkpoint_target(path, image_size=opts.image_size, device=opts.device, threads=opts.threads,
                             projection=opts.projection)


class Engine:
    """One worker's graphs and decoding pool; run() turns chunks of items into their records
    (set `identity`, what the records are of, before)."""

    identity: RunIdentity

    def __init__(self, target: Target, split: Split, *, round_trip: bool, batch_size: int, workers: int,
                 strict: bool = False):
        self.target, self.split, self.strict = target, split, strict
        if target.max_batch is not None and batch_size > target.max_batch:
            raise IRevNetError(f"--batch-size {batch_size} is over the bundle's largest batch, {target.max_batch}; "
                               f"give at most that (or re-export with --max-batch)")
        self.batch_size = batch_size
        self.forward, self.inverse = target.open_graphs(round_trip)
        self.backend = self.forward.name
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="irevnet-decode") \
            if workers else None
        self.prefetch = 2 * workers + 2  # batches decoded ahead: what bounds memory

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        for backend in (self.forward, self.inverse):
            if backend is not None:
                backend.close()

    def __enter__(self) -> Engine:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _decode(self, items: list[Item]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """(the readable images stacked, which items were read, why the others were not)."""
        images, ok, errors = [], np.zeros(len(items), bool), []
        for k, item in enumerate(items):
            try:
                images.append(self.split.decode(item))
                ok[k] = True
                errors.append(None)
            except Unreadable as e:
                if self.strict:
                    raise IRevNetError(f"{e} (--strict stops at the first unreadable file)") from None
                errors.append(str(e))
        c, h, w = self.split.in_shape
        return (np.stack(images) if images else np.empty((0, c, h, w), np.float32)), ok, errors

    def batches(self, chunks: list[tuple[int, list[Item]]]) -> Iterator[tuple[int, list[Item], Any]]:
        """(chunk, the batch's items, its decoded images) in order, decoded up to `prefetch` ahead."""
        work = [(c, items[i:i + self.batch_size]) for c, items in chunks for i in range(0, len(items), self.batch_size)]
        if self.pool is None:
            for c, items in work:
                yield c, items, self._decode(items)
            return
        pending: collections.deque = collections.deque()
        try:
            for c, items in work:
                pending.append((c, items, self.pool.submit(self._decode, items)))
                if len(pending) > self.prefetch:
                    c0, items0, future = pending.popleft()
                    yield c0, items0, future.result()
            while pending:
                c0, items0, future = pending.popleft()
                yield c0, items0, future.result()
        finally:  # stopped early (an error, SIGTERM): what is still queued is not decoded
            for _, _, future in pending:
                future.cancel()

    def infer(self, x: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None, np.ndarray | None]:
        """(logits, (round-trip rel. L2, PSNR) per image or None, reconstructions or None) of a batch."""
        out = self.forward.infer({IMAGE: x}, [LOGITS, Z] if self.inverse is not None else [LOGITS])
        if self.inverse is None:
            return out[LOGITS], None, None
        back = self.inverse.infer({Z: out[Z]})[IMAGE]
        rel = np.array([rel_l2(a, b) for a, b in zip(back, x)])
        per_image = reconstruction_metrics(x, back, self.split.mean, self.split.std)["per_image"]
        psnr = np.array([np.inf if m["psnr_db"] is None else m["psnr_db"] for m in per_image])  # None: exact
        return out[LOGITS], (rel, psnr), back

    def run(self, chunks: list[tuple[int, list[Item]]], on_batch: Callable[[list[Item], np.ndarray, Any], None]
            | None = None) -> Iterator[tuple[int, Any]]:
        """(chunk, its records table) for each chunk, in order; `on_batch(items, images, reconstructions)`
        sees every decoded batch (the readable items' images)."""
        current, parts = None, []
        for c, items, (x, ok, errors) in self.batches(chunks):
            if current is not None and c != current:
                yield current, self._table(parts)
                parts = []
            current = c
            logits, round_trip, back = self.infer(x) if len(x) else (np.empty((0, self.target.classes), np.float32),
                                                                     None, None)
            if on_batch is not None and len(x):
                on_batch([it for it, good in zip(items, ok) if good], x, back)
            parts.append((items, logits, ok, errors, round_trip))
        if current is not None:
            yield current, self._table(parts)

    def _table(self, parts):
        items = [it for p in parts for it in p[0]]
        logits = np.concatenate([p[1] for p in parts]) if parts else None
        ok = np.concatenate([p[2] for p in parts])
        errors = [e for p in parts for e in p[3]]
        if self.identity.round_trip:
            rel = np.concatenate([p[4][0] if p[4] is not None else np.empty(0) for p in parts])
            psnr = np.concatenate([p[4][1] if p[4] is not None else np.empty(0) for p in parts])
            round_trip = (rel.astype(np.float32), psnr.astype(np.float32))
        else:
            round_trip = None
        return chunk_table(self.identity, items, logits, ok, errors, round_trip)

