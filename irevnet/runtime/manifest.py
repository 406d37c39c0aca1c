"""manifest.json: its rules, and the typed, frozen view every reader uses.

The published contract is the JSON Schema beside this module (manifest.schema.json). A manifest is
read once: `read_manifest` refuses what is not JSON, holds a non-finite number, is newer than this
irevnet or breaks the schema and the rules it cannot state (a valid model config, one mean and std
per channel), each in one line naming the field; then `Manifest.from_dict` turns it into the
dataclasses below. Writers (export, `irevnet build`) build a dict and pass it to `check_manifest`,
the same rules, before they write it. jsonschema is imported when a manifest is checked.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..contract import (
    BATCH_DIM,
    GRAPHS,
    LAYOUT,
    SCHEMA_VERSION,
    BlockPrecision,
    Precision,
    judging_precision,
    plan_precision,
)
from ..errors import BundleError, ConfigError
from ..model.config import IRevNetConfig
from .comparison import Tolerance
from .engines import HardwareCompat, Profile

SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")
MAX_MANIFEST_BYTES = 16 << 20


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


# -- the typed manifest: one class per section of the schema --------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """An input or output of a graph, as the manifest declares it."""

    name: str
    shape: tuple[int | str, ...]  # BATCH_DIM first, then the fixed dimensions
    dtype: str  # float32 | float16

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorInfo:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


@dataclass(frozen=True)
class Signature:
    """What a graph (or a served model) takes and gives."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class GraphSpec(Signature):
    """One ONNX graph of the bundle (`graphs.NAME`)."""

    file: str  # relative to the bundle, listed in `files`
    files: tuple[str, ...] = ()  # the graph file and its external data files
    nodes: int | None = None
    ops: Mapping[str, int] = field(default_factory=dict)  # node count per operator
    opset: int | None = None
    branches_sha256: str | None = None  # over every block's F subgraph (names, types, attributes, weights)
    export_seconds: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GraphSpec:
        return cls(
            inputs=tuple(TensorInfo.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorInfo.from_dict(t) for t in d["outputs"]),
            file=d["file"], files=tuple(d.get("files", [d["file"]])), nodes=d.get("nodes"),
            ops=_frozen(d.get("ops", {})), opset=d.get("opset"), branches_sha256=d.get("branches_sha256"),
            export_seconds=d.get("export_seconds"),
        )


@dataclass(frozen=True)
class ModelInfo:
    config: IRevNetConfig
    type: str | None = None  # injective | bijective
    depth: int | None = None  # layers in the paper's naming
    parameters: int | None = None  # of the PyTorch model

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelInfo:
        return cls(IRevNetConfig.from_dict(d["config"]), d.get("type"), d.get("depth"), d.get("parameters"))


@dataclass(frozen=True)
class CheckpointInfo:
    """The checkpoint the bundle was exported from, where it was on the exporting machine."""

    path: str
    sha256: str
    format: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckpointInfo:
        return cls(d["path"], d["sha256"], d.get("format"))


@dataclass(frozen=True)
class Normalization:
    """image = (pixel - mean) / std per channel, pixels in [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str | None = None
    source: str | None = None
    pixel_range: tuple[float, float] | None = None
    formula: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalization:
        pixels = d.get("pixel_range")
        return cls(tuple(d["mean"]), tuple(d["std"]), d.get("dataset"), d.get("source"),
                   tuple(pixels) if pixels is not None else None, d.get("formula"))


@dataclass(frozen=True)
class Batch:
    """The dynamic batch axis of every graph: N in [min, max]."""

    max: int
    min: int = 1
    dim: str = BATCH_DIM

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Batch:
        return cls(d["max"], d.get("min", 1), d.get("dim", BATCH_DIM))


@dataclass(frozen=True)
class Branches:
    identical_in_forward_and_inverse: bool | None = None
    note: str | None = None


@dataclass(frozen=True)
class Fidelity:
    """The inverse's per-block error gain, estimated in fp64 at export."""

    inverse_gain: tuple[float, ...] | None = None
    inverse_gain_without_projection: tuple[float, ...] | None = None
    low_variance_bn_channels: tuple[int, ...] = ()
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fidelity:
        def numbers(key):
            return tuple(d[key]) if d.get(key) is not None else None

        return cls(numbers("inverse_gain"), numbers("inverse_gain_without_projection"),
                   tuple(d.get("low_variance_bn_channels", ())), tuple(d.get("warnings", ())))


