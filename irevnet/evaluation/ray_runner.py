"""The chunks of an evaluation on Ray: one actor per worker holds a target's graphs (opened once)
and computes whole chunks; Ray retries a chunk whose worker died (the actor is restarted), and
the driver writes each chunk's records once, as they come back, so no image is lost or counted
twice. Each actor opens the bundle on its own node and checks it (every file's sha256, and the
manifest's against the one the driver checked) before it runs anything; the dataset and the
bundle must be at the same paths on every node (a shared file system), as for Ray Data's readers.

`--ray` starts a local instance with one CPU per worker; `--ray-address` joins a cluster, whose
address must answer within RAY_CONNECT_TIMEOUT_S.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from ..errors import IRevNetError
from ..io.splits import Split
from .engine import Engine, Target
from .records import RunIdentity

RAY_CONNECT_TIMEOUT_S = 10.0
RETRIES = 3  # restarts of a dead worker, and retries of the chunk it was computing


def _ray():
    try:
        import ray
    except ImportError:
        raise IRevNetError("--ray needs Ray: pip install 'irevnet[ray]'") from None
    return ray


class _Worker:
    """A Ray actor: the target and the split, opened on its node, and an Engine over them."""

    def __init__(self, opts: Any, expected_sha256: str):
        import dataclasses

        import ray

        from ..io.splits import open_split
        from .engine import open_target

        if opts.threads is None:  # the runtime's threads on the CPUs Ray gave this actor, not on every core
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
            opts = dataclasses.replace(opts, threads=max(1, int(cpus)))
        target = open_target(opts)
        if target.sha256 != expected_sha256:
            raise IRevNetError(f"{socket.gethostname()}: {target.path} is not the {target.kind} the driver checked (its "
                               f"sha256 {target.sha256[:16]}..., the driver's {expected_sha256[:16]}...); put the same "
                               f"one on every node")
        self.split = open_split(opts.dataset, opts.split, target.in_shape, opts.limit)
        self.chunk_size = opts.chunk_size
        self.engine = Engine(target, self.split, round_trip=opts.round_trip, batch_size=opts.batch_size,
                             workers=opts.workers, strict=opts.strict)

    def backend(self) -> str:
        return self.engine.backend

    def pid(self) -> int:
        return os.getpid()

    def run(self, identity: bytes, chunk: int) -> tuple[int, bytes]:
        """(chunk, its records table as Arrow IPC bytes)."""
        import pyarrow as pa

        self.engine.identity = RunIdentity.from_json(identity, "the driver's run")
        items = self.split.items[chunk * self.chunk_size:(chunk + 1) * self.chunk_size]
        ((_, table),) = list(self.engine.run([(chunk, items)]))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return chunk, sink.getvalue().to_pybytes()


class RayRunner:
    """Computes chunks on `opts.ray_workers` actors; `backend` is what they run."""

    identity: RunIdentity

    def __init__(self, opts: Any, target: Target, split: Split):
        ray = _ray()
        self.ray, self.started = ray, False
        if opts.ray_address:
            _reachable(opts.ray_address)
        if not ray.is_initialized():
            if opts.ray_address:
                ray.init(address=opts.ray_address, log_to_driver=False)
            else:
                ray.init(num_cpus=opts.ray_workers, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
                self.started = True
        worker = ray.remote(num_cpus=1, max_restarts=RETRIES, max_task_retries=RETRIES)(_Worker)
        self.actors = [worker.remote(opts, target.sha256) for _ in range(opts.ray_workers)]
        try:
            self.backend = ray.get(self.actors[0].backend.remote())
        except ray.exceptions.RayActorError as e:
            self.close()
            raise IRevNetError(f"a Ray worker could not open the target: {_cause(e)}") from None

    def run(self, chunks: list[tuple[int, list]], on_batch: Any = None) -> Iterator[tuple[int, Any]]:
        """(chunk, its table) as each finishes, in any order (on_batch: not on Ray, see evaluate)."""
        import pyarrow as pa
        from ray.util import ActorPool

        identity = self.identity.to_json()
        pool = ActorPool(self.actors)
        results = pool.map_unordered(lambda actor, c: actor.run.remote(identity, c), [c for c, _ in chunks])
        try:
            for chunk, data in results:
                yield chunk, pa.ipc.open_stream(data).read_all()
        except self.ray.exceptions.RayError as e:
            raise IRevNetError(f"a chunk failed on Ray after {RETRIES} retries: {_cause(e)}") from None

    def pids(self) -> list[int]:
        return self.ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)
        if self.started:
            self.ray.shutdown()


def _cause(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    errors = [line for line in lines if "IRevNetError" in line or "Error:" in line]
    return (errors[-1] if errors else lines[-1] if lines else type(e).__name__).split("IRevNetError: ")[-1][:300]


def _reachable(address: str) -> None:
    """A cluster address that does not answer is one line within RAY_CONNECT_TIMEOUT_S (Ray's own
    connect retries for a minute and more)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise IRevNetError(f"--ray-address {address[:80]!r}: give HOST:PORT of the cluster's head (or ray://HOST:PORT)")
    deadline = time.monotonic() + RAY_CONNECT_TIMEOUT_S
    try:
        with socket.create_connection((host, int(port)), timeout=max(deadline - time.monotonic(), 0.1)):
            pass
    except OSError as e:
        raise IRevNetError(f"no Ray cluster answers at {address} ({e.strerror or e}) within "
                           f"{RAY_CONNECT_TIMEOUT_S:g} s; start one with `ray start --head`, or check the address") from None
