"""The C++ example: its host side (.npy I/O, manifest parsing, de-normalisation), built with
-DIREVNET_BACKEND=NONE, and the whole app on OpenVINO (CPU), built against the installed openvino
wheel and compared with the Python runtime. The TensorRT build is checked on GPU machines
(README, "TensorRT and C++").
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from irevnet.contract import (
    IMAGE,
    INVERSE,
    MANIFEST,
    RECONSTRUCTION,
    REFERENCE,
    SAMPLE_Z,
    WEIGHTS,
    Precision,
    Z,
    graph_file,
)
from irevnet.io.images import denormalize

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cpp"
needs_toolchain = pytest.mark.skipif(
    shutil.which("cmake") is None or (shutil.which("c++") or shutil.which("g++")) is None
    or not Path("/usr/include/openssl/evp.h").exists(),
    reason="needs cmake, a C++17 compiler and OpenSSL's headers (libssl-dev) to build examples/cpp",
)


@pytest.fixture(scope="module")
def io_check(tmp_path_factory):
    build = tmp_path_factory.mktemp("cpp-build")
    for cmd in (
        ["cmake", "-S", str(EXAMPLE), "-B", str(build), "-DIREVNET_BACKEND=NONE"],
        ["cmake", "--build", str(build), "-j", "2"],
    ):
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return build / "io_check"


def _read_pnm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    magic, dims, maxval, rest = data.split(b"\n", 3)
    w, h = map(int, dims.split())
    channels = 3 if magic == b"P6" else 1
    assert maxval == b"255"
    return np.frombuffer(rest, dtype=np.uint8).reshape(h, w, channels)


@needs_toolchain
def test_cpp_reads_npy_and_manifest_and_denormalizes_like_python(io_check, bundles, tmp_path):
    bundle = bundles[Precision.fp32]
    manifest = json.loads((bundle / MANIFEST).read_text())
    images = np.load(bundle / REFERENCE)[RECONSTRUCTION][:3]  # what an inverse returns
    np.save(tmp_path / "image.npy", images)
    out = subprocess.run([str(io_check), str(bundle), str(tmp_path / "image.npy"), str(tmp_path / "px")],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [Precision.fp32, "8", "256x4x4"], "precision, batch max and z shape from the manifest"

    pixels = np.load(tmp_path / "px.npy")  # written by C++, read by numpy
    expected = denormalize(images, manifest["normalization"]["mean"], manifest["normalization"]["std"])
    assert pixels.dtype == np.float32 and pixels.shape == images.shape
    # C++ computes in double and stores float32: agreement to float32 rounding (~6e-8 relative)
    np.testing.assert_allclose(pixels, expected, rtol=2e-7, atol=1e-7)

    pgm = _read_pnm(tmp_path / "px_0.pgm")
    scaled = expected[0].transpose(1, 2, 0).astype(np.float64) * 255.0
    expected_u8 = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    assert pgm.shape == (16, 16, 1)
    # the same rounding (half to even) as numpy, except where the value sits within float32 rounding
    # of a half (C++ rounds its double, numpy the float32): there the two may pick neighbours
    tie = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-4
    assert np.array_equal(pgm[~tie], expected_u8[~tie])
    assert np.abs(pgm.astype(int) - expected_u8.astype(int)).max() <= 1


@needs_toolchain
def test_cpp_reads_the_sample_z_and_refuses_bad_files(io_check, bundles, tmp_path):
    bundle = bundles[Precision.fp32]
    np.save(tmp_path / "f64.npy", np.zeros((1, 1, 16, 16)))  # float64
    out = subprocess.run([str(io_check), str(bundle), str(tmp_path / "f64.npy"), str(tmp_path / "x")],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "expected float32" in out.stderr
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / MANIFEST).write_text('{"schema_version": 1, "precision": ')
    out = subprocess.run([str(io_check), str(tmp_path / "broken"), str(bundle / SAMPLE_Z), str(tmp_path / "x")],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "manifest JSON" in out.stderr
    z = np.load(bundle / SAMPLE_Z)
    assert z.shape == (1, 256, 4, 4) and z.dtype == np.float32, "the export writes a z for the C++ app"


@pytest.fixture(scope="module")
def invert_openvino(tmp_path_factory):
    """irevnet_invert built with -DIREVNET_BACKEND=OPENVINO against the openvino wheel's CMake config."""
    spec = importlib.util.find_spec("openvino")  # found, not imported: see tests/runtime/test_ov_backend.py
    if spec is None:
        pytest.skip("the OpenVINO build needs the openvino wheel (irevnet[openvino])")
    build = tmp_path_factory.mktemp("cpp-openvino")
    config = Path(spec.origin).parent / "cmake"
    for cmd in (
        ["cmake", "-S", str(EXAMPLE), "-B", str(build), "-DIREVNET_BACKEND=OPENVINO", f"-DOpenVINO_DIR={config}"],
        ["cmake", "--build", str(build), "-j", "2"],
    ):
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return build / "irevnet_invert"


