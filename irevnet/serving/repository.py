"""`irevnet triton`: a bundle -> a Triton model repository with three models.

    REPO/
      irevnet.json              what wrote it: the bundle, its manifest's sha256, the flavour
      NAME_forward/             image -> logits, z
        config.pbtxt
        1/model.py              python flavour: irevnet.runtime runs the graph (triton_model.py)
        shared/bundle/          python flavour: the bundle, once for all models, checked at load
        shared/irevnet/         python flavour: irevnet's torch-free package, so REPO is self-contained
      NAME_inverse/             z -> image
      NAME_roundtrip/           image -> NAME_forward -> NAME_inverse -> reconstruction, logits, z
                                (the python backend calling both: triton_model.RoundTrip says why
                                not an ensemble)

Flavours: `python` (Triton's python backend, ONNX Runtime or OpenVINO inside), `onnxruntime` and
`openvino` (Triton's native backends; the ONNX graph in the directory form, beside its weights
file), `tensorrt` (the bundle's engines as model.plan). Everything in each config.pbtxt comes from
the manifest; every config is parsed with Triton's own ModelConfig protobuf and cross-checked
against the graphs before the repository is swapped into place. Paths inside are relative, so
the folder can be copied or mounted anywhere (a container's /models).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from .. import validation as check
from ..contract import FORWARD, INVERSE, LOGITS, MANIFEST, RECONSTRUCTION, ROUNDTRIP, Z, graph_file
from ..errors import IRevNetError
from ..io.files import atomic_directory, check_replaceable, write_json
from ..runtime.backends.triton_backend import served_tensors
from ..runtime.bundle import Bundle

MARKER = "irevnet.json"  # at the repository's root: Triton reads folders only
SHARED = "shared"  # inside NAME_forward: the bundle and the vendored package (python flavour)
_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Flavour(str, Enum):
    python = "python"  # Triton's python backend running irevnet.runtime (ONNX Runtime or OpenVINO)
    onnxruntime = "onnxruntime"  # Triton's ONNX Runtime backend
    openvino = "openvino"  # Triton's OpenVINO backend
    tensorrt = "tensorrt"  # Triton's TensorRT backend, the bundle's engines


class InstanceKind(str, Enum):
    cpu = "cpu"
    gpu = "gpu"


@dataclass(frozen=True)
class TritonOptions:
    bundle: str
    out: str
    flavour: Flavour = Flavour.python
    name: str | None = None  # model name prefix (default: the bundle folder's name)
    backend: str = "onnxruntime"  # python flavour: the irevnet.runtime backend inside (onnxruntime | openvino)
    instances: int = 1  # model instances per model
    instance_kind: InstanceKind = InstanceKind.cpu
    dynamic_batching: bool = True  # the server merges queued requests into one batch
    max_queue_delay_us: int = 0  # dynamic batching: how long a request may wait for others (Triton's default)
    threads: int | None = None  # python flavour: intra-op threads of each instance

    def __post_init__(self) -> None:
        check.paths(self, "bundle", "out")
        object.__setattr__(self, "flavour", check.choice("flavour", self.flavour, Flavour))
        object.__setattr__(self, "instance_kind", check.choice("instance_kind", self.instance_kind, InstanceKind))
        if self.backend not in ("onnxruntime", "openvino"):
            raise IRevNetError(f"--backend {self.backend!r}: the python flavour runs onnxruntime or openvino")
        if self.name is not None and not _NAME.match(self.name):
            raise IRevNetError(f"--name {self.name[:80]!r}: use letters, digits, '_', '.', '-' (at most 64)")
        check.integer("instances", self.instances, 1, 64)
        check.integer("max_queue_delay_us", self.max_queue_delay_us, 0, 10_000_000)
        check.threads(self.threads)


def model_names(name: str) -> dict[str, str]:
    """The three models of a repository whose prefix is `name`."""
    return {FORWARD: f"{name}_{FORWARD}", INVERSE: f"{name}_{INVERSE}", ROUNDTRIP: f"{name}_{ROUNDTRIP}"}


def _record(path: Path) -> dict[str, Any] | None:
    """The repository's irevnet.json when it is one of `irevnet triton`'s, else None."""
    try:
        record = json.loads((path / MARKER).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and record.get("format") == "irevnet-triton-repository" else None


def is_repository_folder(path: Path) -> bool:
    """True when `path` is a repository `irevnet triton` wrote (what a rerun may replace)."""
    return _record(path) is not None


def read_marker(path: Path) -> dict[str, Any]:
    """The repository's record, or a one-line error when the folder is not irevnet's."""
    record = _record(path)
    if record is None:
        raise IRevNetError(f"{path} is not a Triton repository written by `irevnet triton` (no {MARKER}); "
                           f"write one with `irevnet triton BUNDLE -o {path}`")
    if not (isinstance(record.get("name"), str) and _NAME.match(record["name"]) and record.get("flavour") in Flavour.__members__):
        raise IRevNetError(f"{path / MARKER} is malformed; write the repository again with `irevnet triton`")
    return record


def write_repository(opts: TritonOptions, log=lambda msg: None) -> dict[str, Any]:
    """Writes the repository atomically; returns its record (irevnet.json).

    Raises:
        IRevNetError: the bundle cannot be served in this flavour (tensorrt without engines), or a
            generated config does not parse as Triton's ModelConfig or match the graphs.
    """
    bundle = Bundle.open(opts.bundle)
    out = Path(opts.out)
    check_replaceable(out, is_repository_folder, "Triton repository")
    if opts.flavour is Flavour.tensorrt and not (bundle.has_engine(FORWARD) and bundle.has_engine(INVERSE)):
        raise IRevNetError(f"{bundle.path} has no TensorRT engines; build them with `irevnet build {bundle.path}`, "
                           f"or choose another --flavour")
    name = opts.name or re.sub(r"[^A-Za-z0-9_.-]", "_", bundle.path.resolve().name)[:64] or "irevnet"
    names = model_names(name)
    with atomic_directory(out, owned=is_repository_folder, what="Triton repository") as tmp:
        configs = {}
        for graph in (FORWARD, INVERSE):
            log(f"writing {names[graph]}")
            folder = tmp / names[graph]
            (folder / "1").mkdir(parents=True)
            configs[names[graph]] = _model_config(bundle, graph, names[graph], opts, f"{names[FORWARD]}/{SHARED}")
            _write_model_files(bundle, graph, folder, opts)
        (tmp / names[ROUNDTRIP] / "1").mkdir(parents=True)
        shutil.copyfile(Path(__file__).with_name("triton_model.py"), tmp / names[ROUNDTRIP] / "1" / "model.py")
        configs[names[ROUNDTRIP]] = _roundtrip_config(bundle, names, opts)
        if opts.flavour is Flavour.python:
            _write_shared(bundle, tmp / names[FORWARD] / SHARED)
        for model, text in configs.items():
            validate_config(text, bundle, model, names)
            (tmp / model / "config.pbtxt").write_text(text)
        record = {
            "format": "irevnet-triton-repository", "name": name, "flavour": opts.flavour.value,
            "models": names, "bundle": str(bundle.path), "precision": bundle.precision,
            "manifest_sha256": hashlib.sha256((bundle.path / MANIFEST).read_bytes()).hexdigest(),
            "max_batch": bundle.max_batch,
        }
        write_json(tmp / MARKER, record)
    return record


# -- configs ----------------------------------------------------------------------------------------


def _tensor(spec: dict[str, Any], name: str | None = None) -> str:
    dims = ", ".join(str(d) for d in spec["shape"][1:])  # without the batch axis: max_batch_size holds it
    return f'{{ name: "{name or spec["name"]}" data_type: {_DTYPES[spec["dtype"]]} dims: [ {dims} ] }}'


def _parameters(params: dict[str, str]) -> str:
    """The python backend's string parameters (read by triton_model.py)."""
    return "parameters [ " + ", ".join(f'{{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()) + " ]"


def _model_config(bundle: Bundle, graph: str, model: str, opts: TritonOptions, shared: str) -> str:
    spec = bundle.graphs[graph]
    kind = "KIND_GPU" if opts.instance_kind is InstanceKind.gpu else "KIND_CPU"
    lines = [f'name: "{model}"']
    if opts.flavour is Flavour.python:
        lines.append('backend: "python"')
    elif opts.flavour is Flavour.onnxruntime:
        lines += ['backend: "onnxruntime"', 'default_model_filename: "model.onnx"']
    elif opts.flavour is Flavour.openvino:
        lines += ['backend: "openvino"', 'default_model_filename: "model.onnx"']
    else:
        lines += ['backend: "tensorrt"', 'default_model_filename: "model.plan"']
    lines += [
        f"max_batch_size: {bundle.max_batch}",
        "input [ " + ", ".join(_tensor(t) for t in spec["inputs"]) + " ]",
        "output [ " + ", ".join(_tensor(t) for t in spec["outputs"]) + " ]",
        f"instance_group [ {{ count: {opts.instances} kind: {kind} }} ]",
    ]
    if opts.dynamic_batching:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {opts.max_queue_delay_us} }}")
    if opts.flavour is Flavour.python:
        lines.append(_parameters({"graph": graph, "backend": opts.backend, "shared": shared,
                                  "threads": str(opts.threads or 0)}))
    return "\n".join(lines) + "\n"


