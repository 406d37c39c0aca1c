"""Shared fixtures: seeded RNGs, models with non-trivial BatchNorm statistics."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import torch

import irevnet
from irevnet.contract import MANIFEST, Precision


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """The runtime's machine caches (optimized ONNX Runtime graphs, TensorRT provider engines)
    go to a folder of this test session, not the user's ~/.cache. The server's environment for
    the serving tests (made on first use, about a minute) stays in the user's cache, so it is
    made once per machine, not per session."""
    from irevnet.serving.environment import ENV_VARIABLE, default_env

    previous = os.environ.get("XDG_CACHE_HOME")
    env_before = os.environ.get(ENV_VARIABLE)
    os.environ.setdefault(ENV_VARIABLE, str(default_env()))
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous
    if env_before is None:
        del os.environ[ENV_VARIABLE]


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Gives every BatchNorm non-trivial running statistics and affine parameters, as training
    would, so that an inverse that ignores them cannot pass."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model


# Small members of every preset family: what the tests build instead of the full-size presets.
SMALL_FAMILIES = {
    "irevnet-tiny": {},
    "irevnet-tiny-bijective": {},
    "irevnet-cifar": {"blocks": (2, 2, 2)},
    "irevnet-301": {"blocks": (1, 1, 1, 1), "in_shape": (3, 64, 64)},
}


def small_model(family: str, seed: int = 0) -> irevnet.IRevNet:
    torch.manual_seed(seed)
    return randomize_batchnorm(irevnet.create_model(family, **SMALL_FAMILIES[family]), seed).eval()


# preset=RUN_FOLDER,...: the runs a parent test session trained already, which a test session it
# starts (tests/test_cpu_isas.py) takes instead of training them again
TRAINED_RUNS = "IREVNET_TESTS_TRAINED_RUNS"


def _train_digits(root, preset: str, epochs: int = 10):
    from irevnet.training.loop import train
    from irevnet.training.options import TrainOptions

    given = dict(entry.split("=", 1) for entry in os.environ.get(TRAINED_RUNS, "").split(",") if "=" in entry)
    if preset in given and epochs == 10:
        return Path(given[preset])
    out = root / preset
    train(TrainOptions(model=preset, dataset="digits", out=str(out), epochs=epochs, device="cpu"))
    return out


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """irevnet-tiny (injective) trained 10 epochs on the real digits: the run folder.

    Measured here: 98.9% held-out top-1 after 10 epochs, about 7 s on 2 CPU cores.
    """
    return _train_digits(tmp_path_factory.mktemp("runs"), "irevnet-tiny")


@pytest.fixture(scope="session")
def trained_tiny_bijective(tmp_path_factory):
    """irevnet-tiny-bijective trained 10 epochs on the real digits (32x32): the run folder."""
    return _train_digits(tmp_path_factory.mktemp("runs"), "irevnet-tiny-bijective")


def export_tiny(run, out, precision=Precision.fp32, **kw):
    from irevnet.export.bundle import ExportOptions, export_bundle

    export_bundle(ExportOptions(checkpoint=str(run / "best.pt"), out=str(out), precision=precision, dataset="digits",
                                max_batch=8, **kw))
    return out


# every export's trace in this session (export.bundle.trace), by what it was traced from
_TRACED: dict[object, object] = {}
REAL_TRACE = None  # export.bundle.trace itself, for a test that must trace


@pytest.fixture(autouse=True, scope="session")
def _trace_each_model_once():
    """Tracing is most of a tiny model's export, and the tests export the same checkpoints again
    and again (other precisions, plans, outputs, failures): every export in this session takes
    the graphs traced for the first export of the same model and trace options (TraceKey) with
    the same exporter (export_graph, which a test may patch), as export_bundle(traced=) does for
    a caller. The memo keeps the debug graphs, which every trace makes (an export without them
    writes the same forward and inverse graphs). tests/export/test_export.py checks that graphs
    traced once give the files tracing gives."""
    from _pytest.monkeypatch import MonkeyPatch

    from irevnet.export import bundle

    global REAL_TRACE
    real = REAL_TRACE = bundle.trace

    def trace(ckpt, opts, log=lambda msg: None):
        key = bundle.export_graph, bundle.TraceKey.of(ckpt, opts, bundle.weights_sha256(
            bundle.prepare(ckpt.model, bundle.traced_precision(opts.precision))))
        if key not in _TRACED:
            _TRACED[key] = real(ckpt, dataclasses.replace(opts, debug_graphs=True), log)
        return _TRACED[key]

    patch = MonkeyPatch()
    patch.setattr(bundle, "trace", trace)
    yield
    patch.undo()


@pytest.fixture(scope="session")
def bundles(trained_tiny, tmp_path_factory):
    """fp32, mixed and fp16 bundles of the trained irevnet-tiny, debug graphs included (fp32, mixed)."""
    root = tmp_path_factory.mktemp("bundles")
    return {
        Precision.fp32: export_tiny(trained_tiny, root / Precision.fp32),
        Precision.mixed: export_tiny(trained_tiny, root / Precision.mixed, Precision.mixed),
        Precision.fp16: export_tiny(trained_tiny, root / Precision.fp16, Precision.fp16, debug_graphs=False),
    }


@pytest.fixture(scope="session")
def int8_bundle(trained_tiny, tmp_path_factory):
    """The trained irevnet-tiny's int8 bundle (exact coupling, debug graphs included): the folder."""
    return export_tiny(trained_tiny, tmp_path_factory.mktemp(Precision.int8) / "b", Precision.int8)


