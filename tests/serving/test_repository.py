"""`irevnet triton`: repositories of every flavour parse as Triton's ModelConfig and match the
graphs; the record vouches for every file; a rewrite never deletes what irevnet did not write;
versions are added beside each other. No server needed."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from irevnet.contract import FORWARD, IMAGE, INVERSE, LOGITS, RECONSTRUCTION, WEIGHTS, Precision, Z
from irevnet.errors import IRevNetError
from irevnet.runtime import Bundle


def _write(bundle, out, **kw):
    from irevnet.serving.repository import TritonOptions, write_repository

    return write_repository(TritonOptions(bundle=str(bundle), out=str(out), **kw))


@pytest.mark.parametrize("flavour", ["python", "onnxruntime", "openvino", "tensorrt"])
def test_every_flavour_parses_as_triton_model_config_and_matches_the_graphs(bundles, tmp_path, flavour, fake_trt):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    source = bundles[Precision.fp32]
    if flavour == "tensorrt":
        with pytest.raises(IRevNetError, match="has no TensorRT engines; build them with `irevnet build"):
            _write(source, tmp_path / "no-engines", flavour=flavour)
        from irevnet.runtime.trt_build import BuildOptions, build_engines

        fake_trt("10.13.0.35")
        source = shutil.copytree(source, tmp_path / "b")
        build_engines(BuildOptions(bundle=str(source)))
    record = _write(source, tmp_path / "repo", flavour=flavour, name="d")
    bundle = Bundle.open(source)
    configs = {}
    for model in record.models.values():
        configs[model] = text_format.Parse((tmp_path / "repo" / model / "config.pbtxt").read_text(),
                                           model_config_pb2.ModelConfig())
        assert configs[model].max_batch_size == bundle.max_batch
        assert configs[model].version_policy.HasField("all"), "every version of the repository is served"
    fwd = configs["d_forward"]
    assert [(t.name, list(t.dims)) for t in fwd.input] == [(IMAGE, list(bundle.config.in_shape))]
    assert [(t.name, list(t.dims)) for t in fwd.output] == [(LOGITS, [bundle.config.num_classes]), (Z, list(bundle.config.z_shape))]
    assert [(t.name, list(t.dims)) for t in configs["d_inverse"].input] == [(Z, list(bundle.config.z_shape))]
    assert [t.name for t in configs["d_roundtrip"].output] == [RECONSTRUCTION, LOGITS, Z]
    assert fwd.HasField("dynamic_batching") and fwd.dynamic_batching.max_queue_delay_microseconds == 0
    for model, tensor in (("d_forward", IMAGE), ("d_inverse", Z)):  # warmed at load: one zero batch of 1
        (warmup,) = configs[model].model_warmup
        assert warmup.batch_size == 1 and warmup.inputs[tensor].zero_data
        graph = FORWARD if tensor == IMAGE else INVERSE
        assert list(warmup.inputs[tensor].dims) == list(bundle.graphs[graph].inputs[0].shape[1:])
    version = tmp_path / "repo" / "d_forward" / "1"
    expected = {"python": ["model.py"], "onnxruntime": ["model.onnx"], "openvino": ["model.onnx", WEIGHTS],
                "tensorrt": ["model.plan"]}[flavour]
    assert sorted(p.name for p in version.iterdir()) == expected
    if flavour == "onnxruntime":  # the directory form: the graph beside the weights its external data names
        assert sorted(p.name for p in (version / "model.onnx").iterdir()) == ["model.onnx", WEIGHTS]
    if flavour == "python":  # self-contained: the bundle and irevnet's runtime, once, no absolute path
        shared = tmp_path / "repo" / "d_forward" / "shared"
        assert (shared / "bundles" / "1" / WEIGHTS).is_file() and (shared / "irevnet" / "runtime" / "bundle.py").is_file()
        assert str(tmp_path) not in "".join(p.read_text() for p in (tmp_path / "repo").rglob("config.pbtxt"))


def test_the_record_holds_the_sha256_of_every_other_file(bundles, tmp_path):
    record = _write(bundles[Precision.fp32], tmp_path / "repo", name="d")
    root = tmp_path / "repo"
    on_disk = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in root.rglob("*") if p.is_file() and p.name != "irevnet.json"}
    assert record.files == on_disk and len(on_disk) > 50, "configs, model.py, the vendored package, the bundle"
    assert json.loads((root / "irevnet.json").read_text())["files"] == on_disk


def test_a_rewrite_refuses_a_repository_holding_what_irevnet_did_not_write(bundles, tmp_path):
    """The issue's data loss: `irevnet triton -o REPO` again deleted a model folder the user had
    added, with exit 0. Now each kind of foreign content is refused, naming it, and kept."""
    from typer.testing import CliRunner

    from irevnet.cli import app

    source = bundles[Precision.fp32]
    repo = tmp_path / "repo"
    _write(source, repo, name="d")
    (repo / "mine").mkdir()
    (repo / "mine" / "config.pbtxt").write_text("name: \"mine\"\n")
    result = CliRunner().invoke(app, ["triton", str(source), "-o", str(repo), "--name", "d"])
    assert result.exit_code == 2 and "mine/config.pbtxt was added after `irevnet triton` wrote the repository" in result.output
    assert (repo / "mine" / "config.pbtxt").read_text() == "name: \"mine\"\n", "nothing of the user's deleted"
    shutil.rmtree(repo / "mine")
    config = repo / "d_forward" / "config.pbtxt"
    config.write_text(config.read_text() + "# tuned by hand\n")
    result = CliRunner().invoke(app, ["triton", str(source), "-o", str(repo), "--name", "d"])
    assert result.exit_code == 2 and "d_forward/config.pbtxt does not match its sha256" in result.output
    assert config.read_text().endswith("# tuned by hand\n")
    config.unlink()  # a missing file is no loss: the repository is irevnet's and may be rewritten
    assert CliRunner().invoke(app, ["triton", str(source), "-o", str(repo), "--name", "d"]).exit_code == 0
    assert config.is_file()


def test_a_version_is_added_beside_the_others(bundles, tmp_path):
    repo = tmp_path / "repo"
    _write(bundles[Precision.fp32], repo, name="d")
    before = {n: d for n, d in json.loads((repo / "irevnet.json").read_text())["files"].items() if "/shared/bundles/1/" in n}
    record = _write(bundles[Precision.mixed], repo, version=2)
    assert sorted(record.versions) == ["1", "2"] and record.versions["2"]["precision"] == Precision.mixed
    assert record.name == "d", "the repository keeps its models' names"
    for model in record.models.values():
        assert (repo / model / "1" / "model.py").is_file() and (repo / model / "2" / "model.py").is_file()
    after = record.files
    assert all(after[n] == d for n, d in before.items()), "version 1's bundle is kept byte for byte"
    assert Bundle.open(repo / "d_forward" / "shared" / "bundles" / "2").precision == Precision.mixed
    with pytest.raises(IRevNetError, match="already has version 2; give another --version"):
        _write(bundles[Precision.fp16], repo, version=2)


def test_a_version_of_other_tensors_is_refused(bundles, tmp_path):
    """A version shares its model's config (dims, batch range): one that does not fit is refused."""
    from tests.conftest import edit_manifest

    other = edit_manifest(shutil.copytree(bundles[Precision.fp16], tmp_path / "other"),
                          lambda m: m["batch"].update(max=4))
    repo = tmp_path / "repo"
    _write(bundles[Precision.fp32], repo, name="d")
    with pytest.raises(IRevNetError, match=r"takes or gives other tensors than version 1 of .* \(or another batch range\)"):
        _write(other, repo, version=2)
    assert sorted(p.name for p in (repo / "d_forward").iterdir()) == ["1", "config.pbtxt", "shared"], "unchanged"


