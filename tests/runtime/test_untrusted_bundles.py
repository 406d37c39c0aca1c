"""A bundle from another machine is a chain of custody: a mutation battery over a real bundle.

Every case runs `irevnet verify` on a mutated copy and asserts a clean outcome (exit 2 with one
line, or a failed check with exit 1; exit 0 only where the mutation leaves what verify reads
intact), no traceback, and that no file outside the bundle was opened: the mutations point at
decoys outside it, and an audit hook records every file Python opens.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from irevnet.cli import app
from irevnet.contract import (
    FORWARD,
    FORWARD_BLOCKS,
    IMAGE,
    INVERSE,
    LOGITS,
    MANIFEST,
    REFERENCE,
    REFERENCE_IMAGES,
    SAMPLE_Z,
    WEIGHTS,
    Precision,
    Z,
    graph_file,
)
from irevnet.errors import BundleError
from irevnet.runtime import Bundle, open_backend
from irevnet.runtime.backends import ort_offline
from tests.conftest import edit_manifest, peak_of_cli

runner = CliRunner()
_OPENED: list[str] | None = None  # files opened while a case runs (None: not recording)


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, bytes)):
        _OPENED.append(args[0] if isinstance(args[0], str) else args[0].decode(errors="replace"))


sys.addaudithook(_audit)  # hooks cannot be removed; it records only between _run's start and end


@pytest.fixture(scope="module")
def decoys(tmp_path_factory, bundles):
    """Files outside any bundle that a hostile manifest might point at: a valid graph and raw bytes."""
    root = tmp_path_factory.mktemp("outside")
    (root / "elsewhere").mkdir()
    shutil.copy(bundles[Precision.fp32] / graph_file(FORWARD), root / "elsewhere" / graph_file(FORWARD))
    (root / "secret.bin").write_bytes(np.arange(4096, dtype=np.float32).tobytes())
    return root


def _run(bundle, decoys, *args, allowed_outside: str | None = None):
    global _OPENED
    _OPENED = []
    try:
        result = runner.invoke(app, ["verify", str(bundle), *args])
    finally:
        opened, _OPENED = _OPENED, None
    outside = [p for p in opened if (str(decoys) in p or p.startswith("/etc/")) and p != allowed_outside]
    assert not outside, f"opened outside the bundle: {outside}"
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit), (
        result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    if result.exit_code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    elif result.exit_code == 1:
        assert lines[-1].startswith("error: verify failed"), result.output
    else:
        assert result.exit_code == 0 and lines[-1] == "verify passed", result.output
    return result


# (path in the manifest, whether deleting it leaves verify able to pass)
FIELDS = [
    (("schema_version",), False), (("precision",), False), (("model", "config"), False),
    (("model", "config", "blocks"), False), (("model", "config", "channels"), False),
    (("model", "config", "in_shape"), False), (("model", "config", "num_classes"), False),
    (("checkpoint", "path"), False), (("checkpoint", "sha256"), False), (("normalization",), False),
    (("normalization", "mean"), False), (("normalization", "std"), False), (("batch", "max"), False),
    (("range_projection",), False), (("graphs",), False), (("graphs", FORWARD), False),
    (("graphs", FORWARD, "file"), False), (("graphs", INVERSE, "file"), False),
    (("graphs", FORWARD_BLOCKS, "file"), False), (("graphs", FORWARD, "inputs"), False),
    (("graphs", INVERSE, "outputs"), False), (("tolerances",), True), (("tolerances", "round_trip"), False),
    (("fidelity",), True), (("fidelity", "inverse_gain"), True), (("files",), False),
    (("files", graph_file(FORWARD)), False), (("files", REFERENCE), False),
]
KINDS = {
    "delete": None,
    "retype": lambda old: 7 if isinstance(old, str) else "x",
    "huge": lambda old: 10**30,
    "negative": lambda old: -1,
    "nan": lambda old: float("nan"),
    "traverse": lambda old: "../../elsewhere/forward.onnx",
    "absolute": lambda old: "/etc/passwd",
    "deep": lambda old: json.loads("[" * 50 + "]" * 50),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_manifest_field_mutated(bundles, decoys, tmp_path, kind):
    for field, deletable in FIELDS:
        bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / f"{kind}-{'.'.join(field)}")

        def change(manifest, field=field):
            parent = manifest
            for key in field[:-1]:
                parent = parent[key]
            if KINDS[kind] is None:
                del parent[field[-1]]
            else:
                parent[field[-1]] = KINDS[kind](parent[field[-1]])

        edit_manifest(bundle, change)
        if field == ("checkpoint", "path"):
            # The one path a manifest names outside its bundle, by design: the checkpoint it was
            # exported from. verify reads it only to compare its sha256 and loads it only on a match
            # (a path that is not there: verify uses the stored reference samples and may pass).
            result = _run(bundle, decoys, "--no-blocks", allowed_outside="/etc/passwd")
            assert result.exit_code in (0, 2), result.output
            if kind == "absolute":
                assert "is not the checkpoint the bundle was exported from" in result.output
        else:
            result = _run(bundle, decoys, "--no-blocks")
            if not (kind == "delete" and deletable):
                assert result.exit_code == 2, (field, kind, result.output)
        shutil.rmtree(bundle)


def test_a_200000_deep_manifest_and_non_json_numbers_are_one_line(bundles, decoys, tmp_path):
    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "deep")
    (bundle / MANIFEST).write_text("[" * 200_000 + "]" * 200_000)
    assert "nested too deeply" in _run(bundle, decoys).output
    text = json.dumps(json.loads((bundles[Precision.fp32] / MANIFEST).read_text()))
    (bundle / MANIFEST).write_text(text.replace('"max": 8', '"max": 1e400'))
    assert "overflows a double" in _run(bundle, decoys).output


@pytest.mark.parametrize("name", [graph_file(FORWARD), graph_file(INVERSE), graph_file(FORWARD_BLOCKS), WEIGHTS, REFERENCE,
                                  SAMPLE_Z])
@pytest.mark.parametrize("how", ["flip", "truncate", "swap", "symlink-out", "delete"])
def test_every_file_flipped_truncated_swapped_linked_or_deleted(bundles, decoys, tmp_path, name, how):
    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "b")
    file = bundle / name
    data = file.read_bytes()
    if how == "flip":
        file.write_bytes(data[:-50] + bytes([data[-50] ^ 0xFF]) + data[-49:])
    elif how == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif how == "swap":
        other = bundle / (graph_file(INVERSE) if name != graph_file(INVERSE) else graph_file(FORWARD))
        file.write_bytes(other.read_bytes())
    elif how == "symlink-out":
        file.unlink()
        file.symlink_to(decoys / "elsewhere" / graph_file(FORWARD))
    else:
        file.unlink()
    result = _run(bundle, decoys, "--no-blocks")
    assert result.exit_code == 2 and name in result.output, result.output


def test_paths_that_leave_the_bundle_are_refused_even_with_rewritten_hashes(bundles, decoys, tmp_path):
    """Whoever can write a bundle can rewrite its hashes: what they cannot do is point outside."""
    outside_graph = decoys / "elsewhere" / graph_file(FORWARD)
    digest = hashlib.sha256(outside_graph.read_bytes()).hexdigest()
    for target in ("../../elsewhere/forward.onnx", str(outside_graph), "./forward.onnx", "debug/../forward.onnx"):
        bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "t", dirs_exist_ok=True)

        def point(manifest, target=target):
            manifest["graphs"][FORWARD]["file"] = target
            manifest["files"][target] = digest

        edit_manifest(bundle, point)
        assert "is not a plain relative path inside the bundle" in _run(bundle, decoys).output
        shutil.rmtree(bundle)

    # a link inside the bundle to a graph outside it, hash rewritten to match
    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "link")
    (bundle / graph_file(FORWARD)).unlink()
    (bundle / graph_file(FORWARD)).symlink_to(outside_graph)
    edit_manifest(bundle, lambda m: m["files"].update({graph_file(FORWARD): digest}))
    assert "outside the bundle; refused" in _run(bundle, decoys).output

    # a graph that `files` does not list is never run unhashed
    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "unlisted")
    shutil.copy(bundle / graph_file(FORWARD), bundle / "extra.onnx")
    edit_manifest(bundle, lambda m: m["graphs"][FORWARD].update(file="extra.onnx"))
    assert "which `files` does not list" in _run(bundle, decoys).output


def _externalize(bundle, location: str, data_file) -> None:
    """Moves forward.onnx's largest initializer to external data at `location` (relative to the
    graph), writes its bytes to `data_file`, and rewrites the hashes as an attacker could."""
    model = onnx.load(bundle / graph_file(FORWARD))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    data_file.write_bytes(tensor.raw_data)
    onnx.external_data_helper.set_external_data(tensor, location=location, offset=0, length=len(tensor.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    (bundle / graph_file(FORWARD)).write_bytes(model.SerializeToString())

    def rehash(manifest):
        for name in (graph_file(FORWARD), location):
            if (bundle / name).is_file() and ".." not in name:
                manifest["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()

    edit_manifest(bundle, rehash)


def test_external_data_stays_inside_the_bundle_and_is_hashed(bundles, decoys, tmp_path):
    inside = shutil.copytree(bundles[Precision.fp32], tmp_path / "inside")
    _externalize(inside, "forward.onnx.data", inside / "forward.onnx.data")
    assert _run(inside, decoys).exit_code == 0, "external data inside the bundle and listed in files runs"

    outside = shutil.copytree(bundles[Precision.fp32], tmp_path / "outside")
    _externalize(outside, "../../outside_weights.bin", tmp_path / "outside_weights.bin")
    assert "which is not a file of the bundle; refused" in _run(outside, decoys).output


def test_reference_npz_without_images_or_with_objects_is_one_line(bundles, decoys, tmp_path):
    for name, arrays in {
        "no-images": {Z: np.zeros((1, 256, 4, 4), np.float32), LOGITS: np.zeros((1, 10), np.float32)},
        "objects": {"images": np.array([object()] * 2)},
        "wrong-shape": {"images": np.zeros((1, 3, 3), np.float32), Z: np.zeros((1, 2), np.float32),
                        LOGITS: np.zeros((1, 10), np.float32)},
        "truncated": {},  # the real file cut at 5,000 bytes, its hash rewritten to match
        "scalar-images": {"images": np.float32(0.5), Z: np.zeros((1, 256, 4, 4), np.float32),
                          LOGITS: np.zeros((1, 10), np.float32)},  # len() of a 0-d array raised TypeError
    }.items():
        bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / name)
        np.savez(bundle / REFERENCE, **arrays)
        if name == "truncated":
            (bundle / REFERENCE).write_bytes((bundles[Precision.fp32] / REFERENCE).read_bytes()[:5000])
        digest = hashlib.sha256((bundle / REFERENCE).read_bytes()).hexdigest()
        edit_manifest(bundle, lambda m, digest=digest: m["files"].update({REFERENCE: digest}))
        result = _run(bundle, decoys, "--no-blocks")
        assert result.exit_code == 2 and REFERENCE in result.output, (name, result.output)


def test_what_is_hashed_is_what_runs(bundles, tmp_path, monkeypatch):
    """A graph swapped after Bundle.open checked it never runs: read from the bundle, it is refused;
    already optimized into this machine's cache, the cached graph is the one the manifest's sha256
    names (the cache is keyed by it), so the swapped file is not even read."""
    bundle_path = shutil.copytree(bundles[Precision.fp32], tmp_path / "b")
    bundle = Bundle.open(bundle_path)
    x = bundle.reference(REFERENCE_IMAGES).images
    expected = open_backend("onnxruntime", bundle, FORWARD).infer({IMAGE: x})[Z]  # now cached
    shutil.copy(bundle_path / graph_file(INVERSE), bundle_path / graph_file(FORWARD))
    assert np.array_equal(open_backend("onnxruntime", bundle, FORWARD).infer({IMAGE: x})[Z], expected)

    monkeypatch.setattr(ort_offline, "cache_root", lambda: tmp_path / "empty cache")
    with pytest.raises(BundleError, match="forward.onnx does not match its sha256"):
        open_backend("onnxruntime", bundle, FORWARD)


def _rewrite_forward(bundle, edit) -> None:
    """Applies `edit` to forward.onnx (its weights stay in weights.bin) and rewrites the hash, as
    whoever can write the bundle could."""
    model = onnx.load(bundle / graph_file(FORWARD), load_external_data=False)
    edit(model)
    (bundle / graph_file(FORWARD)).write_bytes(model.SerializeToString())
    digest = hashlib.sha256((bundle / graph_file(FORWARD)).read_bytes()).hexdigest()
    edit_manifest(bundle, lambda m: m["files"].update({graph_file(FORWARD): digest}))


def _sparse_initializer_outside(model) -> None:
    """A sparse initializer whose values live in a file outside the bundle, relative to the working
    directory (ONNX Runtime would read it: its bytes came back as logits)."""
    values = onnx.helper.make_tensor("sparse/values", onnx.TensorProto.FLOAT, [4], [0.0] * 4)
    for key, value in (("location", "../../secret.bin"), ("offset", "0"), ("length", "16")):
        entry = values.external_data.add()  # onnx's own helper refuses such a location; a hand edit does not
        entry.key, entry.value = key, value
    values.ClearField("float_data")
    values.data_location = onnx.TensorProto.EXTERNAL
    indices = onnx.helper.make_tensor("sparse/indices", onnx.TensorProto.INT64, [4], [0, 1, 2, 3])
    model.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, [4]))


def _endless_loop(model) -> None:
    """A Loop of 2^40 steps whose body only copies its condition: verify would never end."""
    body = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [onnx.helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         onnx.helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, [])],
        [onnx.helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, [])])
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(1 << 40, np.int64), "trips"),
                                    onnx.numpy_helper.from_array(np.array(True), "go")])
    model.graph.node.insert(0, onnx.helper.make_node("Loop", ["trips", "go"], [], body=body, name="spin"))


def _custom_operator(model) -> None:
    node = model.graph.node[0]
    node.domain, node.op_type = "com.example", "Exfiltrate"


def _renamed_output(model) -> None:
    old = model.graph.output[1].name  # z
    for node in model.graph.node:
        node.output[:] = ["zz" if o == old else o for o in node.output]
        node.input[:] = ["zz" if i == old else i for i in node.input]
    model.graph.output[1].name = "zz"


@pytest.mark.parametrize("edit, message", [
    (_sparse_initializer_outside, "sparse initializers, which irevnet never exports"),
    (_endless_loop, "uses operator 'Loop'"),
    (_custom_operator, "uses operator 'com.example.Exfiltrate'"),
    (_renamed_output, "has outputs ['logits', 'zz'] where the manifest describes ['logits', 'z']"),
])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_graphs_the_exporter_never_writes_are_refused_before_any_runtime(bundles, decoys, tmp_path, edit, message, backend):
    """Hash-consistent graphs with a sparse initializer outside the bundle, an endless Loop, an
    operator of another domain, or outputs the manifest does not name: one line, exit 2, nothing
    outside the bundle opened, no runtime session started (the Loop would not return)."""
    if backend == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("the openvino wheel is not installed")
    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "b")
    _rewrite_forward(bundle, edit)
    result = _run(bundle, decoys, "-b", backend, "--no-blocks")
    assert result.exit_code == 2 and message in result.output, result.output


def _npz(path, members: dict[str, bytes], compressed: bool = False) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)


def _npy(array: np.ndarray, shape=None) -> bytes:
    """The .npy bytes of `array`, with a header declaring `shape` instead of its own when given."""
    out = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": shape or array.shape}
    np.lib.format.write_array_header_1_0(out, header)
    out.write(array.tobytes())
    return out.getvalue()


def test_reference_arrays_are_bounded_by_the_bytes_present(bundles, decoys, tmp_path):
    """A header declaring a 64 TiB array, and a compressed member (a 1.6 GB array inflating from a
    few MB): one line each, before numpy allocates anything (peak memory in a fresh process)."""
    real = Bundle.open(bundles[Precision.fp32]).reference(REFERENCE_IMAGES, LOGITS, Z)
    for name, members, compressed in [
        ("huge-header", {"images": _npy(real.images, shape=(1 << 24, 1, 1024, 1024)),
                         LOGITS: _npy(real.logits), Z: _npy(real.z)}, False),
        ("compressed", {"images": _npy(np.zeros((6000, *real.images.shape[1:]), np.float32)),
                        LOGITS: _npy(real.logits), Z: _npy(real.z)}, True),
    ]:
        bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / name)
        _npz(bundle / REFERENCE, members, compressed)
        digest = hashlib.sha256((bundle / REFERENCE).read_bytes()).hexdigest()
        edit_manifest(bundle, lambda m, digest=digest: m["files"].update({REFERENCE: digest}))
        result = _run(bundle, decoys, "--no-blocks")
        assert result.exit_code == 2 and REFERENCE in result.output, (name, result.output)
        peak = peak_of_cli(["verify", str(bundle), "--no-blocks"])
        assert peak < 1 << 30, (name, peak)


def test_a_manifest_checkpoint_path_to_a_large_file_is_hashed_as_a_stream(bundles, tmp_path):
    """checkpoint.path may name any file: a 2 GiB one that is not the checkpoint is refused after
    hashing it in chunks, never read into memory (peak in a fresh process under 1 GB)."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(2 << 30)
    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "b")
    edit_manifest(bundle, lambda m: m["checkpoint"].update(path=str(big)))
    peak = peak_of_cli(["verify", str(bundle), "--no-blocks"], expect_exit=2)
    assert peak < 1 << 30


