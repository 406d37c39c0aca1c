"""The ONNX Runtime backend: provider choice, and CPU sessions sharing one copy of the weights."""

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from irevnet.contract import FORWARD, IMAGE, INVERSE, LOGITS, ONNX_SUFFIX, REFERENCE_IMAGES, Precision, Z
from irevnet.errors import IRevNetError
from irevnet.export.bundle import ExportOptions, export_bundle
from irevnet.io.checkpoint import save_checkpoint
from irevnet.runtime import Bundle, Invertible, open_backend
from irevnet.runtime.backends import ort_offline
from irevnet.runtime.backends.ort_backend import OrtBackend
from tests.conftest import small_model


def test_onnxruntime_provider_choice_errors(bundles):
    bundle = Bundle.open(bundles[Precision.fp32])
    with pytest.raises(IRevNetError, match="unknown provider 'rocm'"):
        open_backend("onnxruntime", bundle, FORWARD, providers=["rocm"])
    from irevnet.runtime.backends.ort_backend import available_providers

    if "cuda" not in available_providers():
        with pytest.raises(IRevNetError, match="provider 'cuda' is not available"):
            open_backend("onnxruntime", bundle, FORWARD, providers=["cuda"])


def _online(bundle, graph):
    """The graph as a session that optimizes on its own (the path before the offline cache)."""
    model, initializers = bundle.session_inputs(graph)
    return OrtBackend(model, threads=1, initializers=initializers)


def test_both_directions_share_one_copy_of_the_weights(bundles):
    """Invertible's two CPU sessions are handed the same arrays for the weights the graphs have in
    common (F's, NCHWc-reordered), and compute exactly what a self-optimizing session computes."""
    with Invertible(bundles[Precision.fp32], threads=1) as net:
        fwd = {a.ctypes.data: a.nbytes for a in net.forward.arrays}
        inv = {a.ctypes.data: a.nbytes for a in net.inverse.arrays}
        shared = sum(fwd[p] for p in set(fwd) & set(inv))
        # every weight of the inverse is one of F's: all of its external bytes are the forward's
        assert shared == sum(inv.values()) and shared >= 100_000
        x = net.bundle.reference(REFERENCE_IMAGES).images
        logits, z = net.encode(x)
        online = _online(net.bundle, FORWARD).infer({IMAGE: x})
        assert np.array_equal(logits, online[LOGITS]) and np.array_equal(z, online[Z]), "same kernels, same bits"
        rel = np.linalg.norm(net.decode(z) - x) / np.linalg.norm(x)
        assert rel <= 1e-5, "fp32 round trip (measured ~1e-7)"


_RSS_SCRIPT = """
import json, sys
from irevnet.runtime import Bundle, open_backend
def rss():
    return next(int(l.split()[1]) << 10 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
bundle = Bundle.open(sys.argv[1])
x = bundle.reference("images").images[:1]
forward = open_backend("onnxruntime", bundle, "forward", threads=1)
z = forward.infer({"image": x})["z"]
before = rss()
inverse = open_backend("onnxruntime", bundle, "inverse", threads=1)
inverse.infer({"z": z})
print(json.dumps({"inverse": rss() - before, "weights": bundle.manifest.weights.bytes}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set size from Linux's /proc")
def test_opening_the_inverse_beside_the_forward_costs_no_second_copy(tmp_path):
    """Resident memory, fresh process: with the forward session open, opening and running the
    inverse adds almost nothing. Measured on a 44 MB irevnet-301 (4 blocks, 64x64): +0 MB; a
    session optimizing on its own added 131 MB (a copy of the weights plus its NCHWc copy)."""
    save_checkpoint(tmp_path / "c.pt", small_model("irevnet-301"))
    export_bundle(ExportOptions(checkpoint=str(tmp_path / "c.pt"), out=str(tmp_path / "b"), max_batch=2, samples=2,
                                debug_graphs=False))
    run = [sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / "b")]
    subprocess.run(run, check=True, capture_output=True)  # optimizes the graphs into the cache
    measured = json.loads(subprocess.run(run, check=True, capture_output=True, text=True).stdout)
    assert measured[INVERSE] <= measured["weights"] // 4, measured


def test_the_cache_is_checked_and_rebuilt(bundles):
    """A cached tensor that no longer matches its sha256, or a cached graph pointing outside the
    cache, is not used: the graph is optimized again and runs as before."""
    bundle = Bundle.open(bundles[Precision.fp32])
    x = bundle.reference(REFERENCE_IMAGES).images
    expected = open_backend("onnxruntime", bundle, FORWARD, threads=1).infer({IMAGE: x})[Z]
    graph = ort_offline.cache_root() / (ort_offline.graph_key(bundle, FORWARD) + ONNX_SUFFIX)
    model = onnx.load(graph, load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    tensor = graph.parent / max(external, key=lambda t: np.prod(t.dims)).external_data[0].value
    tensor.write_bytes(b"\0" * tensor.stat().st_size)
    ort_offline.forget_shared_tensors()
    assert np.array_equal(open_backend("onnxruntime", bundle, FORWARD, threads=1).infer({IMAGE: x})[Z], expected)
    assert hashlib.sha256(tensor.read_bytes()).hexdigest() == tensor.stem, "rewritten from the bundle"

    external[0].external_data[0].value = "../" + external[0].external_data[0].value
    graph.write_bytes(model.SerializeToString())
    with pytest.raises(ValueError, match="does not match the sha256 recorded"):
        ort_offline.load_cached(graph)
    graph.with_suffix(".sha256").write_text(hashlib.sha256(graph.read_bytes()).hexdigest())  # the record rewritten too
    with pytest.raises(ValueError, match="not a file of the cache"):
        ort_offline.load_cached(graph)
    assert np.array_equal(open_backend("onnxruntime", bundle, FORWARD, threads=1).infer({IMAGE: x})[Z], expected)


def test_an_unwritable_cache_falls_back_to_a_session_of_its_own(bundles, tmp_path, monkeypatch, caplog):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(ort_offline, "cache_root", lambda: tmp_path / "file" / "cache")
    bundle = Bundle.open(bundles[Precision.fp32])
    x = bundle.reference(REFERENCE_IMAGES).images
    with caplog.at_level(logging.WARNING):
        backend = open_backend("onnxruntime", bundle, FORWARD, threads=1)
    assert "keeps its own copy of the weights" in caplog.text
    assert np.array_equal(backend.infer({IMAGE: x})[Z], _online(bundle, FORWARD).infer({IMAGE: x})[Z])
