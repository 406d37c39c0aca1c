"""Every manifest the exporter and the engine builder can write holds to the schema the runtime
enforces, and that schema refuses a field added anywhere in it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from irevnet.contract import MANIFEST, Precision
from irevnet.runtime.manifest import manifest_validator
from tests.conftest import export_tiny, json_objects


@pytest.fixture(scope="module")
def manifests(bundles, int8_bundle, plan_bundle, trained_tiny, tmp_path_factory, fake_trt_module):
    """name -> manifest, one per variant the code can produce."""
    from irevnet.runtime.trt_build import BuildOptions, build_engines

    root = tmp_path_factory.mktemp("variants")
    paths = {
        "fp32 with debug graphs": bundles[Precision.fp32],
        "mixed, exact coupling": bundles[Precision.mixed],
        "fp16 without debug graphs": bundles[Precision.fp16],
        "int8, exact coupling": int8_bundle,
        "mixed without exact coupling": export_tiny(trained_tiny, root / "uncoupled", Precision.mixed, exact_coupling=False,
                                                    debug_graphs=False),
        "a precision plan (int8, fp16, fp32 blocks)": plan_bundle,
    }
    fake_trt_module("10.13.0.35")
    for name, debug in (("fp32 with engines and debug engines", True), ("int8 with engines", False)):
        source = paths["fp32 with debug graphs" if debug else "int8, exact coupling"]
        target = shutil.copytree(source, root / name.replace(" ", "_"))
        build_engines(BuildOptions(bundle=str(target), debug=debug))
        paths[name] = target
    return {name: json.loads((Path(path) / MANIFEST).read_text()) for name, path in paths.items()}


@pytest.fixture(scope="module")
def fake_trt_module():
    """The TensorRT test double (tests/runtime/trt_double.py), installed for this module."""
    from _pytest.monkeypatch import MonkeyPatch

    from tests.conftest import install_fake_trt

    patch = MonkeyPatch()
    yield lambda version: install_fake_trt(patch, version)
    patch.undo()


def test_every_manifest_variant_validates(manifests):
    assert len(manifests) == 8
    validator = manifest_validator()
    errors = {name: [e.message[:120] for e in validator.iter_errors(m)] for name, m in manifests.items()}
    assert errors == {name: [] for name in manifests}
    assert {m["precision"] for m in manifests.values()} == {p.value for p in Precision}
    assert sum("tensorrt" in m for m in manifests.values()) == 2


def test_a_field_added_to_any_object_of_a_manifest_is_refused(manifests):
    """additionalProperties false at every level: each object of every variant, extended by one
    unknown field, fails validation. `files`, `versions` and each graph's `ops` are maps keyed by
    data (file, library and operator names), not records: any key, with a value of their type."""
    validator = manifest_validator()
    maps = ("/files", "/versions")
    tried = 0
    for name, manifest in manifests.items():
        for path, obj in json_objects(manifest):
            if path in maps or path.endswith("/ops"):
                continue
            obj["not_in_the_schema"] = 1
            try:
                assert not validator.is_valid(manifest), f"{name}: {path} accepts an unknown field"
            finally:
                del obj["not_in_the_schema"]
            tried += 1
    assert tried > 100
