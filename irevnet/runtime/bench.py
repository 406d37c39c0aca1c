"""`irevnet bench`: latency percentiles and throughput per backend, direction and batch size.

Like trtexec's summary: min / median / mean / p90 / p95 / p99 / max of the host-side latency of
one `infer` call (inputs on the host, outputs back on the host), and images/s. GPU backends also
report device time from CUDA events. Achieved GFLOP/s come from the architecture's convolution
count, next to the machine's fp32 matmul rate measured with numpy.

Comparisons between backends are made so that noise cannot make them: every backend is opened
and warmed up first, then measured in alternating rounds (the order rotates each round), so all
of them see the same machine; a speedup is a ratio of medians, each round gives its own ratio,
and a comparison whose rounds disagree by more than NOISY_SPREAD is marked noisy instead of
being reported as a headline. Several bundles of one model (fp32, mixed, int8) are benched
together the same way, each backend on each bundle a candidate of the same rounds. PyTorch eager
runs with glibc's malloc thresholds fixed (`steady_allocator`): with the adaptive mmap threshold
its latency swings by 1.5x between runs.

What a measurement records is in timing.py, the machine it ran on in machine.py, and a served
model under load (`--server URL --concurrency ...`) is measured by load_test.py.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from .. import validation as check
from ..allocator import steady_allocator
from ..contract import FORWARD, IMAGE, INVERSE, REFERENCE_IMAGES, Z
from ..errors import IRevNetError
from .backends import BackendOptions, open_backend, options_for, refuse_options_not_taken, resolve_backends, unsupported
from .bundle import Bundle
from .load_test import load_server
from .machine import machine_info, matmul_gflops
from .timing import BenchEntry, LatencyStats, Round, alternate, conv_flops, tiled_input

NOISY_SPREAD = 0.25  # (max - min) / median of a speedup's round ratios above which it is noisy


class Direction(str, Enum):
    forward = FORWARD
    inverse = INVERSE
    both = "both"


@dataclass
class BenchOptions:
    bundles: list[str]  # bundles of one model, side by side (say its fp32, mixed and int8 exports)
    backends: list[str] | None = None  # default: onnxruntime, or triton with `server`
    server: str | None = None  # a live Triton server (http://HOST:PORT, grpc://HOST:PORT): the triton backend
    server_timeout_s: float = 60.0  # the deadline of each call to the server, over its whole answer
    direction: Direction = Direction.both
    batch_sizes: list[int] | None = None  # default: 1 and 8, those within the bundles' max batch
    warmup_s: float = 1.0
    duration_s: float = 3.0
    iterations: int | None = None  # fixed count instead of duration_s
    threads: int | None = None
    providers: list[str] | None = None
    device: str = "auto"
    checkpoint: str | None = None
    rounds: int = 5  # alternating rounds per measurement; each round gets 1/rounds of the time
    # with `server`: concurrent clients per load level (forward, inverse and the served round trip)
    concurrency: list[int] | None = None
    requests: int = 200  # per client and load level
    rebuild: bool = False  # rebuild TensorRT engines made for another GPU or TensorRT first

    def __post_init__(self) -> None:
        if not self.bundles:
            raise IRevNetError("give at least one bundle folder")
        self.bundles = [str(b) for b in self.bundles]
        self.direction = check.choice("direction", self.direction, Direction)
        check.integer("rounds", self.rounds, 1, 1000)
        # with a server: the served models beside the in-process runtime
        self.backends = resolve_backends(self.backends, self.server, ["onnxruntime"])
        for n in self.batch_sizes or []:
            check.integer("batch_sizes", n, 1, check.MAX_BATCH)
        check.integer("iterations", self.iterations, 1, 10**9, optional=True)
        if self.iterations is None:  # a fixed count replaces the duration
            check.number("duration_s", self.duration_s, 0.0, 86400.0, low_open=True)
        check.number("warmup_s", self.warmup_s, 0.0, 86400.0)
        check.threads(self.threads)
        check.number("server_timeout_s", self.server_timeout_s, 0.0, 86400.0, low_open=True)
        for n in self.concurrency or []:
            check.integer("concurrency", n, 1, 256)
        check.integer("requests", self.requests, 1, 10**6)
        if self.concurrency and not self.server:
            raise IRevNetError("--concurrency loads a Triton server: give --server http://HOST:PORT")
        refuse_options_not_taken(self.backends, self.backend_options)

    @property
    def backend_options(self) -> BackendOptions:
        """What was asked of the backends, each opened with its share (backends.options_for)."""
        return BackendOptions(providers=self.providers, threads=self.threads, device=self.device,
                              checkpoint=self.checkpoint, server=self.server, server_timeout_s=self.server_timeout_s)


@dataclass
class BenchReport:
    """Every entry of one `bench` run, with what and where it was measured."""

    bundles: list[dict[str, str]]
    skipped: list[dict[str, str]]
    model: dict[str, Any]
    machine: dict[str, Any]
    threads: int | None
    settings: dict[str, Any]
    results: list[BenchEntry]

    def __str__(self) -> str:
        return "\n".join(map(str, self.results))

    def to_dict(self) -> dict[str, Any]:
        return {"bundles": self.bundles, "skipped": self.skipped, "model": self.model, "machine": self.machine,
                "threads": self.threads, "settings": self.settings, "results": [e.to_dict() for e in self.results]}


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def bench(opts: BenchOptions, progress: Callable[[str, float], None] = lambda what, frac: None) -> BenchReport:
    """Measures every (bundle, backend, direction, batch size) in alternating rounds; see the module docstring."""
    if opts.rebuild:
        from .trt_build import rebuild_stale

        rebuild_stale(opts.bundles, opts.backends, lambda msg: progress(msg, 0.0))
    bundles = [Bundle.open(b) for b in opts.bundles]
    bundle = bundles[0]  # its reference samples are every candidate's inputs
    if any(b.config != bundle.config for b in bundles):
        raise IRevNetError("the bundles come from different models; bench them one at a time")
    max_batch = min(b.max_batch for b in bundles)
    directions = [FORWARD, INVERSE] if opts.direction is Direction.both else [opts.direction.value]
    # (bundle index, backend kind): what alternates in the rounds. With several bundles a pair the
    # backend cannot run (int8 on torch) is skipped; alone, the backend says why it refuses.
    pairs = [(i, kind) for i in range(len(bundles)) for kind in opts.backends]
    why = {(i, kind): unsupported(kind, bundles[i].precision) if len(bundles) > 1 else None for i, kind in pairs}
    candidates = [pair for pair in pairs if not why[pair]]
    skipped = [{"bundle": str(bundles[i].path), "backend": kind, "reason": why[i, kind]} for i, kind in pairs if why[i, kind]]
    if not candidates:
        raise IRevNetError(f"no backend can run these bundles: {skipped[0]['reason']}")
    # the default never comes from the manifest's batch.max alone: a bundle may declare any size up
    # to MAX_BATCH, and a batch that large is asked for, not implied
    sizes = opts.batch_sizes or [n for n in (1, 8) if n <= max_batch]
    for n in sizes:
        if not 1 <= n <= max_batch:
            raise IRevNetError(f"batch size {n} is outside the bundles' range 1..{max_batch}; re-export with --max-batch")
    allocator = steady_allocator()  # for the PyTorch baseline
    cfg = bundle.config
    flops = conv_flops(cfg)
    reference = bundle.reference(REFERENCE_IMAGES, Z)  # real inputs and the z PyTorch made of them, tiled to each batch
    rounds = min(opts.rounds, opts.iterations) if opts.iterations else opts.rounds
    results = []
    steps, ticks = len(directions) * len(sizes) * rounds * len(candidates), itertools.count(1)
    for direction in directions:
        feed_name = IMAGE if direction == FORWARD else Z
        with contextlib.ExitStack() as opened:  # every backend open at once: they alternate below
            runners = {(i, kind): opened.enter_context(open_backend(
                kind, bundles[i], direction, options_for(kind, opts.backend_options))) for i, kind in candidates}
            for n in sizes:
                x = tiled_input(reference, direction, n)
                counts = _split(opts.iterations, rounds) if opts.iterations else [None] * rounds

                measured = alternate(
                    runners, {feed_name: x}, warmup_s=opts.warmup_s, duration_s=opts.duration_s, counts=counts,
                    on_round=lambda key, r, names=runners, what=f"{direction} batch {n}": progress(
                        f"{names[key].name} {what}, round {r + 1}/{rounds}", next(ticks) / steps))
                for (i, kind), parts in measured.items():
                    results.append(_entry(runners[i, kind].name, kind, bundles[i], direction, n, parts, flops))
    compare_with_baseline(results)
    if opts.concurrency:
        results += load_server(opts, bundle, sizes, progress)
    return BenchReport(
        bundles=[{"path": str(b.path), "precision": b.precision} for b in bundles],
        skipped=skipped,
        model={"config": cfg.to_dict(), "gflop_per_image": flops / 1e9},
        machine=machine_info() | {"fp32_matmul_gflops": matmul_gflops()},
        threads=opts.threads,
        settings={"warmup_s": opts.warmup_s, "duration_s": opts.duration_s, "iterations": opts.iterations,
                  "rounds": rounds, "allocator": allocator, "noisy_spread": NOISY_SPREAD},
        results=results,
    )


def _entry(name: str, kind: str, bundle: Bundle, direction: str, batch: int, parts, flops: int) -> BenchEntry:
    latencies = [t for lat, _ in parts for t in lat]
    stats = LatencyStats.of(latencies, batch)
    device = [t for _, dev in parts for t in dev]
    return BenchEntry(
        name, kind, str(bundle.path), bundle.precision, direction, batch, stats,
        gflops=flops * batch / (stats.median_ms / 1e3) / 1e9, rounds=[Round.of(lat) for lat, _ in parts],
        device_median_ms=float(np.median(device)) if device else None,
    )


def compare_with_baseline(results: list[BenchEntry]) -> None:
    """speedup = baseline median / this median (baseline: torch on the first bundle if benched, else
    the first candidate), with the ratio of every round (measured side by side) and a noisy flag
    where they disagree. The baseline's own entries get no speedup: 1.0 by construction."""
    first = results[0].bundle
    torch_first = [r for r in results if r.kind == "torch" and r.bundle == first]
    base = (torch_first or results)[0]
    by_key = {(r.direction, r.batch): r for r in results if (r.kind, r.bundle) == (base.kind, base.bundle)}
    for r in results:
        ref = by_key.get((r.direction, r.batch))
        if ref is None:
            continue
        r.baseline = f"{ref.backend} {ref.precision}"
        if ref is r:
            continue
        r.speedup = ref.stats.median_ms / r.stats.median_ms
        r.speedup_rounds = [b.median_ms / m.median_ms for b, m in zip(ref.rounds, r.rounds)]
        spread = (max(r.speedup_rounds) - min(r.speedup_rounds)) / r.speedup
        r.noisy = bool(spread > NOISY_SPREAD)
