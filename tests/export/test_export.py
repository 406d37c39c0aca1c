import copy
import dataclasses
import json
import shutil
from collections import Counter
from types import MappingProxyType

import numpy as np
import onnx
import pytest
import torch

from irevnet.contract import (
    BATCH_DIM,
    FORWARD,
    FORWARD_BLOCKS,
    GRAPH_OPERATORS,
    IMAGE,
    INVERSE,
    INVERSE_BLOCKS,
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
from irevnet.errors import CheckFailed
from irevnet.export.bundle import ExportOptions, export_bundle
from irevnet.export.onnx_export import FORBIDDEN_OPS
from irevnet.io.checkpoint import save_checkpoint
from irevnet.io.files import sha256_file
from irevnet.metrics import rel_l2
from irevnet.runtime.backends.ort_backend import OrtBackend
from irevnet.runtime.comparison import TOLERANCES, tolerance_for
from tests import conftest
from tests.conftest import export_tiny, small_model
from tests.reference import reference_state_dict, write_reference_t7


def _ops(path):
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_bundle_contents_and_tensor_names(bundles):
    b = bundles[Precision.fp32]
    names = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert names == [graph_file(FORWARD), graph_file(FORWARD_BLOCKS), graph_file(INVERSE), graph_file(INVERSE_BLOCKS),
                     MANIFEST, REFERENCE, SAMPLE_Z, WEIGHTS]
    m = json.loads((b / MANIFEST).read_text())
    fwd, inv = m["graphs"][FORWARD], m["graphs"][INVERSE]
    assert [i["name"] for i in fwd["inputs"]] == [IMAGE] and [o["name"] for o in fwd["outputs"]] == [LOGITS, Z]
    assert fwd["inputs"][0]["shape"] == [BATCH_DIM, 1, 16, 16] and fwd["inputs"][0]["dtype"] == "float32"
    assert inv["inputs"][0]["shape"] == [BATCH_DIM, 256, 4, 4] and [o["name"] for o in inv["outputs"]] == [IMAGE]
    assert m["normalization"]["dataset"] == "digits" and len(m["normalization"]["mean"]) == 1
    assert m["range_projection"] is True and m["model"]["type"] == "injective"
    assert set(m["versions"]) >= {"torch", "onnx", "onnxruntime"}


@pytest.mark.parametrize("precision", [Precision.fp32, Precision.mixed])
def test_one_weights_file_shared_by_every_graph(bundles, precision):
    """Every graph's weights live in weights.bin, each distinct tensor once: the forward, inverse
    and debug graphs share F's weights instead of carrying four copies."""
    from onnx.external_data_helper import uses_external_data

    b = bundles[precision]
    m = json.loads((b / MANIFEST).read_text())
    assert m["schema_version"] == 2 and m["weights"]["file"] == WEIGHTS
    stored = (b / WEIGHTS).stat().st_size
    assert stored == m["weights"]["bytes"] and m["weights"]["alignment"] == 4096
    external = {}  # content -> names, over all graphs
    for graph in (FORWARD, INVERSE, FORWARD_BLOCKS, INVERSE_BLOCKS):
        model = onnx.load(str(b / graph_file(graph)))  # loads the external data from weights.bin, as ONNX tools do
        plain = onnx.load(str(b / graph_file(graph)), load_external_data=False)
        for tensor, raw in zip(plain.graph.initializer, model.graph.initializer):
            if uses_external_data(tensor):
                info = {e.key: e.value for e in tensor.external_data}
                assert info["location"] == WEIGHTS and int(info["offset"]) % 4096 == 0
                external.setdefault(raw.raw_data, set()).add(tensor.name)
            else:
                assert len(tensor.raw_data) < 1024, "only small tensors stay inline"
    unique = sum(len(data) for data in external)
    # each distinct tensor stored once (plus alignment padding, < 4 KiB per tensor)
    assert unique <= stored < unique + 4096 * len(external)
    assert m["weights"]["referenced_bytes"] > 2 * unique, "the graphs share the stored tensors"
    # the two directions' F weights are stored under one name each
    assert all(len(names) == 1 for names in external.values())


def test_manifest_hashes_every_file(bundles):
    for b in bundles.values():
        m = json.loads((b / MANIFEST).read_text())
        on_disk = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()} - {MANIFEST}
        assert set(m["files"]) == on_disk
        assert all(sha256_file(b / f) == digest for f, digest in m["files"].items())