@dataclass(frozen=True)
class CheckRecord:
    """One judged comparison of the export's verification: a relative L2 error against a
    tolerance (rel_l2 set), or an agreement against a minimum (value set)."""

    name: str
    passed: bool
    max_abs: float | None = None
    rel_l2: float | None = None
    tolerance: float | None = None
    worst_index: tuple[int, ...] | None = None
    worst_actual: float | None = None
    worst_expected: float | None = None
    value: float | None = None
    min: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckRecord:
        worst = d.get("worst_index")
        return cls(d["name"], d["passed"], d.get("max_abs"), d.get("rel_l2"), d.get("tolerance"),
                   tuple(worst) if worst is not None else None, d.get("worst_actual"), d.get("worst_expected"),
                   d.get("value"), d.get("min"))


@dataclass(frozen=True)
class Verification:
    """The export's own verification on ONNX Runtime (CPU)."""

    backend: str
    samples: int
    checks: tuple[CheckRecord, ...]
    passed: bool
    inputs: str | None = None
    top1_agreement: float | None = None
    top1_agreement_min: float | None = None
    round_trip_psnr_db: float | None = None  # None: exact
    round_trip_max_abs_pixels: float | None = None
    top1_pytorch: float | None = None  # percent, with labelled data only
    top1_onnx: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verification:
        return cls(
            d["backend"], d["samples"], tuple(CheckRecord.from_dict(c) for c in d["checks"]), d["passed"],
            **{k: d.get(k) for k in ("inputs", "top1_agreement", "top1_agreement_min", "round_trip_psnr_db",
                                     "round_trip_max_abs_pixels", "top1_pytorch", "top1_onnx")},
        )


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class EngineInfo:
    file: str  # relative to the bundle, listed in `files`
    bytes: int | None = None
    build_seconds: float | None = None


@dataclass(frozen=True)
class TensorRTSection:
    """TensorRT engines built by `irevnet build`, and how (`tensorrt`)."""

    version: str
    gpu: GpuInfo
    profile: Profile
    engines: Mapping[str, EngineInfo]  # by graph
    built: str | None = None
    strongly_typed: bool | None = None
    precision: Precision | None = None
    tf32: bool = False
    builder_optimization_level: int | None = None
    workspace_mb: int | None = None
    hardware_compatibility: HardwareCompat = HardwareCompat.none
    version_compatible: bool = False
    timing_cache: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorRTSection:
        gpu, p = d["gpu"], d["profile"]
        return cls(
            version=d["version"], gpu=GpuInfo(gpu["name"], tuple(gpu["compute_capability"])),
            profile=Profile(p["min"], p["opt"], p["max"]),
            engines=_frozen({g: EngineInfo(e["file"], e.get("bytes"), e.get("build_seconds"))
                             for g, e in d["engines"].items()}),
            built=d.get("built"), strongly_typed=d.get("strongly_typed"),
            precision=Precision(d["precision"]) if "precision" in d else None, tf32=d.get("tf32", False),
            builder_optimization_level=d.get("builder_optimization_level"), workspace_mb=d.get("workspace_mb"),
            hardware_compatibility=HardwareCompat(d.get("hardware_compatibility", HardwareCompat.none.value)),
            version_compatible=d.get("version_compatible", False), timing_cache=d.get("timing_cache"),
        )


@dataclass(frozen=True)
class ExactCoupling:
    """The coupling stream on the grid 2^-exponent (export/coupling.py)."""

    exponent: int
    step: float | None = None
    bound: float | None = None
    max_abs_measured: float | None = None
    source: str | None = None
    images: int | None = None


@dataclass(frozen=True)
class CalibrationInfo:
    """int8: where the activation ranges of F's convolutions were measured."""

    source: str | None = None
    images: int | None = None
    method: str | None = None


