"""`irevnet build`: strongly typed engines, shared timing cache, rebuilds; through the TensorRT test
double (tests/runtime/trt_double.py), whose engines compute with ONNX Runtime."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from irevnet.contract import (
    FORWARD,
    FORWARD_BLOCKS,
    IMAGE,
    INVERSE,
    INVERSE_BLOCKS,
    REFERENCE,
    TIMING_CACHE,
    Precision,
    Z,
    engine_file,
    graph_file,
)
from irevnet.errors import IRevNetError
from irevnet.runtime import Bundle, open_backend
from irevnet.runtime.engines import EngineMismatch
from tests.conftest import edit_manifest
from tests.runtime import trt_double


def test_without_tensorrt_build_and_backend_say_so_in_one_line(bundles, tmp_path):
    from typer.testing import CliRunner

    from irevnet.cli import app

    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; this checks the message on machines without it")
    except ImportError:
        pass
    runner = CliRunner()
    result = runner.invoke(app, ["build", str(bundles[Precision.fp32])])
    assert result.exit_code == 2 and result.output.strip().startswith("error: TensorRT is not installed")
    with pytest.raises(IRevNetError, match="no TensorRT engine for forward"):
        open_backend("tensorrt", Bundle.open(bundles[Precision.fp32]), FORWARD)


@pytest.mark.parametrize("version, strongly_typed_bit", [("10.13.0.35", 1), ("11.1.0.106", 0)])
def test_build_uses_the_enum_flags_and_records_the_engines(fake_trt, bundles, tmp_path, version, strongly_typed_bit):
    from irevnet.runtime.trt_build import BuildOptions, build_engines

    trt = fake_trt(version)
    bundle = shutil.copytree(bundles[Precision.mixed], tmp_path / "b")
    section = build_engines(BuildOptions(bundle=str(bundle), opt_batch=4, workspace_mb=256, debug=True))
    opened = Bundle.open(bundle)
    parsed = [opened.graph_bytes(g) for g in (FORWARD, INVERSE, FORWARD_BLOCKS, INVERSE_BLOCKS)]
    assert [trt_double.MODELS[c["path"]] for c in trt.calls] == parsed, "the checked bytes of each graph, in order"
    for call in trt.calls:
        # the STRONGLY_TYPED bit comes from the enum: 1 << 1 on 10.x, 1 << 0 on 11.x
        assert call["flags"] == 1 << strongly_typed_bit
        assert trt.BuilderFlag.TF32 not in call["config"].flags, "TF32 cleared unless --tf32"
        assert call["config"].pools == {trt.MemoryPoolType.WORKSPACE: 256 << 20}
    assert trt.calls[0]["shapes"] == ((1, 1, 16, 16), (4, 1, 16, 16), (8, 1, 16, 16))
    assert trt.calls[1]["shapes"] == ((1, 256, 4, 4), (4, 256, 4, 4), (8, 256, 4, 4))
    cache = json.loads((bundle / TIMING_CACHE).read_text())
    assert len(cache) == 4, "one timing cache shared by every graph, persisted beside the engines"

    reopened = Bundle.open(bundle)  # the manifest's hashes cover the new files
    assert set(reopened.manifest.files) >= {engine_file(FORWARD), engine_file(INVERSE), engine_file(FORWARD_BLOCKS), TIMING_CACHE}
    assert section["profile"] == {"min": 1, "opt": 4, "max": 8} and section["gpu"]["compute_capability"] == [8, 9]
    assert reopened.manifest.tensorrt.version == version


def test_parser_errors_name_the_node(fake_trt, bundles, tmp_path):
    import onnx

    from irevnet.runtime.trt_build import BuildOptions, build_engines
    from tests.runtime import trt_double

    fake_trt("10.13.0.35")
    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "b")
    model = onnx.load(str(bundle / graph_file(FORWARD)))
    model.graph.node[5].doc_string = trt_double.UNSUPPORTED
    onnx.save(model, str(bundle / graph_file(FORWARD)))
    from irevnet.io.files import sha256_file

    edit_manifest(bundle, lambda m: m["files"].update({graph_file(FORWARD): sha256_file(bundle / graph_file(FORWARD))}))
    node = model.graph.node[5]
    with pytest.raises(IRevNetError, match=rf"could not parse forward.onnx: node {node.name} \({node.op_type}\)"):
        build_engines(BuildOptions(bundle=str(bundle)))


def test_build_command_prints_the_engines(fake_trt, bundles, tmp_path):
    from typer.testing import CliRunner

    from irevnet.cli import app

    fake_trt("11.1.0.106")
    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "b")
    result = CliRunner().invoke(app, ["build", str(bundle), "--opt-batch", "4", "--hardware-compat", "ampere_plus"])
    assert result.exit_code == 0, result.output
    assert engine_file(FORWARD) in result.output and engine_file(INVERSE) in result.output
    assert Bundle.open(bundle).manifest.tensorrt.hardware_compatibility == "ampere_plus"
    result = CliRunner().invoke(app, ["build", str(bundle), "--opt-level", "9"])
    assert result.exit_code == 2 and "--opt-level must be 0..5" in result.output


def test_rebuild_keeps_every_recorded_option(fake_trt, bundles, tmp_path):
    from irevnet.runtime.trt_build import BuildOptions, build_engines

    fake_trt("10.13.0.35")
    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "b")
    options = {"opt_batch": 4, "workspace_mb": 256, "opt_level": 4, "hardware_compat": "same_compute_capability",
               "version_compat": True, "debug": True}
    build_engines(BuildOptions(bundle=str(bundle), **options))
    first = Bundle.open(bundle).manifest.to_dict()["tensorrt"]  # the recorded JSON, as build returns it
    ref = np.load(bundle / REFERENCE)

    # engines from an older major TensorRT: refused by the runtime, rebuilt by the export side
    # with every option of the first build, once; then the runtime opens the fresh bundle
    from irevnet.runtime.trt_build import rebuild_stale_engines

    trt = fake_trt("11.1.0.106")
    with pytest.raises(EngineMismatch, match="built with TensorRT 10.13.0.35 .*this is TensorRT 11.1.0.106"):
        open_backend("tensorrt", Bundle.open(bundle), INVERSE)
    section = rebuild_stale_engines(bundle)
    assert section["version"] == "11.1.0.106" and len(trt.calls) == 4, "forward, inverse and both debug graphs"
    same = ("profile", "workspace_mb", "builder_optimization_level", "hardware_compatibility", "version_compatible", "tf32")
    assert {k: section[k] for k in same} == {k: first[k] for k in same}, "a rebuild keeps every recorded option"
    assert {c["config"].builder_optimization_level for c in trt.calls} == {4}
    assert rebuild_stale_engines(bundle) is None and len(trt.calls) == 4, "fitting engines are not rebuilt"
    with open_backend("tensorrt", Bundle.open(bundle), INVERSE) as inv:
        assert inv.infer({Z: ref[Z][:2]})[IMAGE].shape == (2, 1, 16, 16)
