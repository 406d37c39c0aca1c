"""`irevnet triton`: a bundle -> a Triton model repository with three models.

    REPO/
      irevnet.json              what wrote it: the options, each version's bundle, and the sha256
                                of every other file of the repository (record.py reads it)
      NAME_forward/             image -> logits, z
        config.pbtxt
        N/model.py              python flavour: irevnet.runtime runs the graph (triton_model.py)
        shared/bundles/N/       python flavour: version N's bundle, once for all models
        shared/irevnet/         python flavour: irevnet's torch-free package, so REPO is self-contained
      NAME_inverse/             z -> image
      NAME_roundtrip/           image -> NAME_forward -> NAME_inverse -> reconstruction, logits, z
                                (the python backend calling both: triton_model.RoundTrip says why
                                not an ensemble)

Flavours: `python` (Triton's python backend, ONNX Runtime or OpenVINO inside), `onnxruntime` and
`openvino` (Triton's native backends; the ONNX graph in the directory form, beside its weights
file), `tensorrt` (the bundle's engines as model.plan). Everything in each config.pbtxt comes from
the options and the manifest; every config is parsed with Triton's own ModelConfig protobuf and
cross-checked against the graphs before the repository is swapped into place. Paths inside are
relative, so the folder can be copied or mounted anywhere (a container's /models).

Versions: `--version N` adds version N (another bundle of the same tensors) beside those already
there; every version is served (`version_policy: all`), a request without a version gets the
highest, as Triton does.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from .. import validation as check
from .._version import __version__
from ..contract import FORWARD, INVERSE, MANIFEST, ROUNDTRIP, TRITON_DATATYPES, graph_file
from ..errors import IRevNetError
from ..io.files import atomic_directory, check_replaceable, write_json
from ..runtime.backends.triton_backend import served_tensors
from ..runtime.bundle import Bundle
from ..runtime.manifest import Signature, TensorInfo
from .record import (
    MARKER,
    NAME,
    RECORD_FORMAT,
    SHARED,
    Record,
    code_files,
    owned_repository,
    read_record,
    refuse_foreign,
)

_DTYPES = {dtype: f"TYPE_{name}" for dtype, name in TRITON_DATATYPES.items()}
MAX_VERSION = 10**6
# the python flavour's string parameters, and the one that is a path (relative to the repository)
PARAMETERS = {"graph", "backend", "shared", "threads", "forward_model", "inverse_model"}
PATH_PARAMETERS = {"shared"}
# the options the configs are made of (recorded; shared by every version of a repository)
CONFIG_OPTIONS = ("flavour", "backend", "instances", "instance_kind", "dynamic_batching", "max_queue_delay_us", "threads")


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
    version: int | None = None  # add the bundle as this version beside the repository's others (default: 1, alone)
    inherit: tuple[str, ...] = ()  # with `version`: options to take from the repository (the CLI: those not given)

    def __post_init__(self) -> None:
        check.paths(self, "bundle", "out")
        object.__setattr__(self, "flavour", check.choice("flavour", self.flavour, Flavour))
        object.__setattr__(self, "instance_kind", check.choice("instance_kind", self.instance_kind, InstanceKind))
        if self.backend not in ("onnxruntime", "openvino"):
            raise IRevNetError(f"--backend {self.backend!r}: the python flavour runs onnxruntime or openvino")
        if self.name is not None and not NAME.match(self.name):
            raise IRevNetError(f"--name {self.name[:80]!r}: use letters, digits, '_', '.', '-' (at most 64)")
        check.integer("instances", self.instances, 1, 64)
        check.integer("max_queue_delay_us", self.max_queue_delay_us, 0, 10_000_000)
        check.threads(self.threads)
        check.integer("version", self.version, 1, MAX_VERSION, optional=True)
        object.__setattr__(self, "inherit", tuple(self.inherit))
        unknown = set(self.inherit) - set(CONFIG_OPTIONS)
        if unknown:
            raise IRevNetError(f"inherit: {min(unknown)!r} is not an option of the configs")

    def config_options(self) -> dict[str, Any]:
        """What the configs are made of besides the bundles (the record keeps it, so that serve can
        make them again and compare)."""
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(self).items() if k in CONFIG_OPTIONS}


def model_names(name: str) -> dict[str, str]:
    """The three models of a repository whose prefix is `name`."""
    return {FORWARD: f"{name}_{FORWARD}", INVERSE: f"{name}_{INVERSE}", ROUNDTRIP: f"{name}_{ROUNDTRIP}"}


def write_repository(opts: TritonOptions, log=lambda msg: None) -> Record:
    """Writes the repository atomically; returns its record (irevnet.json).

    Without `version`, the repository holds the bundle as version 1 (an earlier repository of
    irevnet's at `out` is replaced). With `version`, the versions already at `out` are kept
    (each file checked against the record) and the bundle is added beside them.

    Raises:
        IRevNetError: the bundle cannot be served in this flavour (tensorrt without engines), the
            folder holds files irevnet did not write, the version exists or its tensors differ,
            or a generated config does not parse as Triton's ModelConfig or match the graphs.
    """
    bundle = Bundle.open(opts.bundle)
    out = Path(opts.out)
    checked = out.is_dir() and not out.is_symlink() and (out / MARKER).exists()
    if checked:
        refuse_foreign(out)  # every file hashed, once: what follows may take the folder as irevnet's

    def owned(path: Path) -> bool:
        return (checked and path == out) or owned_repository(path)

    check_replaceable(out, owned, "Triton repository")
    if opts.flavour is Flavour.tensorrt and not (bundle.has_engine(FORWARD) and bundle.has_engine(INVERSE)):
        raise IRevNetError(f"{bundle.path} has no TensorRT engines; build them with `irevnet build {bundle.path}`, "
                           f"or choose another --flavour")
    previous = read_record(out) if opts.version is not None and checked else None
    kept = _kept_versions(out, previous, opts, bundle) if previous else {}
    options = _options_beside(previous, opts) if previous else opts.config_options()
    version = opts.version or 1
    name = previous.name if previous else (
        opts.name or re.sub(r"[^A-Za-z0-9_.-]", "_", bundle.path.resolve().name)[:64] or "irevnet")
    names = model_names(name)
    versions = {**kept, version: bundle}
    provenance = {**(previous.versions if previous else {}),
                  str(version): {"bundle": str(bundle.path), "precision": bundle.precision,
                                 "manifest_sha256": _manifest_sha256(bundle)}}
    with atomic_directory(out, owned=owned, what="Triton repository") as tmp:
        for v, b in sorted(versions.items()):
            log(f"writing version {v}")
            for graph in (FORWARD, INVERSE, ROUNDTRIP):
                (tmp / names[graph] / str(v)).mkdir(parents=True)
                _write_model_files(b, graph, tmp / names[graph] / str(v), opts)
            if opts.flavour is Flavour.python:
                _copy_bundle(b, tmp / names[FORWARD] / SHARED / "bundles" / str(v))
        if opts.flavour is Flavour.python:
            for file, path in code_files().items():  # exactly the files serve compares with its own
                if file.startswith("irevnet/"):
                    target = tmp / names[FORWARD] / SHARED / file
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
        for graph in (FORWARD, INVERSE, ROUNDTRIP):
            text = model_config(bundle, graph, names, options)
            validate_config(text, bundle, names[graph], names)
            (tmp / names[graph] / "config.pbtxt").write_text(text)
        record = Record(
            format=RECORD_FORMAT, irevnet=__version__, name=name, models=names, options=options,
            max_batch=bundle.max_batch, versions={v: provenance[v] for v in sorted(provenance, key=int)},
            files=_hashes(tmp),
        )
        write_json(tmp / MARKER, record.to_dict())
    return record


def _kept_versions(out: Path, record: Record, opts: TritonOptions, bundle: Bundle) -> dict[int, Bundle]:
    """The versions of the repository at `out` that a `--version` write keeps: version -> its
    bundle, opened from the repository (every file already checked against the record)."""
    if record.options["flavour"] != Flavour.python.value or opts.flavour is not Flavour.python:
        raise IRevNetError(f"{out}: --version adds versions to python-flavour repositories; write the "
                           f"{opts.flavour.value} flavour into a new folder")
    if str(opts.version) in record.versions:
        raise IRevNetError(f"{out} already has version {opts.version}; give another --version (it has "
                           f"{', '.join(sorted(record.versions, key=int))})")
    if opts.name is not None and opts.name != record.name:
        raise IRevNetError(f"{out} serves {record.name}_*; --name {opts.name} would rename its models: drop --name")
    kept = {}
    for v in record.versions:
        old = Bundle.open(out / record.models[FORWARD] / SHARED / "bundles" / v)
        if _tensors(old) != _tensors(bundle) or old.max_batch != bundle.max_batch:
            raise IRevNetError(f"{opts.bundle} takes or gives other tensors than version {v} of {out} (or another batch "
                               f"range); a version of a model has the same inputs and outputs: write a new repository")
        kept[int(v)] = old
    return kept


def _options_beside(record: Record, opts: TritonOptions) -> dict[str, Any]:
    """A version added keeps the repository's options (its configs serve every version): an
    option in `opts.inherit` takes the recorded value; one given otherwise is refused."""
    given = opts.config_options()
    changed = [k for k, v in given.items() if v != record.options.get(k) and k not in opts.inherit]
    if changed:
        k = changed[0]
        raise IRevNetError(f"--version keeps the repository's options ({k.replace('_', '-')} "
                           f"{record.options.get(k)!r}, not {given[k]!r}): drop --{k.replace('_', '-')}, or write "
                           f"a new repository")
    return dict(record.options)


def _tensors(bundle: Bundle) -> list[Any]:
    return [(t.name, t.dtype, t.shape[1:]) for g in (FORWARD, INVERSE)
            for side in ("inputs", "outputs") for t in getattr(bundle.graphs[g], side)]


def _manifest_sha256(bundle: Bundle) -> str:
    return hashlib.sha256((bundle.path / MANIFEST).read_bytes()).hexdigest()


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by its path relative to it ('/'-separated)."""
    from ..io.files import sha256_file

    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


# -- configs ----------------------------------------------------------------------------------------


def _tensor(spec: TensorInfo, name: str | None = None) -> str:
    dims = ", ".join(str(d) for d in spec.shape[1:])  # without the batch axis: max_batch_size holds it
    return f'{{ name: "{name or spec.name}" data_type: {_DTYPES[spec.dtype]} dims: [ {dims} ] }}'


def _parameters(params: dict[str, str]) -> str:
    """The python backend's string parameters (read by triton_model.py)."""
    return "parameters [ " + ", ".join(f'{{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()) + " ]"


def _warmup(spec: Signature) -> str:
    """One zero-filled batch of 1 at load (Triton's model_warmup), so that the first client's
    request does not pay for the runtime's first run (its memory arenas and kernel choices)."""
    inputs = " ".join(f'inputs {{ key: "{t.name}" value: {{ data_type: {_DTYPES[t.dtype]} '
                      f'dims: [ {", ".join(str(d) for d in t.shape[1:])} ] zero_data: true }} }}' for t in spec.inputs)
    return f'model_warmup [ {{ name: "zeros" batch_size: 1 count: 1 {inputs} }} ]'


def model_config(bundle: Bundle, graph: str, names: dict[str, str], options: dict[str, Any]) -> str:
    """The config.pbtxt of NAME_graph (forward, inverse or roundtrip) for these options (as
    TritonOptions.config_options gives them): the same text for the same inputs, which serve
    relies on to recognise a config irevnet wrote."""
    flavour = Flavour(options["flavour"])
    spec = served_tensors(bundle, graph)
    lines = [f'name: "{names[graph]}"']
    if graph == ROUNDTRIP or flavour is Flavour.python:
        lines.append('backend: "python"')
    else:
        lines += [f'backend: "{flavour.value}"',
                  f'default_model_filename: "{"model.plan" if flavour is Flavour.tensorrt else "model.onnx"}"']
    kind = "KIND_GPU" if options["instance_kind"] == InstanceKind.gpu.value and graph != ROUNDTRIP else "KIND_CPU"
    lines += [
        f"max_batch_size: {bundle.max_batch}",
        "version_policy: { all { } }",
        "input [ " + ", ".join(_tensor(t) for t in spec.inputs) + " ]",
        "output [ " + ", ".join(_tensor(t) for t in spec.outputs) + " ]",
        f"instance_group [ {{ count: {options['instances']} kind: {kind} }} ]",
    ]
    if graph == ROUNDTRIP:
        # no dynamic batching and no warm-up of its own: each request is two calls to the models
        # below, which batch and are warmed; a warm-up here would call them before they are
        # loaded (Triton loads models in parallel; `is_model_ready` answers "Server not ready"
        # while it starts, measured on 2.51)
        lines.append(_parameters({"graph": ROUNDTRIP, "forward_model": names[FORWARD], "inverse_model": names[INVERSE]}))
        return "\n".join(lines) + "\n"
    if options["dynamic_batching"]:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {options['max_queue_delay_us']} }}")
    if flavour is Flavour.python:
        lines.append(_parameters({"graph": graph, "backend": options["backend"], "shared": f"{names[FORWARD]}/{SHARED}",
                                  "threads": str(options["threads"] or 0)}))
    lines.append(_warmup(spec))
    return "\n".join(lines) + "\n"