@dataclass(frozen=True)
class WeightsFile:
    """Schema 2: the one external-data file every graph's initializers point into."""

    file: str
    bytes: int
    tensors: int | None = None
    alignment: int | None = None
    referenced_bytes: int | None = None


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest.json, checked and typed; absent optional sections are None."""

    schema_version: int
    precision: Precision
    model: ModelInfo
    checkpoint: CheckpointInfo
    normalization: Normalization
    batch: Batch
    range_projection: bool  # the inverse zeroes the structurally zero channels (injective models)
    graphs: Mapping[str, GraphSpec]  # by graph name (contract.GRAPHS)
    files: Mapping[str, str]  # sha256 of every file of the bundle, by relative path
    irevnet_version: str | None = None
    created: str | None = None
    opset: int | None = None
    weights_sha256: str | None = None
    layout: str = LAYOUT
    branches: Branches | None = None
    fidelity: Fidelity | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    tolerances: Tolerance | None = None  # those the bundle was exported under
    verification: Verification | None = None
    tensorrt: TensorRTSection | None = None
    exact_coupling: ExactCoupling | None = None
    calibration: CalibrationInfo | None = None
    weights: WeightsFile | None = None
    precision_plan: tuple[BlockPrecision, ...] | None = None  # F's precision per block (fp32, mixed, int8, plan)
    _json: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def config(self) -> IRevNetConfig:
        return self.model.config

    @property
    def tolerance_precision(self) -> Precision:
        """The precision whose tolerances judge this bundle: its own, or a plan's least precise block's."""
        return judging_precision(self.precision_plan) if self.precision is Precision.plan else self.precision

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """The typed view of a manifest that passed the rules (`read_manifest`, `check_manifest`)."""

        def section(kind, key):
            return kind(**d[key]) if d.get(key) is not None else None

        return cls(
            schema_version=d["schema_version"], precision=Precision(d["precision"]),
            model=ModelInfo.from_dict(d["model"]), checkpoint=CheckpointInfo.from_dict(d["checkpoint"]),
            normalization=Normalization.from_dict(d["normalization"]), batch=Batch.from_dict(d["batch"]),
            range_projection=d["range_projection"],
            graphs=_frozen({g: GraphSpec.from_dict(d["graphs"][g]) for g in GRAPHS if g in d["graphs"]}),
            files=_frozen(d["files"]), irevnet_version=d.get("irevnet_version"), created=d.get("created"),
            opset=d.get("opset"), weights_sha256=d.get("weights_sha256"), layout=d.get("layout", LAYOUT),
            branches=section(Branches, "branches"),
            fidelity=Fidelity.from_dict(d["fidelity"]) if "fidelity" in d else None,
            versions=_frozen(d.get("versions", {})), tolerances=section(Tolerance, "tolerances"),
            verification=Verification.from_dict(d["verification"]) if "verification" in d else None,
            tensorrt=TensorRTSection.from_dict(d["tensorrt"]) if "tensorrt" in d else None,
            exact_coupling=section(ExactCoupling, "exact_coupling"), calibration=section(CalibrationInfo, "calibration"),
            weights=section(WeightsFile, "weights"),
            precision_plan=tuple(map(BlockPrecision, d["precision_plan"])) if "precision_plan" in d else None,
            _json=copy.deepcopy(dict(d)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON the manifest was read from (a copy): what a writer changes and writes back."""
        return copy.deepcopy(dict(self._json))


# -- the rules ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def manifest_validator():
    """The jsonschema validator of manifest.schema.json (loaded once)."""
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))


def read_manifest(manifest_path: Path) -> Manifest:
    """Reads, checks and types a manifest.json.

    Raises:
        BundleError: one line naming the file and the bad field.
    """
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path} is over {MAX_MANIFEST_BYTES >> 20} MB; not an irevnet manifest")

    def refuse_constant(name: str) -> float:
        raise ValueError(f"{name} is not a number JSON allows")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text[:40]} overflows a double")
        return value

    try:
        manifest = json.loads(manifest_path.read_bytes(), parse_constant=refuse_constant, parse_float=finite)
    except RecursionError:
        raise BundleError(f"{manifest_path}: nested too deeply to be an irevnet manifest; re-export the bundle") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({str(e)[:120]}); re-export the bundle") from None
    return Manifest.from_dict(_check_rules(manifest, manifest_path))


