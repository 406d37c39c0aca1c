"""The bundle's contract (irevnet.contract) is the one place its names and its graph policy are
spelled out, and the manifest's JSON Schema states the same values."""

import ast
import json
from pathlib import Path

import pytest

from irevnet import contract
from irevnet.contract import BATCH_DIM, FORWARD, GRAPHS, INVERSE, LAYOUT, OPSETS, Precision
from irevnet.runtime.manifest import SCHEMA_FILE
from tests.conftest import json_objects

ROOT = Path(__file__).resolve().parents[1]
# Every string value of the contract, except DEBUG: "debug" is also the name of the --debug option
# and of the manifest's tensorrt.debug field, which are not the folder; and the reference samples'
# "images" and "labels", which are also the words of summaries, manifest fields and datasets.
COMMON_WORDS = {contract.DEBUG, contract.REFERENCE_IMAGES, contract.REFERENCE_LABELS}
LITERALS = {
    value for name, value in vars(contract).items()
    if name.isupper() and isinstance(value, str) and value not in COMMON_WORDS
} | {p.value for p in Precision} | {contract.graph_file(g) for g in GRAPHS} | {contract.engine_file(g) for g in GRAPHS}


def _literals(path: Path) -> list[str]:
    """`line: value` for each string constant of the contract, and each f-string that builds a
    block tensor name (f"h{i}", f"f{i}"), in a Python file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in LITERALS:
            found.append(f"{node.lineno}: {node.value!r}")
        elif (isinstance(node, ast.JoinedStr) and len(node.values) == 2 and isinstance(node.values[0], ast.Constant)
              and node.values[0].value in ("h", "f") and isinstance(node.values[1], ast.FormattedValue)):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return sorted(found, key=lambda hit: int(hit.split(":")[0]))


def test_no_module_spells_out_a_name_of_the_contract():
    """A name typed twice drifts apart; library, tools and tests import them from irevnet.contract."""
    files = [p for folder in ("irevnet", "tests", "tools") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 60
    offenders = {
        str(p.relative_to(ROOT)): hits for p in files
        if p != ROOT / "irevnet" / "contract.py" and (hits := _literals(p))
    }
    assert offenders == {}


def test_the_literal_check_finds_what_it_looks_for(tmp_path):
    """The check above can fail: a module with a tensor name, a file name, a precision and a block name."""
    sample = tmp_path / "sample.py"
    sample.write_text('feed = {"image": x}\nopen("weights.bin")\nprecision = "int8"\nname = f"h{i}"\nok = "images"\n')
    assert [hit.split(":")[0] for hit in _literals(sample)] == ["1", "2", "3", "4"]


def _schema_values(schema, key: str) -> dict[str, object]:
    """Every `key` (const or enum) in the schema, by the JSON pointer of the object holding it."""
    return {path: node[key] for path, node in json_objects(schema) if key in node}


@pytest.fixture(scope="module")
def schema():
    return json.loads(SCHEMA_FILE.read_text())


def test_schema_states_the_contracts_values(schema):
    props = schema["properties"]
    precisions = [p.value for p in Precision]
    assert props["precision"]["enum"] == precisions and props["tensorrt"]["properties"]["precision"]["enum"] == precisions
    assert props["layout"]["const"] == LAYOUT
    batch_dims = [v for path, v in _schema_values(schema, "const").items() if path.endswith(("/dim", "/oneOf/1"))]
    assert batch_dims == [BATCH_DIM, BATCH_DIM], "the batch section and every tensor shape name the same axis"
    assert props["tensorrt"]["properties"]["engines"]["propertyNames"]["enum"] == list(GRAPHS)
    assert set(props["graphs"]["properties"]) == set(GRAPHS) and {FORWARD, INVERSE} <= set(props["graphs"]["required"])


def test_schema_states_the_graph_policys_opsets(schema):
    """The manifest's opset fields (top level and per graph) allow exactly the opsets the exporter
    writes and every reader opens (contract.OPSETS)."""
    ranges = {path: (node.get("minimum"), node.get("maximum")) for path, node in json_objects(schema)
              if path.endswith("/opset")}
    assert set(ranges) == {"/properties/opset", "/$defs/graph/properties/opset"}
    assert set(ranges.values()) == {(OPSETS.start, OPSETS.stop - 1)}


def test_every_object_of_the_schema_refuses_unknown_fields(schema):
    """An added field is refused wherever it is added, so a writer cannot drift from the schema
    unnoticed: every object with named properties says additionalProperties false."""
    open_objects = [path or "/" for path, node in json_objects(schema)
                    if "properties" in node and node.get("additionalProperties") is not False]
    assert open_objects == []


def test_the_typed_manifest_holds_every_field_of_the_schema(schema):
    """Each object of the schema is one frozen dataclass of runtime/manifest.py with the same
    fields: a field added to the schema and not to its reader (or the other way) fails here."""
    import dataclasses

    from irevnet.runtime import manifest as typed
    from irevnet.runtime.comparison import Tolerance
    from irevnet.runtime.engines import Profile

    classes = {
        "": typed.Manifest, "/properties/model": typed.ModelInfo, "/properties/checkpoint": typed.CheckpointInfo,
        "/properties/normalization": typed.Normalization, "/properties/batch": typed.Batch,
        "/properties/branches": typed.Branches, "/properties/fidelity": typed.Fidelity,
        "/properties/tolerances": Tolerance, "/properties/verification": typed.Verification,
        "/properties/tensorrt": typed.TensorRTSection, "/properties/tensorrt/properties/gpu": typed.GpuInfo,
        "/properties/tensorrt/properties/profile": Profile,
        "/properties/tensorrt/properties/engines/additionalProperties": typed.EngineInfo,
        "/properties/exact_coupling": typed.ExactCoupling, "/properties/calibration": typed.CalibrationInfo,
        "/properties/weights": typed.WeightsFile, "/$defs/tensor": typed.TensorInfo, "/$defs/graph": typed.GraphSpec,
        "/$defs/check": typed.CheckRecord,
        "/$defs/config": None,  # the model's own IRevNetConfig, read by IRevNetConfig.from_dict
        "/properties/graphs": None,  # Manifest.graphs, a mapping by graph name (contract.GRAPHS, checked above)
    }
    objects = {path: node for path, node in json_objects(schema) if "properties" in node}
    assert set(objects) == set(classes)
    for path, cls in classes.items():
        if cls is not None:
            fields = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
            assert fields == set(objects[path]["properties"]), path or "/"

