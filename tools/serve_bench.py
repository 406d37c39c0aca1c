"""Served vs in-process, in one run: a bundle's forward, inverse and round trip through a real
tritonserver at 1, 4 and 16 concurrent clients, with and without dynamic batching, over HTTP and
gRPC, beside the in-process ONNX Runtime; then the first request of a fresh server against the
median (the warm-up's effect), and the seconds from SIGTERM to exit with an idle keep-alive
client connected (a command, not a test).

    python tools/serve_bench.py BUNDLE [--requests 200] [--threads 2] [--json results.json]

Each load level is closed-loop (a client sends its next request when the previous one is
answered), like perf_analyzer's concurrency mode; perf_analyzer itself is not installable here
(the pip package `perf-analyzer` is a 0.1.0 placeholder, tritonclient ships no binary). Latencies
are measured in the client, so they include the client library's own time, as perf_analyzer's do.
Needs the server as `irevnet serve` does (IREVNET_TRITON_ENV or --python-env).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from irevnet.contract import FORWARD, IMAGE, INVERSE, REFERENCE_IMAGES, ROUNDTRIP, Z
from irevnet.runtime import Bundle, open_backend
from irevnet.runtime.bench import BenchOptions
from irevnet.runtime.load_test import load_server
from irevnet.serving.repository import TritonOptions, write_repository
from irevnet.serving.server import ServeOptions, serve


def in_process(bundle: Bundle, threads: int, requests: int) -> list[dict]:
    """One client calling the runtime directly, batch 1, `requests` calls per graph."""
    import time

    rows = []
    ref = bundle.reference(REFERENCE_IMAGES, Z)
    with open_backend("onnxruntime", bundle, FORWARD, threads=threads) as fwd, \
            open_backend("onnxruntime", bundle, INVERSE, threads=threads) as inv:
        calls = {FORWARD: lambda: fwd.infer({IMAGE: ref.images[:1]}),
                 INVERSE: lambda: inv.infer({Z: ref.z[:1]}),
                 ROUNDTRIP: lambda: inv.infer({Z: fwd.infer({IMAGE: ref.images[:1]})[Z]})}
        for direction, call in calls.items():
            for _ in range(20):
                call()
            times = []
            for _ in range(requests):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            ms = np.array(times) * 1e3
            rows.append({"where": "in-process", "protocol": "-", "batching": "-", "direction": direction, "clients": 1,
                         "images_per_s": len(ms) / ms.sum() * 1e3, "p50_ms": float(np.median(ms)),
                         "p99_ms": float(np.percentile(ms, 99))})
    return rows


def first_requests(server, bundle: Bundle, repeats: int = 50) -> list[dict]:
    """The first request to each model of a server that has just become ready, against the
    median of the `repeats` that follow (batch 1, HTTP)."""
    from irevnet.runtime.backends.triton_backend import TritonBackend

    ref = bundle.reference(REFERENCE_IMAGES, Z)
    rows = []
    for direction, feed in ((FORWARD, {IMAGE: ref.images[:1]}), (INVERSE, {Z: ref.z[:1]}),
                            (ROUNDTRIP, {IMAGE: ref.images[:1]})):
        with TritonBackend(bundle, direction, f"http://{server.http_url}") as client:
            times = []
            for _ in range(repeats + 1):
                start = time.perf_counter()
                client.infer(feed)
                times.append((time.perf_counter() - start) * 1e3)
        rows.append({"direction": direction, "first_ms": times[0], "median_ms": float(np.median(times[1:]))})
    return rows


def sigterm_seconds(repo: Path, python_env: str | None) -> float:
    """Seconds from SIGTERM to the exit of `irevnet serve` with one idle keep-alive HTTP client."""
    args = [sys.executable, "-m", "irevnet", "serve", str(repo), "--http-port", "0", "--grpc-port", "0",
            "--metrics-port", "0", *(["--python-env", python_env] if python_env else [])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    line = ""
    while "serving" not in line:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("irevnet serve did not start")
    host, port = line.split("HTTP ", 1)[1].split(",", 1)[0].rsplit(":", 1)
    idle = socket.create_connection((host, int(port)))
    idle.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    idle.recv(1024)  # answered; the connection stays open, idle
    start = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    idle.close()
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--requests", type=int, default=200, help="per client and load level")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, in-process and per server instance")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--python-env", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    bundle = Bundle.open(args.bundle)
    rows = in_process(bundle, args.threads, args.requests)
    firsts, stops = [], []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        for batching in (True, False):
            repo = Path(scratch) / f"models-{batching}"
            write_repository(TritonOptions(bundle=args.bundle, out=str(repo), threads=args.threads,
                                           dynamic_batching=batching))
            options = ServeOptions(target=str(repo), http_port=0, grpc_port=0, metrics_port=0, python_env=args.python_env)
            with serve(options) as server:
                if batching:
                    firsts = first_requests(server, bundle)
                for protocol, url in (("http", f"http://{server.http_url}"), ("grpc", f"grpc://{server.grpc_url}")):
                    opts = BenchOptions([args.bundle], server=url, concurrency=levels, requests=args.requests)
                    for e in load_server(opts, bundle, [1], lambda what, frac: print(f"  {what}", file=sys.stderr)):
                        rows.append({"where": "served", "protocol": protocol, "batching": "on" if batching else "off",
                                     "direction": e.direction, "clients": e.concurrency,
                                     "images_per_s": e.stats.images_per_s, "p50_ms": e.stats.median_ms,
                                     "p99_ms": e.stats.p99_ms})
        stops = [sigterm_seconds(Path(scratch) / "models-True", args.python_env) for _ in range(3)]
    print(f"{'where':<11}{'protocol':<9}{'batching':<9}{'direction':<10}{'clients':>8}{'images/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
    for r in rows:
        print(f"{r['where']:<11}{r['protocol']:<9}{r['batching']:<9}{r['direction']:<10}{r['clients']:>8}"
              f"{r['images_per_s']:>11,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}")
    print("\nfirst request of a fresh server (warmed at load) vs the median of the next 50, HTTP, batch 1")
    for r in firsts:
        print(f"{r['direction']:<10} first {r['first_ms']:7.2f} ms   median {r['median_ms']:7.2f} ms")
    print(f"\nSIGTERM to exit with an idle keep-alive client: {', '.join(f'{t:.1f} s' for t in stops)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"load": rows, "first_requests": firsts, "sigterm_s": stops}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