def validate_config(text: str, bundle: Bundle, model: str, names: dict[str, str]) -> Any:
    """Parses a config.pbtxt with Triton's ModelConfig protobuf (tritonclient's) and checks it
    against the bundle's graphs; returns the parsed message.

    Raises:
        IRevNetError: one line naming the model and what does not fit.
    """
    config = parse_config(text, model)
    config_pb2 = _model_config_pb2()
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
        expected = {t.name: (_DTYPES[t.dtype], list(t.shape[1:])) for t in getattr(graphs, f"{side}s")}
        if declared != expected:
            problems.append(f"{side}s {declared} but the graph has {expected}")
    if problems:
        raise IRevNetError(f"{model}/config.pbtxt does not match the bundle: {'; '.join(problems)}; this is a bug")
    return config


def parse_config(text: str, model: str) -> Any:
    """A config.pbtxt as Triton's ModelConfig message, or a one-line error naming the model."""
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError

    try:
        return text_format.Parse(text, _model_config_pb2().ModelConfig())
    except (text_format.ParseError, DecodeError) as e:
        raise IRevNetError(f"{model}/config.pbtxt does not parse as Triton's ModelConfig ({e})") from None


def _model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise IRevNetError("writing a Triton repository needs tritonclient: pip install 'irevnet[serve]'") from None
    return model_config_pb2