def test_graphs_use_single_psi_nodes_and_fold_batchnorm(bundles, trained_tiny_bijective, tmp_path):
    fwd, inv = _ops(bundles[Precision.fp32] / graph_file(FORWARD)), _ops(bundles[Precision.fp32] / graph_file(INVERSE))
    # irevnet-tiny: 6 blocks, 2 of stride 2 -> psi on both halves: 4 SpaceToDepth / 4 DepthToSpace
    assert fwd["SpaceToDepth"] == 4 and inv["DepthToSpace"] == 4
    assert fwd["Pad"] == 1 and fwd["Slice"] >= 2, "injective padding is one Pad, the split Slices"
    assert "Transpose" not in fwd and "Reshape" not in inv, "no 6-D reshape/transpose chains"
    # BN after a conv is folded; what remains is F's leading BN (5 non-first blocks) and the head's
    assert fwd["BatchNormalization"] == 6 and inv["BatchNormalization"] == 5
    assert fwd["Conv"] == inv["Conv"] == 18
    for ops in (fwd, inv):
        assert set(ops) <= GRAPH_OPERATORS and not set(ops) & FORBIDDEN_OPS
    depth_to_space = [n for n in onnx.load(str(bundles[Precision.fp32] / graph_file(INVERSE))).graph.node if n.op_type == "DepthToSpace"]
    assert all(a.s == b"DCR" for n in depth_to_space for a in n.attribute if a.name == "mode")


def test_full_onnx_check_and_shape_inference_pass(bundles):
    for name in (graph_file(FORWARD), graph_file(INVERSE)):
        model = onnx.load(str(bundles[Precision.mixed] / name))
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        assert inferred.graph.output[0].type.tensor_type.shape.dim[0].dim_param == BATCH_DIM


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch(bundles, batch):
    ref = np.load(bundles[Precision.fp32] / REFERENCE)
    x = np.concatenate([ref["images"]] * 2)[:batch]
    with OrtBackend(bundles[Precision.fp32] / graph_file(FORWARD)) as fwd, OrtBackend(bundles[Precision.fp32] / graph_file(INVERSE)) as inv:
        out = fwd.infer({IMAGE: x})
        assert out[LOGITS].shape == (batch, 10) and out[Z].shape == (batch, 256, 4, 4)
        # each sample's values do not depend on the batch it ran in (within fp32 reordering of a
        # convolution's sums, ~1e-7 relative; the round trip is judged against the fp32 table)
        n = min(batch, len(ref[Z]))
        assert rel_l2(out[Z][:n], ref[Z][:n]) <= TOLERANCES[Precision.fp32].z
        x_hat = inv.infer({Z: out[Z]})[IMAGE]
        assert x_hat.shape == x.shape and rel_l2(x_hat, x) <= TOLERANCES[Precision.fp32].round_trip


@pytest.mark.parametrize("precision", [Precision.fp32, Precision.mixed, Precision.fp16])
def test_precisions_meet_their_tolerances(bundles, precision):
    m = json.loads((bundles[precision] / MANIFEST).read_text())
    v = m["verification"]
    # mixed is exported with the exact coupling (its default): judged on the input's rounding to the grid
    grid = m["exact_coupling"]["exponent"] if precision == Precision.mixed else None
    assert ("exact_coupling" in m) == (precision == Precision.mixed)
    assert v["passed"] and m["tolerances"] == tolerance_for(precision, grid).to_dict(), "the one table, recorded"
    assert (m["tolerances"]["round_trip"] < TOLERANCES[precision].round_trip) == (grid is not None)
    checks = {c["name"]: c for c in v["checks"]}
    # measured on this trained model: fp32 ~1e-7 everywhere; mixed keeps the fp32 round trip on
    # ONNX Runtime CPU (F is evaluated the same in both graphs); fp16 ~4e-4
    if precision == Precision.fp32:
        assert checks["round trip"]["rel_l2"] <= 1e-6 and checks[LOGITS]["rel_l2"] <= 1e-5
    else:
        # measured 7.4e-4 (mixed) and 7.3e-4 (fp16): fp16 rounding (~5e-4 per value) through six
        # blocks; 5e-3 is that with 7x headroom, and still 4x inside the 2e-2 tolerance
        assert checks[LOGITS]["rel_l2"] <= 5e-3
    # 8 verification images: one changed prediction moves top-1 by 12.5 points; at most one may
    # (measured: none, 100% vs 100%)
    assert v["top1_onnx"] == pytest.approx(v["top1_pytorch"], abs=12.5)