def test_bench_batch_sizes_do_not_follow_an_unchecked_batch_max(bundles, tmp_path):
    """A manifest's batch.max may say anything up to the schema's bound; bench's default batch sizes
    are 1 and 8 (within it), and a larger batch is asked for, not implied."""
    from irevnet.runtime import bench as bench_module

    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "b")
    edit_manifest(bundle, lambda m: m["batch"].update(max=65536))
    r = bench_module.bench(bench_module.BenchOptions(bundles=[str(bundle)], backends=["onnxruntime"], direction=FORWARD,
                                                     warmup_s=0, iterations=2, rounds=1))
    assert sorted({e.batch for e in r.results}) == [1, 8]


def test_many_names_for_one_file_are_hashed_once(bundles, tmp_path, monkeypatch):
    """2,000 in-bundle links to one file, each listed with its hash: the file is hashed once (the
    issue's case linked a 256 MiB sparse file 2,000 times: half a terabyte of hashing)."""
    from irevnet.runtime import bundle as bundle_module

    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "b")
    listed = len(json.loads((bundle / MANIFEST).read_text())["files"])
    digest = hashlib.sha256((bundle / WEIGHTS).read_bytes()).hexdigest()
    (bundle / "extra").mkdir()
    for i in range(2000):
        (bundle / "extra" / f"w{i}.bin").symlink_to(bundle / WEIGHTS)
    edit_manifest(bundle, lambda m: m["files"].update({f"extra/w{i}.bin": digest for i in range(2000)}))
    hashed = []
    real = bundle_module.sha256_file
    monkeypatch.setattr(bundle_module, "sha256_file", lambda path: hashed.append(path) or real(path))
    Bundle.open(bundle)
    assert len(hashed) == listed, "one hash per distinct file, not 2,000 more"


