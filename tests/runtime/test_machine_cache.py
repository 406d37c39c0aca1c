"""The machine cache (optimized ONNX Runtime graphs) is an input like any other: whatever it holds,
a bundle computes what its hashes name, and a damaged cache is prepared again, never trusted,
waited on or allocated for."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from irevnet.contract import FORWARD, IMAGE, ONNX_SUFFIX, REFERENCE_IMAGES, Precision, Z
from irevnet.io.files import machine_cache
from irevnet.runtime import Bundle, open_backend
from irevnet.runtime.backends import ort_offline
from tests.conftest import PEAK_RSS


@pytest.fixture
def warm(bundles):
    """(bundle, images, z of an intact cache, the cached forward graph's path), the cache warm."""
    bundle = Bundle.open(bundles[Precision.fp32])
    x = bundle.reference(REFERENCE_IMAGES).images
    z = open_backend("onnxruntime", bundle, FORWARD, threads=1).infer({IMAGE: x})[Z]
    ort_offline.forget_shared_tensors()
    return bundle, x, z, ort_offline.cache_root() / (ort_offline.graph_key(bundle, FORWARD) + ONNX_SUFFIX)


def _z(bundle, x):
    ort_offline.forget_shared_tensors()  # read the cache again, as a new process would
    return open_backend("onnxruntime", bundle, FORWARD, threads=1).infer({IMAGE: x})[Z]


def _largest_tensor(graph: Path) -> Path:
    model = onnx.load(graph, load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    return graph.parent / max(external, key=lambda t: np.prod(t.dims)).external_data[0].value


def _flip_inline_byte(graph: Path) -> None:
    """Changes one value of an inline initializer: still a valid graph, computing other numbers."""
    model = onnx.load(graph, load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.raw_data and t.data_type == onnx.TensorProto.FLOAT)
    raw = bytearray(tensor.raw_data)
    raw[3] ^= 0x40
    tensor.raw_data = bytes(raw)
    graph.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("damage", ["byte", "truncate", "fifo", "link", "record"])
def test_a_damaged_cached_graph_is_prepared_again(warm, damage, tmp_path, caplog):
    bundle, x, z, graph = warm
    if damage == "byte":
        _flip_inline_byte(graph)
    elif damage == "truncate":
        graph.write_bytes(graph.read_bytes()[:1000])
    elif damage == "fifo":
        graph.unlink()
        os.mkfifo(graph)  # reading it would wait for a writer forever
    elif damage == "link":
        (tmp_path / "other.onnx").write_bytes(graph.read_bytes())
        _flip_inline_byte(tmp_path / "other.onnx")
        graph.unlink()
        graph.symlink_to(tmp_path / "other.onnx")
    else:  # a record that names other bytes
        graph.with_suffix(".sha256").write_text("0" * 64)
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(_z(bundle, x), z), "the bundle's numbers, whatever the cache held"
    assert "preparing it again" in caplog.text
    assert graph.is_file() and not graph.is_symlink(), "replaced by a freshly prepared graph"


def test_a_huge_sparse_cached_tensor_is_not_read(warm):
    """An 8 GiB sparse file in place of a cached tensor costs a stat, not 8 GiB: a fresh process
    (so that nothing earlier hides its peak) stays under 1 GB and computes the bundle's numbers."""
    bundle, _, z, graph = warm
    tensor = _largest_tensor(graph)
    with open(tensor, "r+b") as f:
        f.truncate(8 << 30)
    code = (
        "import json, sys, numpy as np\n"
        "from irevnet.runtime import Bundle, open_backend\n"
        "b = Bundle.open(sys.argv[1]); x = b.reference('images').images\n"
        "z = open_backend('onnxruntime', b, 'forward', threads=1).infer({'image': x})['z']\n"
        "np.save(sys.argv[2], z)\n"
        f"print(json.dumps({PEAK_RSS}))\n"
    )
    out = Path(str(graph) + ".z.npy")
    proc = subprocess.run([sys.executable, "-c", code, str(bundle.path), str(out)], check=False, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) < 1 << 30
    assert np.array_equal(np.load(out), z)
    assert tensor.stat().st_size < 1 << 30, "the tensor was written again from the bundle"


def test_work_folders_of_dead_preparations_are_removed(warm):
    bundle, x, z, graph = warm
    dead = 1
    while True:  # a pid no process has now
        dead += 7919
        try:
            os.kill(dead, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            continue
    stale = graph.parent / f".prepare.{dead}.abcd1234.tmp"
    stale.mkdir()
    (stale / "graph.data").write_bytes(b"\0" * 4096)  # a killed preparation's half-written copy
    graph.with_suffix(".sha256").unlink()  # the next open prepares the graph again
    assert np.array_equal(_z(bundle, x), z)
    assert not stale.exists()
    assert not [p for p in graph.parent.iterdir() if p.name.startswith(".prepare.")], "its own folder is gone too"


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch):
    """The XDG spec: relative paths are invalid and ignored. Else the cache would land in whatever
    folder a command runs from, a bundle's included."""
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert machine_cache() == Path.home() / ".cache" / "irevnet"
    monkeypatch.setenv("XDG_CACHE_HOME", "/abs/cache")
    assert machine_cache() == Path("/abs/cache/irevnet")


def test_a_cache_that_cannot_be_written_falls_back_with_one_warning(bundles, tmp_path):
    """A full disk under the cache gave ONNX Runtime's traceback (its errors derive from Exception,
    not RuntimeError): the graph now opens with its own weights and one warning line per graph.
    The full disk is RLIMIT_FSIZE: every write past 64 KB fails, as at ENOSPC."""
    import resource
    import signal

    def full_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "irevnet", "verify", str(bundles[Precision.fp32]), "--no-blocks"],
                          preexec_fn=full_disk, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "verify passed" in proc.stdout, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(warnings) == 2 and all(w.startswith("cannot cache the optimized") for w in warnings), proc.stderr
    assert "Traceback" not in proc.stderr
    leftovers = [p.name for p in (tmp_path / "cache" / "irevnet").rglob("*") if ".prepare." in p.name]
    assert not leftovers, leftovers