def check_manifest(manifest: dict[str, Any], where: str | Path) -> Manifest:
    """What the exporter and the engine builder call before they write a manifest: the rules
    `Bundle.open` enforces (schema, version, config, normalization), applied to the JSON that
    will be written, so a bundle is never written that cannot be read.

    Returns:
        The typed manifest of what will be written.
    Raises:
        BundleError: one line naming the field, prefixed with `where`.
    """
    try:
        written = json.loads(json.dumps(manifest, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: a value cannot be written as JSON ({str(e)[:120]})") from None
    return Manifest.from_dict(_check_rules(written, where))


def _check_rules(manifest: Any, manifest_path: str | Path) -> dict[str, Any]:
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{manifest_path}: no schema_version; not an irevnet manifest")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path}: schema version {version} is newer than this irevnet reads ({SCHEMA_VERSION}); "
            f"upgrade irevnet"
        )
    import jsonschema

    error = jsonschema.exceptions.best_match(manifest_validator().iter_errors(manifest))
    if error is not None:
        raise BundleError(f"{manifest_path}: {_describe(error)}; re-export the bundle")
    try:
        config = IRevNetConfig.from_dict(manifest["model"]["config"])
    except ConfigError as e:
        raise BundleError(f"{manifest_path}: field 'model.config' is invalid: {e}") from None
    _check_plan(manifest, config.num_blocks, manifest_path)
    channels = manifest["model"]["config"]["in_shape"][0]
    norm = manifest["normalization"]
    if len(norm["mean"]) != channels or len(norm["std"]) != channels:
        raise BundleError(f"{manifest_path}: field 'normalization' needs {channels} mean and std values, one per channel")
    return manifest


def _check_plan(manifest: dict[str, Any], num_blocks: int, manifest_path: str | Path) -> None:
    """A precision plan names one precision per block, and agrees with the bundle's precision."""
    precision, plan = Precision(manifest["precision"]), manifest.get("precision_plan")
    if plan is None:
        if precision is Precision.plan:
            raise BundleError(f"{manifest_path}: precision is plan but there is no field 'precision_plan'; re-export the bundle")
        return
    if len(plan) != num_blocks:
        raise BundleError(f"{manifest_path}: field 'precision_plan' names {len(plan)} precisions for a model of "
                          f"{num_blocks} blocks; re-export the bundle")
    uniform = precision is not Precision.plan  # a uniform precision's plan names that precision for every block
    if precision is Precision.fp16 or (uniform and plan_precision(map(BlockPrecision, plan)) is not precision):
        raise BundleError(f"{manifest_path}: field 'precision_plan' does not agree with precision {precision}; "
                          f"re-export the bundle")


_TYPE_NAMES = {"object": "dict", "array": "list", "integer": "int", "number": "number", "string": "str", "boolean": "bool"}


def _describe(error) -> str:
    """One line for a schema violation, naming the field by its dotted path."""
    path = [str(p) for p in error.absolute_path]
    schema = error.schema
    if error.validator == "required":  # name the missing field itself
        missing = next(r for r in error.validator_value if r not in error.instance)
        path.append(missing)
        schema = schema.get("properties", {}).get(missing, {})
    elif error.validator == "type" and error.validator_value == "object" and schema.get("required"):
        first = schema["required"][0]  # null where a section was expected: its first field is missing
        path.append(first)
        schema = schema["properties"][first]
    elif error.validator != "type":
        field = ".".join(path) or "(top level)"
        return f"field {field!r} is invalid: {error.message[:160]}"
    return f"field {'.'.join(path)!r} is missing or not a {_type_name(schema)}"


def _type_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        schema = manifest_validator().schema["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    kind = schema.get("type", "value")
    return _TYPE_NAMES.get(kind[0] if isinstance(kind, list) else kind, "valid value")