def test_f_subgraphs_are_identical_and_the_weights_shared(bundles):
    m = json.loads((bundles[Precision.mixed] / MANIFEST).read_text())
    assert m["branches"]["identical_in_forward_and_inverse"] is True
    assert m["graphs"][FORWARD]["branches_sha256"] == m["graphs"][INVERSE]["branches_sha256"]
    def branches(graph):
        nodes = onnx.load(str(bundles[Precision.mixed] / graph_file(graph))).graph.node
        return {(n.name, n.op_type) for n in nodes if "/F/" in n.name}

    fwd, inv = branches(FORWARD), branches(INVERSE)
    assert fwd == inv, "the same F nodes, by name and type, in both directions"
    # every one of irevnet-tiny's 6 blocks has its F there, with its three convolutions
    convs = sorted(name.split("/")[0] for name, op in fwd if op == "Conv")
    assert convs == sorted(f"block{i}" for i in range(6) for _ in range(3))


def test_failed_verification_leaves_no_bundle_and_keeps_the_old_one(trained_tiny, bundles, tmp_path, monkeypatch):
    out = shutil.copytree(bundles[Precision.fp32], tmp_path / "bundle")  # an export of trained_tiny
    before = (out / MANIFEST).read_bytes()
    from irevnet.runtime import comparison as compare

    strict = compare.Tolerance(logits=0.0, z=0.0, round_trip=0.0, top1=1.0, reason="impossible")
    monkeypatch.setitem(compare.TOLERANCES, Precision.fp32, strict)
    with pytest.raises(CheckFailed, match="no bundle written"):
        export_tiny(trained_tiny, out, debug_graphs=False)
    assert (out / MANIFEST).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"], "no temporary folder left behind"
    with pytest.raises(CheckFailed):
        export_tiny(trained_tiny, tmp_path / "new", debug_graphs=False)
    assert not (tmp_path / "new").exists()


def test_a_manifest_the_reader_would_refuse_is_never_written(trained_tiny, bundles, tmp_path, monkeypatch):
    """The exporter checks its manifest with the rules Bundle.open enforces before the swap: a field
    over the schema's bounds (here a version string, as a long dataset path once was) or a value
    JSON cannot carry is one line, and the good bundle already there stays."""
    from irevnet.errors import BundleError
    from irevnet.export import bundle as export_module

    out = shutil.copytree(bundles[Precision.fp32], tmp_path / "bundle")  # an export of trained_tiny
    before = (out / MANIFEST).read_bytes()
    for versions, message in (({"torch": "x" * 1000}, "field 'versions.torch' is invalid"),
                              ({"torch": b"2.14"}, "cannot be written as JSON")):
        monkeypatch.setattr(export_module, "_versions", lambda versions=versions: versions)
        with pytest.raises(BundleError, match=message):
            export_tiny(trained_tiny, out, debug_graphs=False)
        assert (out / MANIFEST).read_bytes() == before