PLAN = "int8,int8,fp32,int8,fp16,int8"  # a precision plan for irevnet-tiny's 6 blocks: one kept fp32, one fp16


@pytest.fixture(scope="session")
def plan_bundle(trained_tiny, tmp_path_factory):
    """The trained irevnet-tiny's bundle of PLAN."""
    return export_tiny(trained_tiny, tmp_path_factory.mktemp("plans") / "planned", precision_plan=PLAN)


COLOR_CLASSES = 10


@pytest.fixture(scope="session")
def color_bundle(tmp_path_factory):
    """A small 3-channel, 10-class i-RevNet (random weights, BatchNorm statistics set) exported
    for 32x32 images: what tests/evaluation's image folder is evaluated with, and a bundle of
    another model than the digits ones."""
    import irevnet
    from irevnet.export.bundle import ExportOptions, export_bundle
    from irevnet.io.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("color")
    model = randomize_batchnorm(irevnet.create_model("irevnet-cifar", blocks=(1, 1, 1), num_classes=COLOR_CLASSES)).eval()
    ckpt = save_checkpoint(root / "m.pt", model)
    export_bundle(ExportOptions(checkpoint=str(ckpt), out=str(root / "bundle"), max_batch=16, samples=4,
                                debug_graphs=False))
    return root / "bundle"


# Python code for the peak resident bytes of the process running it: VmHWM. Not ru_maxrss, which
# Linux carries across exec, so a child of a large test process would report the parent's size.
PEAK_RSS = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024"


def peak_of_cli(args: list[str], expect_exit: int = 2, timeout: float = 120) -> int:
    """Peak resident bytes of a fresh process running `irevnet ARGS`, after checking its exit code
    (a subprocess: this test process's own peak would hide the allocation)."""
    wrapper = ("import runpy, sys\n"
               "sys.argv = ['irevnet', *sys.argv[1:]]\n"
               "try:\n    runpy.run_module('irevnet', run_name='__main__')\n"
               "except SystemExit as e:\n    code = e.code\n"
               "else:\n    code = 0\n"
               f"print('PEAK', {PEAK_RSS}, code)\n")
    proc = subprocess.run([sys.executable, "-c", wrapper, *args], check=False, capture_output=True, text=True,
                          timeout=timeout)
    line = next((line for line in proc.stdout.splitlines() if line.startswith("PEAK")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    _, peak, code = line.split()
    assert code == str(expect_exit), proc.stdout[-2000:] + proc.stderr[-2000:]
    return int(peak)


T = TypeVar("T")


def side_by_side(calls: dict[str, Callable[[], T]]) -> dict[str, T]:
    """Each call's result by name, as many running at once as this process has CPUs: for calls
    that each measure a fresh process of their own (its peak is its own, whatever runs beside it)."""
    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}


def peaks_of_cli(runs: dict[str, tuple[list[str], int]], timeout: float = 120) -> dict[str, int]:
    """peak_of_cli of each run (name -> (args, expected exit code)), side by side."""
    return side_by_side({name: functools.partial(peak_of_cli, args, code, timeout) for name, (args, code) in runs.items()})


def edit_manifest(bundle: Path, change: Callable[[dict], object]) -> Path:
    """Applies `change` to a bundle's manifest.json in place, as a hand edit (or an attacker) would:
    the manifest is not covered by its own hashes."""
    path = Path(bundle) / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return Path(bundle)


def install_fake_trt(monkeypatch, version: str):
    """Installs the TensorRT test double (tests/runtime/trt_double.py) as `tensorrt`, with a fake
    CUDA device (compute capability 8.9); returns the double's module."""
    from tests.runtime import trt_double

    trt = trt_double.make_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cuda = trt_double.FakeCuda()
    monkeypatch.setattr("irevnet.runtime.gpu.cuda_api", lambda: cuda)  # the one place CUDA is reached
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    """install_fake_trt for one test: call it with a TensorRT version string."""
    return lambda version: install_fake_trt(monkeypatch, version)


def json_objects(node, path: str = ""):
    """(JSON pointer, object) for every JSON object in a document (manifests, the schema)."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from json_objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from json_objects(value, f"{path}/{i}")
