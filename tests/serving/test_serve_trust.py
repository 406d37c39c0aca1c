"""`irevnet serve REPO` runs only what `irevnet triton` wrote: each way of getting other code or
files into a served repository is refused before tritonserver starts, in one line naming the
file, and what is served is a private copy, so the repository itself is never written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from irevnet.contract import IMAGE, REFERENCE_IMAGES, WEIGHTS, Z
from irevnet.errors import IRevNetError

# what a model.py of an attacker does the moment Triton imports it
PAYLOAD = "\nfrom pathlib import Path as _P\n_P({marker!r}).write_text('ran')\n"


def _rerecord(repo: Path) -> None:
    """Makes irevnet.json vouch for the repository as it now is, as an attacker who knows the
    format would (so that only the checks beyond the hashes can refuse it)."""
    record = json.loads((repo / "irevnet.json").read_text())
    record["files"] = {p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in sorted(repo.rglob("*")) if p.is_file() and not p.is_symlink() and p.name != "irevnet.json"}
    (repo / "irevnet.json").write_text(json.dumps(record))


def _added_model(repo, marker):
    shutil.copytree(repo / "digits_inverse", repo / "extra_inverse")
    config = repo / "extra_inverse" / "config.pbtxt"
    config.write_text(config.read_text().replace("digits_inverse", "extra_inverse"))
    (repo / "extra_inverse" / "1" / "model.py").write_text(PAYLOAD.format(marker=marker))
    return "/extra_inverse/", "was added after `irevnet triton` wrote the repository"


def _edited_model_py(repo, marker):
    with open(repo / "digits_forward" / "1" / "model.py", "a") as f:
        f.write(PAYLOAD.format(marker=marker))
    return ("digits_forward/1/model.py does not match its sha256 in irevnet.json",)


def _edited_model_py_rerecorded(repo, marker):
    _edited_model_py(repo, marker)
    _rerecord(repo)
    return ("digits_forward/1/model.py is not this irevnet's model code",)


def _edited_vendored_package_rerecorded(repo, marker):
    with open(repo / "digits_forward" / "shared" / "irevnet" / "runtime" / "bundle.py", "a") as f:
        f.write(PAYLOAD.format(marker=marker))
    _rerecord(repo)
    return ("shared/irevnet/runtime/bundle.py differs from this irevnet's package",)


def _escaping_parameter(value):
    def attack(repo, marker):
        outside = Path(marker).parent / "outside"
        shutil.copytree(repo / "digits_forward" / "shared", outside)
        (outside / "irevnet" / "__init__.py").write_text(PAYLOAD.format(marker=marker))
        for model in ("digits_forward", "digits_inverse"):
            config = repo / model / "config.pbtxt"
            config.write_text(config.read_text().replace('"digits_forward/shared"', json.dumps(value.format(outside=outside))))
        _rerecord(repo)
        return "digits_forward/config.pbtxt: parameter shared = ", "leaves the repository"
    return attack


def _tuned_config_rerecorded(repo, marker):
    config = repo / "digits_forward" / "config.pbtxt"
    config.write_text(config.read_text().replace("count: 1 kind: KIND_CPU", "count: 2 kind: KIND_CPU"))
    _rerecord(repo)
    return ("digits_forward/config.pbtxt is not the config `irevnet triton` writes",)


def _config_text_in_an_option_rerecorded(repo, marker):
    """An option whose value is config text, the configs written to match it: the config then
    names another file for the python backend to run (here model.py itself: any other file is
    refused as one irevnet does not write)."""
    record = json.loads((repo / "irevnet.json").read_text())
    injected = '1 kind: KIND_CPU } ] default_model_filename: "model.py" instance_group [ { count: 1'
    record["options"]["instances"] = injected
    (repo / "irevnet.json").write_text(json.dumps(record))
    config = repo / "digits_forward" / "config.pbtxt"
    config.write_text(config.read_text().replace("instance_group [ { count: 1", f"instance_group [ {{ count: {injected}"))
    _rerecord(repo)
    return "irevnet.json: options", "--instances must be an integer"


def _a_module_beside_the_vendored_package_rerecorded(repo, marker):
    """shared/ comes first on the stubs' sys.path: a module there shadows ONNX Runtime."""
    (repo / "digits_forward" / "shared" / "onnxruntime.py").write_text(PAYLOAD.format(marker=marker))
    _rerecord(repo)
    return ("digits_forward/shared/onnxruntime.py is not a file `irevnet triton` writes",)


def _an_unrecorded_version_rerecorded(repo, marker):
    """Version 7 in the files, not in the record's versions: it would load, unchecked, as the default."""
    for model in ("digits_forward", "digits_inverse", "digits_roundtrip"):
        shutil.copytree(repo / model / "1", repo / model / "7")
    shutil.copytree(repo / "digits_forward" / "shared" / "bundles" / "1", repo / "digits_forward" / "shared" / "bundles" / "7")
    _rerecord(repo)
    return "/7/", "is not a file `irevnet triton` writes"


def _a_link(repo, marker):
    target = repo / "digits_inverse" / "1" / "model.py"
    Path(marker).with_name("elsewhere.py").write_text(PAYLOAD.format(marker=marker))
    target.unlink()
    target.symlink_to(Path(marker).with_name("elsewhere.py"))
    return ("digits_inverse/1/model.py is a link",)


