"""Chunks on a real local Ray cluster (ray.init with 2 CPUs): the same records as one process,
also when a worker is killed in the middle of a chunk."""

from __future__ import annotations

import os
import signal
import time

import pytest

from irevnet.contract import Precision
from irevnet.errors import IRevNetError
from irevnet.evaluation.run import EvaluateOptions, evaluate

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'irevnet[ray]'")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance for the module's runs (`--ray` alone starts and stops its own)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _options(bundle, records, **kw):
    return EvaluateOptions(target=str(bundle), dataset="synthetic", limit=2048, chunk_size=128, records=str(records),
                           workers=0, **kw)


def test_ray_gives_one_process_records_also_with_a_worker_killed(bundles, cluster, tmp_path):
    from irevnet.evaluation import ray_runner

    one = tmp_path / "one.parquet"
    evaluate(_options(bundles[Precision.fp32], one))
    spread = tmp_path / "ray.parquet"
    report = evaluate(_options(bundles[Precision.fp32], spread, ray=True, ray_workers=2))
    assert spread.read_bytes() == one.read_bytes() and report.chunks == 16

    # kill one worker as soon as the first chunk is back: Ray restarts it and retries its chunk
    killed = []
    original = ray_runner.RayRunner.run

    def run_and_kill(self, chunks, on_batch=None):
        for k, result in enumerate(original(self, chunks, on_batch)):
            if k == 0:
                pid = self.pids()[1]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            yield result

    ray_runner.RayRunner.run = run_and_kill
    try:
        retried = tmp_path / "killed.parquet"
        evaluate(_options(bundles[Precision.fp32], retried, ray=True, ray_workers=2))
    finally:
        ray_runner.RayRunner.run = original
    assert killed, "a worker was killed"
    assert retried.read_bytes() == one.read_bytes(), "no image lost, none counted twice"


def test_a_ray_address_that_does_not_answer_is_one_line_within_seconds(bundles, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(IRevNetError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        evaluate(_options(bundles[Precision.fp32], tmp_path / "r.parquet", ray_address=f"127.0.0.1:{port}"))
    assert time.monotonic() - start < 30, "bounded: RAY_CONNECT_TIMEOUT_S, not Ray's own minute of retries"