def test_reference_format_checkpoints_export(tmp_path):
    model = small_model("irevnet-301")
    path = tmp_path / "ILSVRC_trained_irevnet.pth.tar"
    torch.save({"epoch": 1, "state_dict": reference_state_dict(model), "best_prec1": 1.0}, path)
    m = export_bundle(ExportOptions(checkpoint=str(path), out=str(tmp_path / "b301"), image_size=64,
                                    max_batch=2, samples=2, debug_graphs=False)).manifest
    assert m.checkpoint.format == "reference-imagenet" and m.verification.passed
    assert m.normalization.dataset == "imagenet", "1000 classes: ImageNet mean/std by default"
    assert _ops(tmp_path / "b301" / graph_file(FORWARD))["SpaceToDepth"] == 1 + 2 * 4, "init psi + 2 per stride-2 block"

    cifar = small_model("irevnet-cifar")
    t7 = tmp_path / "i-revnet-7.t7"
    write_reference_t7(t7, cifar.config, reference_state_dict(cifar), legacy=True)
    m = export_bundle(ExportOptions(checkpoint=str(t7), out=str(tmp_path / "bcifar"), max_batch=2, samples=2,
                                    debug_graphs=False)).manifest
    assert m.checkpoint.format == "reference-cifar" and m.verification.passed