def _tampered_weights_rerecorded(repo, marker):
    weights = repo / "digits_forward" / "shared" / "bundles" / "1" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    _rerecord(repo)
    return (f"{WEIGHTS} does not match its sha256 in the manifest",)


ATTACKS = {
    "an added model": _added_model,
    "an edited model.py": _edited_model_py,
    "an edited model.py, record rewritten": _edited_model_py_rerecorded,
    "an edited vendored irevnet, record rewritten": _edited_vendored_package_rerecorded,
    "a shared path with ..": _escaping_parameter("../../../{outside}"),
    "an absolute shared path": _escaping_parameter("{outside}"),
    "a tuned config, record rewritten": _tuned_config_rerecorded,
    "config text in an option, record rewritten": _config_text_in_an_option_rerecorded,
    "a link to a file outside": _a_link,
    "a module beside the vendored package, record rewritten": _a_module_beside_the_vendored_package_rerecorded,
    "an unrecorded version, record rewritten": _an_unrecorded_version_rerecorded,
    "tampered weights, record rewritten": _tampered_weights_rerecorded,
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_serve_refuses_what_irevnet_did_not_write_before_anything_runs(repository, server_install, tmp_path, attack):
    """On the code before this check, each of these got its code executed or its file served
    (the bundle's files were the only ones hashed)."""
    from irevnet.serving.server import ServeOptions, serve

    repo = shutil.copytree(repository, tmp_path / "models", symlinks=True)
    marker = str(tmp_path / "ran")
    expected = ATTACKS[attack](repo, marker)
    with pytest.raises(IRevNetError) as refused, serve(ServeOptions(target=str(repo), http_port=0, grpc_port=0,
                                                                    metrics_port=0)):
        pass
    message = str(refused.value)
    assert all(part in message for part in expected) and "\n" not in message, message
    assert not Path(marker).exists(), "the attacker's code never ran"


def test_a_versioned_repository_at_a_path_with_spaces_serves_every_version_and_is_never_written(bundles, server_install,
                                                                                             tmp_path):
    """A path with a space could never be served (the stub's arguments are split on spaces:
    "what(): stol", and a leaked region), and serving wrote __pycache__ into the repository. Now
    the served copy is private and the repository stays byte for byte what was recorded. Every
    version answers, each round trip within its own version; the models are warm before the
    first client; a --log under /dev/shm is the host's."""
    from tritonclient import http

    from irevnet.contract import FORWARD, INVERSE, RECONSTRUCTION, Precision
    from irevnet.runtime import Bundle, open_backend
    from irevnet.serving.repository import TritonOptions, write_repository
    from irevnet.serving.server import ServeOptions, serve

    repo = tmp_path / "mödels with space" / "digits repo"
    write_repository(TritonOptions(bundle=str(bundles[Precision.fp32]), out=str(repo), name="d", threads=1))
    write_repository(TritonOptions(bundle=str(bundles[Precision.mixed]), out=str(repo), version=2, threads=1))
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    x = Bundle.open(bundles[Precision.fp32]).reference(REFERENCE_IMAGES).images[:2]
    expected = {}
    for version, precision in (("1", Precision.fp32), ("2", Precision.mixed)):
        bundle = Bundle.open(bundles[precision])
        with open_backend("onnxruntime", bundle, FORWARD, threads=1) as fwd, \
                open_backend("onnxruntime", bundle, INVERSE, threads=1) as inv:
            z = fwd.infer({IMAGE: x})[Z]
            expected[version] = (z, inv.infer({Z: z})[IMAGE])
    assert not np.array_equal(expected["1"][0], expected["2"][0]), "the two versions differ, so the test can tell"
    env = tmp_path / "server env, with a space"  # the environment too, through a link
    env.symlink_to(server_install.env)
    log = Path("/dev/shm") / f"irevnet-test-{tmp_path.name}.log"  # a private /dev/shm must not hide it
    try:
        with serve(ServeOptions(target=str(repo), http_port=0, grpc_port=0, metrics_port=0, python_env=str(env),
                                drain_timeout_s=7, log=str(log))) as running:
            assert running.drain_s == 7, "the drain's bound reaches the stop"
            client = http.InferenceServerClient(running.http_url)
            # before any client: Triton ran each graph's warm-up batch at load, and serve sent each
            # round trip its first request once ready (which called both graphs of its version once more)
            counts = {m: client.get_inference_statistics(m, "2")["model_stats"][0]["inference_count"]
                      for m in ("d_forward", "d_inverse", "d_roundtrip")}
            assert counts == {"d_forward": 2, "d_inverse": 2, "d_roundtrip": 1}, counts
            tensor = http.InferInput(IMAGE, list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            for version in ("1", "2", ""):
                z = client.infer("d_forward", [tensor], model_version=version).as_numpy(Z)
                assert np.array_equal(z, expected[version or "2"][0]), f"version {version or 'default: the highest'}"
                back = client.infer("d_roundtrip", [tensor], model_version=version).as_numpy(RECONSTRUCTION)
                assert np.array_equal(back, expected[version or "2"][1]), "version N of the round trip calls version N"
        assert "Signal (15) received" in log.read_text(), "--log under /dev/shm holds the whole run"
    finally:
        log.unlink(missing_ok=True)
    after = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert after == before, "nothing added (no __pycache__), nothing changed"
