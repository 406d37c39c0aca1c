"""A served model under load (`irevnet bench --server URL --concurrency 1,4,16`): throughput and
latency of the served forward, inverse and round trip at each number of concurrent clients, with
the server's own split of the time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contract import FORWARD, INVERSE, RECONSTRUCTION, REFERENCE_IMAGES, ROUNDTRIP, Z
from ..errors import IRevNetError
from .bundle import Bundle
from .timing import BenchEntry, LatencyStats, Round, conv_flops, tiled_input, timed

if TYPE_CHECKING:
    from .bench import BenchOptions

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
    def between(cls, before: dict[str, dict[str, int]] | None,
                after: dict[str, dict[str, int]] | None) -> ServerSplit | None:
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


def load_server(opts: BenchOptions, bundle: Bundle, sizes: list[int],
                progress: Callable[[str, float], None]) -> list[BenchEntry]:
    """Throughput and latency of the served forward, inverse and round trip at each concurrency:
    `c` clients (threads, one connection each) send `opts.requests` requests each, back to back,
    with the bundle's reference inputs tiled to the batch size. A closed loop like perf_analyzer's
    concurrency mode: a client sends its next request when the previous one is answered. Beside
    the clients' latencies, the server's own split of the time (queue, compute input / infer /
    output) over exactly the measured requests, from its statistics API, as perf_analyzer shows it."""
    from .backends.triton_backend import TritonBackend

    reference = bundle.reference(REFERENCE_IMAGES, Z)
    levels = [(d, n, c) for d in (FORWARD, INVERSE, ROUNDTRIP) for n in sizes for c in opts.concurrency]
    entries = []
    for done, (direction, n, c) in enumerate(levels):
        x = tiled_input(reference, direction, n)
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
        stats = replace(LatencyStats.of(flat, n), images_per_s=n * len(flat) / wall)  # all clients together
        label = results[0]["name"]
        entries.append(BenchEntry(
            label, "triton", str(bundle.path), bundle.precision, direction, n, stats,
            gflops=conv_flops(bundle.config) * (2 if direction == ROUNDTRIP else 1) * n * len(flat) / wall / 1e9,
            rounds=[Round.of(lat) for lat in latencies], concurrency=c, server=ServerSplit.between(before, after),
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
        out["latencies"] = [timed(lambda: client.infer(feed, outputs)) for _ in range(opts.requests)]
    except threading.BrokenBarrierError:
        pass  # another client failed to start: its error is the one reported
    except Exception as e:  # noqa: BLE001
        out["error"] = str(e)
    finally:
        client.close()
