"""`irevnet bench`: latency percentiles and throughput per backend, direction and batch size.

Like trtexec's summary: min / median / mean / p90 / p95 / p99 / max of the host-side latency of
one `infer` call (inputs on the host, outputs back on the host), and images/s. GPU backends also
report device time from CUDA events. Achieved GFLOP/s come from the architecture's convolution
count, next to the machine's fp32 matmul rate measured with numpy.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from .. import validation as check
from ..config import IRevNetConfig
from ..errors import IRevNetError
from .backends import open_backend, resolve_backend
from .bundle import FORWARD, INVERSE, Bundle


class Direction(str, Enum):
    forward = "forward"
    inverse = "inverse"
    both = "both"


@dataclass
class BenchOptions:
    bundle: str
    backends: list[str] = field(default_factory=lambda: ["onnxruntime"])
    direction: Direction = Direction.both
    batch_sizes: list[int] | None = None  # default: 1, 8 and the bundle's max batch, those within it
    warmup_s: float = 1.0
    duration_s: float = 3.0
    iterations: int | None = None  # fixed count instead of duration_s
    threads: int | None = None
    providers: list[str] | None = None
    device: str = "auto"
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", Direction(self.direction))
        self.backends = [resolve_backend(b) for b in self.backends]
        for n in self.batch_sizes or []:
            check.integer("batch_sizes", n, 1, check.MAX_BATCH)
        check.integer("iterations", self.iterations, 1, 10**9, optional=True)
        if self.iterations is None:  # a fixed count replaces the duration
            check.number("duration_s", self.duration_s, 0.0, 86400.0, low_open=True)
        check.number("warmup_s", self.warmup_s, 0.0, 86400.0)
        check.threads(self.threads)



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
        "images_per_s": float(batch * len(ms) / ms.sum() * 1e3),
    }


def bench(opts: BenchOptions, progress: Callable[[str, float], None] = lambda what, frac: None) -> dict[str, Any]:
    """Measures every (backend, direction, batch size); see the module docstring."""
    bundle = Bundle.open(opts.bundle)
    directions = [FORWARD, INVERSE] if opts.direction is Direction.both else [opts.direction.value]
    backends = opts.backends
    sizes = opts.batch_sizes or sorted({n for n in (1, 8, bundle.max_batch) if n <= bundle.max_batch})
    for n in sizes:
        if not 1 <= n <= bundle.max_batch:
            raise IRevNetError(f"batch size {n} is outside the bundle's range 1..{bundle.max_batch}; re-export with --max-batch")
    cfg = bundle.config
    flops = conv_flops(cfg)
    reference = bundle.reference("images", "z")  # real inputs and the z PyTorch made of them, tiled to each batch
    results = []
    jobs = [(k, d, n) for k in backends for d in directions for n in sizes]
    for j, (kind, direction, n) in enumerate(jobs):
        feed_name = "image" if direction == FORWARD else "z"
        source = reference["images" if direction == FORWARD else "z"]
        x = np.ascontiguousarray(np.resize(source, (n, *source.shape[1:])))
        with open_backend(kind, bundle, direction, providers=opts.providers, threads=opts.threads,
                          device=opts.device, checkpoint=opts.checkpoint) as backend:
            name = backend.name
            label = f"{name} {direction} batch {n}"
            run = functools.partial(backend.infer, {feed_name: x})
            deadline = time.perf_counter() + opts.warmup_s
            run()
            while time.perf_counter() < deadline:
                run()
            latencies, device_ms = [], []
            start = time.perf_counter()
            while True:
                latencies.append(_timed(run))
                if backend.last_device_ms is not None:
                    device_ms.append(backend.last_device_ms)
                done = len(latencies) / opts.iterations if opts.iterations else (time.perf_counter() - start) / opts.duration_s
                progress(label, (j + min(done, 1.0)) / len(jobs))
                if done >= 1.0:
                    break
        entry = {"backend": name, "kind": kind, "direction": direction, "batch": n, **_stats(latencies, n)}
        entry["gflops"] = flops * n / (entry["mean_ms"] / 1e3) / 1e9
        if device_ms:
            entry["device_median_ms"] = float(np.median(device_ms))
        results.append(entry)
    _ratios(results, backends)
    return {
        "bundle": str(bundle.path),
        "precision": bundle.precision,
        "model": {"config": cfg.to_dict(), "gflop_per_image": flops / 1e9},
        "machine": machine_info() | {"fp32_matmul_gflops": matmul_gflops()},
        "threads": opts.threads,
        "settings": {"warmup_s": opts.warmup_s, "duration_s": opts.duration_s, "iterations": opts.iterations},
        "results": results,
    }


def _ratios(results: list[dict[str, Any]], backends: list[str]) -> None:
    """speedup = baseline mean latency / this mean latency; baseline torch if present, else the first."""
    base = "torch" if "torch" in backends else backends[0]
    by_key = {(r["direction"], r["batch"]): r for r in results if r["kind"] == base}
    for r in results:
        ref = by_key.get((r["direction"], r["batch"]))
        r["baseline"] = ref["backend"] if ref else None
        r["speedup"] = ref["mean_ms"] / r["mean_ms"] if ref else None