# -- files --------------------------------------------------------------------------------------------


def _write_model_files(bundle: Bundle, graph: str, version: Path, opts: TritonOptions) -> None:
    if graph == ROUNDTRIP or opts.flavour is Flavour.python:
        shutil.copyfile(code_files()["model.py"], version / "model.py")
    elif opts.flavour is Flavour.tensorrt:
        (version / "model.plan").write_bytes(bundle.engine_bytes(graph))
    else:
        # the directory form: model.onnx beside the weights file its external data names
        target = version / "model.onnx" if opts.flavour is Flavour.onnxruntime else version
        target.mkdir(exist_ok=True)
        for name in bundle.graphs[graph].files:
            data = bundle.read(name)  # the checked bytes
            (target / ("model.onnx" if name == graph_file(graph) else Path(name).name)).write_bytes(data)


def _copy_bundle(bundle: Bundle, target: Path) -> None:
    """The bundle's manifest and every file it lists (the checked bytes) into `target`."""
    target.mkdir(parents=True)
    for name in bundle.manifest.files:
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bundle.read(name))
    shutil.copyfile(bundle.path / MANIFEST, target / MANIFEST)


# -- what serve checks of a staged repository ---------------------------------------------------------


def check_configs(root: Path, record: Record, shown: Path | None = None) -> Bundle:
    """Each config of a (staged) python-flavour repository is what `irevnet triton` writes for its
    recorded options and bundles, its path parameters stay inside the repository, and every
    version's bundle passes Bundle.open. Returns the highest version's bundle. Messages name
    files under `shown` (the repository as the user gave it; default `root`).

    Raises:
        IRevNetError: one line naming the config or bundle.
    """
    names = record.models
    shown = shown or root
    try:
        options = TritonOptions(bundle=".", out=".", **record.options)
    except (TypeError, IRevNetError) as e:  # an unknown or missing option, or a value out of range
        raise IRevNetError(f"{shown / MARKER}: options {str(e)[:120]}; write the repository again with `irevnet triton`") from None
    if options.config_options() != record.options:
        raise IRevNetError(f"{shown / MARKER}: options are not what `irevnet triton` records (their types); write the "
                           f"repository again")
    bundles = {}
    for v in record.versions:
        folder = root / names[FORWARD] / SHARED / "bundles" / v
        bundles[v] = Bundle.open(folder)
        prefix = f"{names[FORWARD]}/{SHARED}/bundles/{v}/"
        recorded = {name[len(prefix):] for name in record.files if name.startswith(prefix)}
        extra = sorted(recorded - {MANIFEST, *bundles[v].manifest.files})
        if extra:
            raise IRevNetError(f"{shown / prefix / extra[0]} is not a file of the bundle; serve only what `irevnet triton` "
                               f"wrote (write the repository again)")
    latest = bundles[max(bundles, key=int)]
    for graph in (FORWARD, INVERSE, ROUNDTRIP):
        text = (root / names[graph] / "config.pbtxt").read_text()
        path = shown / names[graph] / "config.pbtxt"
        config = parse_config(text, names[graph])
        for key, value in config.parameters.items():
            if key not in PARAMETERS:
                raise IRevNetError(f"{path}: parameter {key[:80]!r} is not one `irevnet triton` writes; write the "
                                   f"repository again")
            if key in PATH_PARAMETERS and not _inside(root, value.string_value):  # resolved in the staged copy
                raise IRevNetError(f"{path}: parameter {key} = {value.string_value[:120]!r} leaves the repository; "
                                   f"write the repository again with `irevnet triton`")
        if text != model_config(latest, graph, names, record.options):
            raise IRevNetError(f"{path} is not the config `irevnet triton` writes for this repository's options; "
                               f"write the repository again")
    return latest


def _inside(root: Path, relative: str) -> bool:
    """A plain relative path that resolves inside `root` (no '..', no link out)."""
    if not relative or relative.startswith("/") or "\\" in relative or any(
            part in ("", ".", "..") for part in relative.split("/")):
        return False
    try:
        resolved = (root / relative).resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return resolved == root.resolve() or root.resolve() in resolved.parents