def _negated_twice(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its first output negated twice (exact, so only the graph policy can tell)."""
    model = copy.deepcopy(model)
    out = model.graph.output[0].name
    producer = next(n for n in model.graph.node if out in n.output)
    producer.output[list(producer.output).index(out)] = f"{out}/raw"
    model.graph.node.extend([onnx.helper.make_node("Neg", [f"{out}/raw"], [f"{out}/neg"], name="extra/Neg"),
                             onnx.helper.make_node("Neg", [f"{out}/neg"], [out], name="extra/Neg_1")])
    return model


@pytest.mark.parametrize("gate", ["each graph as exported", "the finished bundle, opened as a reader opens it"])
def test_an_operator_the_readers_refuse_is_never_written(trained_tiny, bundles, tmp_path, monkeypatch, gate):
    """A graph with an operator outside the graph policy (a Neg, as a torch release could emit
    one: here in every graph the session's trace gave) fails the export in one line, and the
    bundle already there stays: export checks every graph with the readers' policy, and before
    the swap it opens the finished folder with Bundle.open and the readers' graph checks, which
    hold with the first bypassed."""
    from irevnet.errors import IRevNetError
    from irevnet.export import bundle as export_module

    out = shutil.copytree(bundles[Precision.fp32], tmp_path / "bundle")  # an export of trained_tiny
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    trace = export_module.trace

    def with_a_neg(ckpt, opts, log=lambda msg: None):
        traced = trace(ckpt, opts, log)
        return dataclasses.replace(traced, graphs=MappingProxyType(
            {name: (_negated_twice(graph), strict, seconds) for name, (graph, strict, seconds) in traced.graphs.items()}))

    monkeypatch.setattr(export_module, "trace", with_a_neg)
    if gate != "each graph as exported":
        monkeypatch.setattr(export_module, "check_graph", lambda *args, **kwargs: None)
    with pytest.raises(IRevNetError, match=r"forward\.onnx uses operator 'Neg' \(node 'extra/Neg'\)") as err:
        export_tiny(trained_tiny, out, debug_graphs=False)
    assert "\n" not in str(err.value) and "export bug" in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"], "no temporary folder left behind"


def test_inputs_are_checked_before_the_work(trained_tiny, tmp_path):
    """A checkpoint whose meta.dataset holds bytes failed with a JSON TypeError after the whole
    export; a --dataset longer than a path can be, once the manifest was built. Both are one line
    before any graph is exported (no temporary bundle is ever created)."""
    from irevnet.errors import CheckpointError, IRevNetError

    state = torch.load(trained_tiny / "best.pt", weights_only=True)
    state["meta"]["dataset"] = b"digits"
    torch.save(state, tmp_path / "bytes.pt")
    with pytest.raises(CheckpointError, match="meta.dataset is b'digits', not a name"):
        export_bundle(ExportOptions(checkpoint=str(tmp_path / "bytes.pt"), out=str(tmp_path / "b1")))
    with pytest.raises(IRevNetError, match="--dataset is 5000 characters long"):
        ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(tmp_path / "b2"), dataset="x" * 5000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bytes.pt"]


def test_a_long_dataset_path_is_recorded_in_a_readable_manifest(trained_tiny, tmp_path):
    """The issue's long dataset path made a manifest the schema refused; sources hold any path."""
    from irevnet.runtime import Bundle
    from tests.io.test_data import _write_cifar_py

    root = tmp_path
    for i in range(5):  # a 1,300-character path: five nested folders of 250 characters
        root = root / (f"{i}" * 250)
    _write_cifar_py(root, n_train=10, n_test=4)
    ckpt = tmp_path / "rgb.pt"
    save_checkpoint(ckpt, small_model("irevnet-cifar"))
    out = tmp_path / "bundle"
    export_bundle(ExportOptions(checkpoint=str(ckpt), out=str(out), dataset=f"cifar10:{root}", max_batch=2, samples=4,
                                debug_graphs=False))
    manifest = Bundle.open(out).manifest
    assert str(root) in manifest.normalization.source


def test_a_folder_irevnet_no_longer_writes_is_not_taken_for_its_own(trained_tiny, bundles, tmp_path):
    """`ort_trt_cache` was once written into bundles; a user's folder of that name inside an export
    target must not make it count as irevnet's (a re-export would delete it)."""
    out = shutil.copytree(bundles[Precision.fp32], tmp_path / "bundle")  # an export of trained_tiny
    (out / "ort_trt_cache").mkdir()
    (out / "ort_trt_cache" / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not an irevnet bundle|holds files") as err:
        export_tiny(trained_tiny, out, debug_graphs=False)
    assert "\n" not in str(err.value)
    assert (out / "ort_trt_cache" / "notes.txt").read_text() == "mine"


def test_a_bundle_for_batch_one_exports(trained_tiny, tmp_path):
    """--max-batch 1 was a traceback: torch.export refuses a dynamic dimension whose range is a
    single value (and specializes an example batch of 1). The bundle serves batch 1 only (its
    graphs are those of every bound, and keep none of the exporter's metadata, which names the
    traced range and the files of the machine that exported)."""
    from irevnet.export.bundle import ExportOptions, export_bundle
    from irevnet.runtime import Bundle, InputError, open_backend

    out = tmp_path / "b1"
    result = export_bundle(ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(out), max_batch=1,
                                         debug_graphs=False))
    for name in (graph_file(FORWARD), graph_file(INVERSE)):
        model = onnx.load(str(out / name), load_external_data=False)
        graph = model.graph
        tagged = [e for e in (model, graph, *graph.node, *graph.input, *graph.output, *graph.value_info,
                              *graph.initializer) if e.metadata_props]
        assert tagged == [], name
    assert result and result.manifest.batch.max == 1 and result.manifest.verification.passed
    assert result.to_dict()["passed"] is True and result.to_dict()["bytes_on_disk"] == sum(
        p.stat().st_size for p in out.rglob("*") if p.is_file()), "--json: every file of the bundle counted"
    assert str(result).startswith(f"fp32 bundle {out}: forward, inverse; verification on")
    bundle = Bundle.open(out)
    x = bundle.reference(REFERENCE_IMAGES).images
    with open_backend("onnxruntime", bundle, FORWARD) as fwd:
        assert fwd.infer({IMAGE: x[:1]})[Z].shape[0] == 1
        with pytest.raises(InputError, match="batch 2 is outside the exported range 1..1"):
            fwd.infer({IMAGE: np.concatenate([x[:1]] * 2)})


def test_graphs_traced_already_give_the_bundle_tracing_gives_and_others_are_traced_anew(trained_tiny, tmp_path,
                                                                                        monkeypatch):
    """export_bundle(traced=) takes the graphs `trace` made for the same checkpoint and trace
    options, traces nothing, and writes the files a traced export writes, byte for byte (the
    manifest aside: its date and seconds), whatever batch bound the session's first export of the
    checkpoint had (the trace does not depend on it); graphs traced with another projection, or
    without the debug graphs an export wants, are not used: it traces anew and says why."""
    from irevnet.export import bundle as export_module
    from irevnet.io.checkpoint import load_checkpoint

    opts = ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(tmp_path / "traced"), dataset="digits",
                         max_batch=4, debug_graphs=False)
    ckpt = load_checkpoint(opts.checkpoint)
    traced = export_module.trace(ckpt, opts)  # this session's trace of the checkpoint (tests/conftest.py: --max-batch 8)
    with monkeypatch.context() as patch:  # an export that traces for itself, with debug graphs
        patch.setattr(export_module, "trace", conftest.REAL_TRACE)
        export_bundle(dataclasses.replace(opts, debug_graphs=True))
    calls = []
    export_graph = export_module.export_graph
    monkeypatch.setattr(export_module, "export_graph", lambda *a, **k: calls.append(1) or export_graph(*a, **k))
    given = tmp_path / "given"
    export_bundle(dataclasses.replace(opts, out=str(given)), traced=traced)
    assert calls == [], "nothing traced"
    # the same files, byte for byte, but the debug graphs: a bundle's forward and inverse graphs
    # are the same whether its export wrote debug graphs or not
    files = {p.name for p in given.iterdir()}
    assert {p.name for p in (tmp_path / "traced").iterdir()} - files == {graph_file(FORWARD_BLOCKS),
                                                                         graph_file(INVERSE_BLOCKS)}
    for name in files - {MANIFEST}:
        assert sha256_file(given / name) == sha256_file(tmp_path / "traced" / name), name

    class Traced(Exception):
        pass

    def trace(*args, **kwargs):
        raise Traced

    monkeypatch.setattr(export_module, "trace", trace)
    assert traced.unusable_for(ckpt, dataclasses.replace(opts, max_batch=1)) is None, "one trace serves every bound"
    plain = dataclasses.replace(traced, graphs=MappingProxyType({k: traced.graphs[k] for k in (FORWARD, INVERSE)}))
    for change, graphs, why in (({"projection": False}, traced, "were traced with another projection"),
                                ({"debug_graphs": True}, plain, "have no forward_blocks, inverse_blocks graph")):
        changed = dataclasses.replace(opts, out=str(tmp_path / "other"), **change)
        assert graphs.unusable_for(ckpt, changed) == why
        said: list[str] = []
        with pytest.raises(Traced):
            export_bundle(changed, said.append, traced=graphs)
        assert said[-1] == f"tracing anew: the graphs given {why}"


def test_a_graph_cut_to_some_outputs_keeps_exactly_what_they_need():
    """only_outputs is how the forward and inverse graphs come from their debug twins: a node, a
    weight or a value info that no output kept needs is gone, everything else stays in its order,
    and the source is untouched."""
    from onnx import TensorProto, helper, numpy_helper

    from irevnet.errors import IRevNetError
    from irevnet.export.onnx_export import only_outputs

    w, v = (numpy_helper.from_array(np.full((1,), k, np.float32), name) for k, name in ((2.0, "w"), (3.0, "v")))
    nodes = [helper.make_node("Mul", ["x", "w"], ["a"], name="mul"),
             helper.make_node("Add", ["a", "v"], ["tap"], name="tapped"),  # only the dropped output reads it
             helper.make_node("Relu", ["a"], ["y"], name="relu"),
             helper.make_node("Neg", ["tap"], ["t2"], name="after_tap")]
    def info(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])

    source = helper.make_model(helper.make_graph(nodes, "g", [info("x")], [info("y"), info("tap"), info("t2")], [w, v],
                                                 value_info=[info("a")]))
    before = source.SerializeToString()
    cut = only_outputs(source, ["y"])
    assert [n.name for n in cut.graph.node] == ["mul", "relu"]
    assert [t.name for t in cut.graph.initializer] == ["w"] and [v.name for v in cut.graph.value_info] == ["a"]
    assert [o.name for o in cut.graph.output] == ["y"] and [i.name for i in cut.graph.input] == ["x"]
    onnx.checker.check_model(cut, full_check=True)
    both = only_outputs(source, ["t2", "y"])  # the order asked for, whatever the source's
    assert [o.name for o in both.graph.output] == ["t2", "y"] and len(both.graph.node) == 4
    assert [v.name for v in both.graph.value_info] == ["a", "tap"], "an output no more keeps its shape"
    assert source.SerializeToString() == before
    with pytest.raises(IRevNetError, match="the graph has no output 'h0'; this is an export bug"):
        only_outputs(source, ["y", "h0"])