def _zero_groups(model) -> None:
    """group=0 on every Conv: a valid operator set and names, refused by the runtime's kernel."""
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Conv" and attribute.name == "group":
                attribute.i = 0


def _mismatched_initializer(model) -> None:
    """An Add whose second operand cannot broadcast against the activation: fails shape inference."""
    node = next(n for n in model.graph.node if n.op_type == "Add")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((7, 5, 3), np.float32), "odd_shape"))
    node.input[1] = "odd_shape"


@pytest.mark.parametrize("edit", [_zero_groups, _mismatched_initializer], ids=["conv-group-0", "unbroadcastable"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_graphs_a_runtime_refuses_while_loading_or_running_are_one_line(bundles, decoys, tmp_path, edit, backend):
    """Found by tools/fuzz.py: hash-consistent graphs that pass irevnet's graph check but that ONNX
    Runtime or OpenVINO refuse (at load, optimization or run) gave the runtime's traceback."""
    if backend == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("the openvino wheel is not installed")
    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "b")
    _rewrite_forward(bundle, edit)
    result = _run(bundle, decoys, "-b", backend, "--no-blocks")  # no traceback, nothing outside opened
    if backend == "openvino" and result.exit_code == 0:
        return  # OpenVINO reads group=0 as 1 and computes the exported model: a pass is the right answer
    assert result.exit_code == 2 and FORWARD in result.output and "re-export" in result.output, result.output


def _slow_prologue(model) -> None:
    """1,000 convolutions of 512 channels ahead of the graph, sharing one weight (a 9 MB file that
    computes for about a minute per batch of 8 on 2 cores), whose result reaches the outputs as image + 0 * mean(...): only
    operators irevnet exports, so nothing refuses it and only the run's length is hostile."""
    graph = model.graph
    image = graph.input[0].name
    weights = np.random.default_rng(0).standard_normal((512, 512, 3, 3)).astype(np.float32) * 0.01
    graph.initializer.extend([
        onnx.numpy_helper.from_array(np.ones((512, 1, 1, 1), np.float32), "slow/widen"),
        onnx.numpy_helper.from_array(weights, "slow/w"),
        onnx.numpy_helper.from_array(np.zeros((), np.float32), "slow/zero"),
        onnx.numpy_helper.from_array(np.array([1], np.int64), "slow/axes"),
    ])
    nodes = [onnx.helper.make_node("Conv", [image, "slow/widen"], ["slow/0"])]
    for i in range(1000):
        nodes.append(onnx.helper.make_node("Conv", [f"slow/{i}", "slow/w"], [f"slow/{i + 1}"], pads=[1, 1, 1, 1]))
    nodes += [onnx.helper.make_node("ReduceMean", ["slow/1000", "slow/axes"], ["slow/mean"], keepdims=1),
              onnx.helper.make_node("Mul", ["slow/mean", "slow/zero"], ["slow/nothing"]),
              onnx.helper.make_node("Add", [image, "slow/nothing"], ["slow/image"])]
    rest = list(graph.node)
    for node in rest:
        node.input[:] = ["slow/image" if i == image else i for i in node.input]
    del graph.node[:]
    graph.node.extend(nodes + rest)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_sigterm_stops_a_run_inside_the_runtime(bundles, tmp_path, backend):
    """A graph of allowed operators can still run for minutes; SIGTERM used to wait for the
    runtime to return (the issue's Loop ignored it). The CLI's watcher asks the run to stop:
    exit 143 with one line within seconds."""
    if backend == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("the openvino wheel is not installed")
    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "b")
    _rewrite_forward(bundle, _slow_prologue)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "irevnet", "verify", str(bundle), "-b", backend, "--no-blocks"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(6)  # inside the first forward run: measured about 1 s to start, then a minute per run
    assert proc.poll() is None, proc.communicate()
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    stopped_after = time.monotonic() - sent
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: terminated (SIGTERM)"), stderr
    assert "Traceback" not in stderr
    assert stopped_after < 10, f"took {stopped_after:.1f} s to stop"


def test_a_tolerance_without_its_reason_is_one_line(bundles, decoys, tmp_path):
    """The schema let a tolerance omit `reason`, then verify's Tolerance(**recorded) raised a
    TypeError traceback; the schema now requires every field the reader needs."""
    bundle = edit_manifest(shutil.copytree(bundles[Precision.fp32], tmp_path / "b"), lambda m: m["tolerances"].pop("reason"))
    result = _run(bundle, decoys, "--no-blocks")
    assert result.exit_code == 2 and "reason" in result.output, result.output


def test_a_field_the_manifest_does_not_define_is_refused(bundles, decoys, tmp_path):
    """Found by tools/fuzz.py: an added top-level field verified as if it were not there (the
    schema had no additionalProperties: false at the top); a reader cannot tell a field it does
    not know from a field another tool expects it to honour."""
    bundle = edit_manifest(shutil.copytree(bundles[Precision.fp32], tmp_path / "b"), lambda m: m.update(signature="trust me"))
    result = _run(bundle, decoys, "--no-blocks")
    assert result.exit_code == 2 and "signature" in result.output, result.output
