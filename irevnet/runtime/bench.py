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
together the same way, each backend on each bundle a candidate of the same rounds. PyTorch eager runs with glibc's malloc thresholds fixed
(`steady_allocator`): with the adaptive mmap threshold its latency swings by 1.5x between runs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from .. import validation as check
from ..allocator import steady_allocator
from ..contract import FORWARD, IMAGE, INVERSE, RECONSTRUCTION, ROUNDTRIP, Z
from ..errors import IRevNetError
from ..model.config import IRevNetConfig
from .backends import BackendOptions, open_backend, options_for, refuse_options_not_taken, resolve_backends, unsupported
from .bundle import Bundle


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


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """The machine's fp32 matrix-multiply rate through numpy's BLAS (best of `repeats`)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        gpus = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        info["gpus"] = [g.strip() for g in gpus.splitlines() if g.strip()]
    except (OSError, subprocess.SubprocessError):
        info["gpus"] = []
    versions = {}
    for module in ("onnxruntime", "tensorrt", "torch", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    info["versions"] = versions
    return info


NOISY_SPREAD = 0.25  # (max - min) / median of a speedup's round ratios above which it is noisy
SERVER_PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class ServerSplit:
    """Where a served request's time went inside the server, ms per request, from its statistics
    over exactly the measured requests (Triton's queue, compute input / infer / output)."""

    requests: int
    queue: float
    compute_input: float
    compute_infer: float
    compute_output: float

    @classmethod
    def between(cls, before: dict[str, dict[str, int]] | None, after: dict[str, dict[str, int]] | None) -> ServerSplit | None:
        """The split between two statistics readings (None without both, or without a request
        that succeeded in between)."""
        if before is None or after is None:
            return None
        requests = after["success"]["count"] - before["success"]["count"]
        if requests <= 0:
            return None
        return cls(requests, *((after[part]["ns"] - before[part]["ns"]) / requests / 1e6 for part in SERVER_PARTS))

    @property
    def total_ms(self) -> float:
        return self.queue + self.compute_input + self.compute_infer + self.compute_output

    def __str__(self) -> str:
        return (f"queue {self.queue:.3f} ms, compute input {self.compute_input:.3f}, infer {self.compute_infer:.3f}, "
                f"output {self.compute_output:.3f} (per request, {self.requests} requests)")

    def to_dict(self) -> dict[str, float]:
        return {"requests": self.requests, **{part: getattr(self, part) for part in SERVER_PARTS}}


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
    stats: dict[str, float]  # iterations, min/median/mean/p90/p95/p99/max_ms, images_per_s
    gflops: float
    rounds: list[dict[str, float]]  # per round: runs, median_ms, min_ms, max_ms
    device_median_ms: float | None = None  # GPU backends: CUDA-event time
    baseline: str | None = None
    speedup: float | None = None  # baseline median / this median
    speedup_rounds: list[float] | None = None
    noisy: bool = False  # the rounds' ratios spread over NOISY_SPREAD
    concurrency: int = 1  # clients sending at once (a served model under load)
    server: ServerSplit | None = None  # a served model under load: the server's own split of the time

    def __getattr__(self, name: str) -> float:  # median_ms, p99_ms, images_per_s, ...
        stats = self.__dict__.get("stats", {})
        if name in stats:
            return stats[name]
        raise AttributeError(name)

    def __str__(self) -> str:
        ratio = "" if self.speedup is None else f", {self.speedup:.2f}x{' (noisy)' if self.noisy else ''} vs {self.baseline}"
        return (f"{self.backend} {self.precision} {self.direction} batch {self.batch}: median {self.median_ms:.2f} ms, "
                f"p99 {self.p99_ms:.2f} ms, {self.images_per_s:,.1f} images/s{ratio}")

    def to_dict(self) -> dict[str, Any]:
        out = {"backend": self.backend, "kind": self.kind, "bundle": self.bundle, "precision": self.precision,
               "direction": self.direction, "batch": self.batch, **self.stats, "gflops": self.gflops,
               "rounds": self.rounds}
        if self.device_median_ms is not None:
            out["device_median_ms"] = self.device_median_ms
        out |= {"baseline": self.baseline, "speedup": self.speedup, "speedup_rounds": self.speedup_rounds,
                "noisy": self.noisy, "concurrency": self.concurrency}
        if self.server is not None:
            out["server_ms"] = self.server.to_dict()
        return out


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
def _stats(latencies_s: list[float], batch: int) -> dict[str, float]:
    ms = np.array(latencies_s) * 1e3
    return {
        "iterations": len(ms),
        "min_ms": float(ms.min()),
        "median_ms": float(np.median(ms)),
        "mean_ms": float(ms.mean()),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "images_per_s": float(batch * len(ms) / ms.sum() * 1e3),  # throughput over the whole measurement
    }


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
    reference = bundle.reference("images", Z)  # real inputs and the z PyTorch made of them, tiled to each batch
    rounds = min(opts.rounds, opts.iterations) if opts.iterations else opts.rounds
    results = []
    steps, done = len(directions) * len(sizes) * rounds * len(candidates), 0
    for direction in directions:
        feed_name = IMAGE if direction == FORWARD else Z
        source = reference["images" if direction == FORWARD else Z]
        with contextlib.ExitStack() as opened:  # every backend open at once: they alternate below
            runners = {(i, kind): opened.enter_context(open_backend(
                kind, bundles[i], direction, options_for(kind, opts.backend_options))) for i, kind in candidates}
            for n in sizes:
                x = np.ascontiguousarray(np.resize(source, (n, *source.shape[1:])))
                calls = {key: functools.partial(b.infer, {feed_name: x}) for key, b in runners.items()}
                for run in calls.values():  # warm-up, once per backend before any round
                    deadline = time.perf_counter() + opts.warmup_s
                    run()
                    while time.perf_counter() < deadline:
                        run()
                counts = _split(opts.iterations, rounds) if opts.iterations else [None] * rounds
                measured: dict[tuple[int, str], list[tuple[list[float], list[float]]]] = {key: [] for key in calls}
                for r in range(rounds):
                    order = list(calls)[r % len(calls):] + list(calls)[: r % len(calls)]  # rotate: no candidate always first
                    for key in order:
                        measured[key].append(_measure(calls[key], runners[key], counts[r], opts.duration_s / rounds))
                        done += 1
                        progress(f"{runners[key].name} {direction} batch {n}, round {r + 1}/{rounds}", done / steps)
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


def _measure(run: Callable[[], Any], backend, count: int | None, seconds: float) -> tuple[list[float], list[float]]:
    """Host latencies (s) and device times (ms, where the backend measures them) of one round:
    `count` runs, or as many as fit in `seconds` (at least one)."""
    latencies, device_ms = [], []
    start = time.perf_counter()
    while not latencies or (len(latencies) < count if count else time.perf_counter() - start < seconds):
        latencies.append(_timed(run))
        if backend.last_device_ms is not None:
            device_ms.append(backend.last_device_ms)
    return latencies, device_ms


def _entry(name: str, kind: str, bundle: Bundle, direction: str, batch: int, parts, flops: int) -> BenchEntry:
    latencies = [t for lat, _ in parts for t in lat]
    stats = _stats(latencies, batch)
    device = [t for _, dev in parts for t in dev]
    return BenchEntry(
        name, kind, str(bundle.path), bundle.precision, direction, batch, stats,
        gflops=flops * batch / (stats["median_ms"] / 1e3) / 1e9,
        rounds=[{"runs": len(lat), "median_ms": float(np.median(lat) * 1e3), "min_ms": float(min(lat) * 1e3),
                 "max_ms": float(max(lat) * 1e3)} for lat, _ in parts],
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
        r.speedup = ref.median_ms / r.median_ms
        r.speedup_rounds = [b["median_ms"] / m["median_ms"] for b, m in zip(ref.rounds, r.rounds)]
        spread = (max(r.speedup_rounds) - min(r.speedup_rounds)) / r.speedup
        r.noisy = bool(spread > NOISY_SPREAD)


# -- a served model under load -----------------------------------------------------------------------


def load_server(opts: BenchOptions, bundle: Bundle, sizes: list[int],
                progress: Callable[[str, float], None]) -> list[BenchEntry]:
    """Throughput and latency of the served forward, inverse and round trip at each concurrency:
    `c` clients (threads, one connection each) send `opts.requests` requests each, back to back,
    with the bundle's reference inputs tiled to the batch size. A closed loop like perf_analyzer's
    concurrency mode: a client sends its next request when the previous one is answered. Beside
    the clients' latencies, the server's own split of the time (queue, compute input / infer /
    output) over exactly the measured requests, from its statistics API, as perf_analyzer shows it."""
    from .backends.triton_backend import TritonBackend

    reference = bundle.reference("images", Z)
    levels = [(d, n, c) for d in (FORWARD, INVERSE, ROUNDTRIP) for n in sizes for c in opts.concurrency]
    entries = []
    for done, (direction, n, c) in enumerate(levels):
        source = reference[Z if direction == INVERSE else "images"]
        x = np.ascontiguousarray(np.resize(source, (n, *source.shape[1:])))
        # one client per thread, made in it; warm, then released together once the server's
        # statistics are read
        warm, go = threading.Barrier(c + 1), threading.Barrier(c + 1)
        results: list[dict[str, Any]] = [{} for _ in range(c)]
        threads = [threading.Thread(target=_client, args=(bundle, direction, opts, x, (warm, go), out))
                   for out in results]
        with TritonBackend(bundle, direction, opts.server, opts.server_timeout_s) as observer:
            for t in threads:
                t.start()
            try:
                with contextlib.suppress(threading.BrokenBarrierError):  # broken: a client failed, reported below
                    warm.wait()  # every client connected and warm
                before = _statistics(observer)
                with contextlib.suppress(threading.BrokenBarrierError):
                    go.wait()
            except BaseException:  # no client may wait on a barrier forever (not on success: a
                warm.abort()       # released thread that has not yet woken would see it broken)
                go.abort()
                raise
            start = time.perf_counter()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            failed = [r["error"] for r in results if "error" in r]
            if failed:
                raise IRevNetError(f"a client of the load failed: {failed[0]}")
            after = _statistics(observer)
        latencies = [r["latencies"] for r in results]
        flat = [t for lat in latencies for t in lat]
        stats = _stats(flat, n) | {"images_per_s": n * len(flat) / wall}  # throughput of all clients together
        label = results[0]["name"]
        entries.append(BenchEntry(
            label, "triton", str(bundle.path), bundle.precision, direction, n, stats,
            gflops=conv_flops(bundle.config) * (2 if direction == ROUNDTRIP else 1) * n * len(flat) / wall / 1e9,
            rounds=[{"runs": len(lat), "median_ms": float(np.median(lat) * 1e3), "min_ms": float(min(lat) * 1e3),
                     "max_ms": float(max(lat) * 1e3)} for lat in latencies],
            concurrency=c, server=ServerSplit.between(before, after),
        ))
        progress(f"{label} {direction} batch {n} x{c} clients", (done + 1) / len(levels))
    return entries


def _statistics(observer) -> dict[str, dict[str, int]] | None:
    """The served model's statistics, or None where the server will not give them (restricted,
    or an answer that does not check): the load is still measured, without the server's split."""
    try:
        return observer.statistics()
    except IRevNetError:
        return None


def _client(bundle: Bundle, direction: str, opts: BenchOptions, x: np.ndarray,
            barriers: tuple[Any, Any], out: dict[str, Any]) -> None:
    """One client of load_server: connect, warm up, wait for the others, then send
    `opts.requests` requests back to back, recording each one's latency."""
    from .backends.triton_backend import TritonBackend

    warm, go = barriers
    try:
        client = TritonBackend(bundle, direction, opts.server, opts.server_timeout_s)
        feed = {client.inputs[0]["name"]: x}
        outputs = [RECONSTRUCTION] if direction == ROUNDTRIP else None  # the round trip's image, as a client wants it
        client.infer(feed, outputs)
        out["name"] = client.name
    except Exception as e:  # noqa: BLE001 - reported by the main thread, which must not wait forever
        out["error"] = str(e)
        warm.abort()
        go.abort()
        return
    try:
        warm.wait()
        go.wait()
        out["latencies"] = [_timed(lambda: client.infer(feed, outputs)) for _ in range(opts.requests)]
    except threading.BrokenBarrierError:
        pass  # another client failed to start: its error is the one reported
    except Exception as e:  # noqa: BLE001
        out["error"] = str(e)
    finally:
        client.close()