def test_a_folder_that_is_not_a_repository_of_irevnet_is_refused_before_any_server_is_looked_for(tmp_path):
    from irevnet.serving.server import ServeOptions, serve

    (tmp_path / "models" / "m").mkdir(parents=True)
    with pytest.raises(IRevNetError, match="is not a Triton repository written by `irevnet triton`"), \
            serve(ServeOptions(target=str(tmp_path / "models"), python_env=str(tmp_path / "no-such-env"))):
        pass


def test_a_version_keeps_the_repositorys_options_and_where_each_version_came_from(bundles, tmp_path):
    """Adding a version rewrote the configs with the default options (version 1 then served with
    other instances and another runtime) and recorded version 1 as coming from the repository."""
    repo = tmp_path / "repo"
    first = _write(bundles[Precision.fp32], repo, name="d", instances=2, backend="openvino")
    config = (repo / "d_forward" / "config.pbtxt").read_bytes()
    second = _write(bundles[Precision.mixed], repo, version=2, inherit=("instances", "backend"))
    assert (repo / "d_forward" / "config.pbtxt").read_bytes() == config, "the configs serve every version unchanged"
    assert second.options == first.options and second.versions["1"] == first.versions["1"]
    with pytest.raises(IRevNetError, match=r"--version keeps the repository's options \(instances 2, not 4\)"):
        _write(bundles[Precision.fp16], repo, version=3, instances=4, inherit=("backend",))
    from typer.testing import CliRunner

    from irevnet.cli import app

    # given on the command line at its default value, an option that differs is refused too
    result = CliRunner().invoke(app, ["triton", str(bundles[Precision.fp16]), "-o", str(repo), "--version", "3",
                                      "--instances", "1"])
    assert result.exit_code == 2 and "(instances 2, not 1)" in result.output, result.output
    result = CliRunner().invoke(app, ["triton", str(bundles[Precision.fp16]), "-o", str(repo), "--version", "3"])
    assert result.exit_code == 0, result.output


def test_a_new_serve_removes_only_the_leftovers_no_one_holds(tmp_path, monkeypatch):
    """A scratch folder is its supervisor's while it holds the folder's lock: a serve killed with
    -9 leaves a supervisor that drains for a while, and its folder must stay until it ends."""
    import fcntl
    import tempfile

    from irevnet.serving import server

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    held, free, dead = (tmp_path / f"irevnet-serve.{pid}.abc" for pid in (999_999_1, 999_999_2, 999_999_3))
    for folder in (held, free, dead):
        (folder / "models").mkdir(parents=True)
    (held / ".lock").touch()
    (free / ".lock").touch()
    with open(held / ".lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        server._remove_leftovers()
    assert held.is_dir() and not free.exists() and not dead.exists()