def _roundtrip_config(bundle: Bundle, names: dict[str, str], opts: TritonOptions) -> str:
    """NAME_roundtrip: the python backend composing the two served models (triton_model.RoundTrip)."""
    fwd, inv = bundle.graphs[FORWARD], bundle.graphs[INVERSE]
    outputs = {o["name"]: o for o in fwd["outputs"]}
    params = {"graph": ROUNDTRIP, "forward_model": names[FORWARD], "inverse_model": names[INVERSE]}
    return "\n".join([
        f'name: "{names[ROUNDTRIP]}"',
        'backend: "python"',
        f"max_batch_size: {bundle.max_batch}",
        "input [ " + _tensor(fwd["inputs"][0]) + " ]",
        "output [ " + ", ".join([_tensor(inv["outputs"][0], RECONSTRUCTION), _tensor(outputs[LOGITS]), _tensor(outputs[Z])]) + " ]",
        f"instance_group [ {{ count: {opts.instances} kind: KIND_CPU }} ]",
        _parameters(params),
    ]) + "\n"


def validate_config(text: str, bundle: Bundle, model: str, names: dict[str, str]) -> Any:
    """Parses a config.pbtxt with Triton's ModelConfig protobuf (tritonclient's) and checks it
    against the bundle's graphs; returns the parsed message.

    Raises:
        IRevNetError: one line naming the model and what does not fit.
    """
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError

    config_pb2 = _model_config_pb2()
    try:
        config = text_format.Parse(text, config_pb2.ModelConfig())
    except (text_format.ParseError, DecodeError) as e:
        raise IRevNetError(f"{model}/config.pbtxt does not parse as Triton's ModelConfig ({e}); this is a bug") from None
    problems = []
    if config.name != model or config.max_batch_size != bundle.max_batch:
        problems.append(f"name {config.name!r} or max_batch_size {config.max_batch_size}")
    if model == names[ROUNDTRIP]:
        steps = [config.parameters[k].string_value for k in ("forward_model", "inverse_model") if k in config.parameters]
        if config.backend != "python" or steps != [names[FORWARD], names[INVERSE]]:
            problems.append(f"round trip through {steps}")
    graph = next(graph for graph, name in names.items() if name == model)
    graphs = served_tensors(bundle, graph)
    for side, tensors in (("input", config.input), ("output", config.output)):
        declared = {t.name: (config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors}
        expected = {t["name"]: (_DTYPES[t["dtype"]], list(t["shape"][1:])) for t in graphs[f"{side}s"]}
        if declared != expected:
            problems.append(f"{side}s {declared} but the graph has {expected}")
    if problems:
        raise IRevNetError(f"{model}/config.pbtxt does not match the bundle: {'; '.join(problems)}; this is a bug")
    return config


def _model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise IRevNetError("writing a Triton repository needs tritonclient: pip install 'irevnet[serve]'") from None
    return model_config_pb2


# -- files --------------------------------------------------------------------------------------------


def _write_model_files(bundle: Bundle, graph: str, folder: Path, opts: TritonOptions) -> None:
    version = folder / "1"
    if opts.flavour is Flavour.python:
        shutil.copyfile(Path(__file__).with_name("triton_model.py"), version / "model.py")
    elif opts.flavour is Flavour.tensorrt:
        (version / "model.plan").write_bytes(bundle.engine_bytes(graph))
    else:
        # the directory form: model.onnx beside the weights file its external data names
        target = version / "model.onnx" if opts.flavour is Flavour.onnxruntime else version
        target.mkdir(exist_ok=True)
        files = bundle.graphs[graph].get("files", [graph_file(graph)])
        for name in files:
            data = bundle.read(name)  # the checked bytes
            (target / ("model.onnx" if name == graph_file(graph) else Path(name).name)).write_bytes(data)


def _write_shared(bundle: Bundle, shared: Path) -> None:
    """The bundle (its manifest and every file it lists, checked) and irevnet's torch-free
    package, copied once: the python flavour's models load both from here."""
    target = shared / "bundle"
    target.mkdir(parents=True)
    for name in bundle.manifest["files"]:
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bundle.read(name))
    shutil.copyfile(bundle.path / MANIFEST, target / MANIFEST)
    package = Path(__file__).resolve().parents[1]
    shutil.copytree(package, shared / "irevnet", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