@needs_toolchain
@pytest.mark.parametrize("precision", [Precision.fp32, Precision.mixed, Precision.plan])
def test_cpp_app_inverts_on_openvino_like_python(invert_openvino, bundles, request, tmp_path, precision):
    """The C++ app inverts the bundle's sample z and a batch of z on the CPU; its pixels equal the
    Python runtime's (ONNX Runtime) to fp32 rounding: measured 1.8e-7 relative on the fp32 bundle.
    A bundle of a precision plan (int8, fp16 and fp32 blocks) runs unchanged."""
    from irevnet.runtime import Bundle, open_backend

    path = request.getfixturevalue("plan_bundle") if precision == Precision.plan else bundles[precision]
    bundle = Bundle.open(path)
    z = np.concatenate([np.load(bundle.path / SAMPLE_Z), bundle.reference(Z).z[:3]])
    np.save(tmp_path / "z.npy", z)
    out = subprocess.run([str(invert_openvino), str(bundle.path), str(tmp_path / "z.npy"), str(tmp_path / "x")],
                         check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OpenVINO" in out.stderr and "inference precision f32" in out.stderr
    pixels = np.load(tmp_path / "x.npy")
    image = open_backend("onnxruntime", bundle, INVERSE).infer({Z: z})[IMAGE]
    expected = denormalize(image, bundle.normalization.mean, bundle.normalization.std)
    assert pixels.shape == expected.shape == (4, 1, 16, 16)
    # ONNX Runtime computes mixed's fp16 F in fp32, OpenVINO in fp16, and each runs int8 F with its own
    # kernels: the images then differ by F's rounding
    bound = 1e-6 if precision == Precision.fp32 else 1e-2
    assert np.linalg.norm(pixels - expected) / np.linalg.norm(expected) <= bound


@needs_toolchain
def test_cpp_app_refuses_a_z_of_the_wrong_shape(invert_openvino, bundles, tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((1, 3, 4, 4), np.float32))
    out = subprocess.run([str(invert_openvino), str(bundles[Precision.fp32]), str(tmp_path / "z.npy"), str(tmp_path / "x")],
                         check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "z shape" in out.stderr and not (tmp_path / "x.npy").exists()


def _tampered(bundles, tmp_path, how: str) -> Path:
    """A copy of the fp32 bundle changed after `irevnet verify` saw it, as the issue's probe did."""
    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "bundle")
    manifest = json.loads((bundle / MANIFEST).read_text())
    if how == "graph-linked-out":  # the fixed name inverse.onnx pointed at another model
        other = shutil.copytree(bundles[Precision.mixed], tmp_path / "other")
        (bundle / graph_file(INVERSE)).unlink()
        (bundle / graph_file(INVERSE)).symlink_to(other / graph_file(INVERSE))
    elif how == "weights-changed":
        data = bytearray((bundle / WEIGHTS).read_bytes())
        data[len(data) // 2] ^= 0x40
        (bundle / WEIGHTS).write_bytes(bytes(data))
    elif how == "graph-renamed":  # the manifest names a graph that `files` does not list (not hashed)
        shutil.copy(bundle / graph_file(INVERSE), bundle / "unlisted.onnx")
        manifest["graphs"][INVERSE]["file"] = "unlisted.onnx"
        manifest["graphs"][INVERSE]["files"] = ["unlisted.onnx", WEIGHTS]
    elif how == "path-leaves":
        manifest["graphs"][INVERSE]["files"] = [graph_file(INVERSE), "../other/weights.bin"]
    elif how == "fifo":
        (bundle / WEIGHTS).unlink()
        os.mkfifo(bundle / WEIGHTS)
    elif how == "sample-changed":
        np.save(bundle / SAMPLE_Z, np.ones((1, 256, 4, 4), np.float32))
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    return bundle


@needs_toolchain
@pytest.mark.parametrize("how, message", [
    ("graph-linked-out", "outside the bundle; refused"),
    ("weights-changed", "weights.bin does not match its sha256"),
    ("graph-renamed", "unlisted.onnx is used but not listed in files"),
    ("path-leaves", "../other/weights.bin is not a plain relative path"),
    ("fifo", "weights.bin is not a regular file"),
    ("sample-changed", "sample_z.npy does not match its sha256"),
])
def test_cpp_app_runs_only_files_the_manifest_lists_and_hashes(invert_openvino, bundles, tmp_path, how, message):
    """The app opens the manifest's inverse files only, checks each sha256 on the bytes it then
    uses, and refuses links out of the bundle: a bundle changed after `irevnet verify` does not
    run. Before, it opened the fixed name inverse.onnx, a link to another model, and produced
    that model's pixels. Its private copy of the graph is removed (TMPDIR is left empty)."""
    bundle = _tampered(bundles, tmp_path, how)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # without a z argument the app inverts the bundle's own sample_z.npy into ./reconstruction.npy
    args = [str(bundle)] if how == "sample-changed" else [str(bundle), str(bundle / SAMPLE_Z), "recovered"]
    out = subprocess.run([str(invert_openvino), *args], check=False, capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env={**os.environ, "TMPDIR": str(scratch)})
    assert out.returncode == 1 and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not any((tmp_path / f).exists() for f in ("reconstruction.npy", "recovered.npy"))
    assert not list(scratch.iterdir()), "the private copy must be removed"


@needs_toolchain
def test_cpp_app_leaves_no_private_copy_behind(invert_openvino, bundles, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = subprocess.run([str(invert_openvino), str(bundles[Precision.fp32]), str(bundles[Precision.fp32] / SAMPLE_Z), str(tmp_path / "x")],
                         check=False, capture_output=True, text=True, timeout=60, env={**os.environ, "TMPDIR": str(scratch)})
    assert out.returncode == 0, out.stderr
    assert not list(scratch.iterdir())
