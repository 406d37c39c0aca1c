"""An exported bundle on disk: manifest.json, the graphs, the engines, the reference samples.

numpy only. A bundle may come from another machine, so everything in it is checked before use:

- manifest.json is validated against the published JSON Schema (manifest.schema.json, shipped in
  this package) and must hold finite numbers only; a bad field is named in one line;
- every file the runtime opens is a plain relative path inside the bundle that `files` lists:
  `..`, absolute paths and links that resolve outside are refused, and so are ONNX external-data
  locations that leave the bundle;
- `Bundle.read` reads a file once, checks its sha256 and returns those bytes: what was hashed is
  what runs (the graphs go to ONNX Runtime and TensorRT as bytes, never as paths). On ONNX
  Runtime's CPU provider what runs is this machine's optimized copy of those bytes, cached under
  the graph's and weights' sha256 (backends/ort_offline.py);
- a graph holds only what irevnet exports (runtime/graph_policy.py), and its inputs and outputs are
  those the manifest describes.

The manifest is not signed: whoever can write the bundle can rewrite its hashes too. The checks
catch corruption, files swapped or added by mistake, and paths that reach outside the bundle.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import posixpath
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import (
    DEBUG,
    LOGITS,
    MANIFEST,
    RECONSTRUCTION,
    REFERENCE,
    SCHEMA_VERSION,
    TIMING_CACHE,
    Precision,
    Z,
)
from ..errors import BundleError, ConfigError
from ..io.files import TEMPORARY, sha256_file
from ..model.config import IRevNetConfig
from .graph_policy import check_graph_policy

SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")
MAX_MANIFEST_BYTES = 16 << 20
MAX_GRAPH_BYTES = (2 << 30) - 1  # protobuf's limit for a model handed over in memory

@functools.lru_cache(maxsize=1)
def manifest_validator():
    """The jsonschema validator of manifest.schema.json (loaded once)."""
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))


@dataclass
class Bundle:
    """A checked bundle folder and its manifest."""

    path: Path
    manifest: dict[str, Any]
    # checked bytes of external-data files, read once per Bundle and shared by every session
    _blobs: dict[str, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        """Reads and checks manifest.json, then every listed file (existence, place, sha256).

        Raises:
            BundleError: one line naming the missing file, the bad field or the changed file.
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{path} is not a bundle: {MANIFEST} is missing; create one with `irevnet export`")
        manifest = _parse_manifest(manifest_path)
        bundle = cls(path, manifest)
        digests: dict[tuple[int, int], str] = {}  # each distinct file hashed once, however many names reach it
        for name in manifest["files"]:
            file = bundle._locate(name, f"files[{name[:80]!r}]")
            info = file.stat()
            inode = (info.st_dev, info.st_ino)
            if inode not in digests:
                digests[inode] = sha256_file(file)
            if digests[inode] != manifest["files"][name]:
                raise BundleError(f"{path}: {name} does not match its sha256 in the manifest (modified or corrupt); re-export")
        for key, name in bundle._referenced_files():
            if name not in manifest["files"]:
                raise BundleError(
                    f"{manifest_path}: field {key!r} names {name[:80]!r}, which `files` does not list (so it is not "
                    f"hashed); re-export the bundle"
                )
        return bundle

    def check_graphs(self) -> None:
        """Opens every graph as a runtime would (graph policy, declared inputs and outputs,
        external data inside the bundle): what export runs on its bundle before it is put in place.

        Raises:
            BundleError: one line naming the graph and what it holds.
        """
        for graph in self.graphs:
            self._external_tensors(graph)

    # -- files ---------------------------------------------------------------------------------

    def _locate(self, name: str, where: str) -> Path:
        """The file behind a relative name of the manifest, if it is a regular file inside the bundle."""
        if (
            not isinstance(name, str) or not name or "\\" in name or "\0" in name or name.startswith("/")
            or any(part in ("", ".", "..") for part in name.split("/"))
        ):
            raise BundleError(
                f"{self.path / MANIFEST}: field {where} = {str(name)[:80]!r} is not a plain relative path inside the "
                f"bundle; re-export the bundle"
            )
        file = self.path / name
        root = self.path.resolve()
        try:
            resolved = file.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a link loop
            raise BundleError(f"{self.path}: {name} is missing; re-export the bundle") from None
        if root not in resolved.parents:
            raise BundleError(f"{self.path}: {name} is a link to {resolved}, outside the bundle; refused")
        if not resolved.is_file():
            raise BundleError(f"{self.path}: {name} is not a regular file; re-export the bundle")
        return resolved

    def _referenced_files(self) -> list[tuple[str, str]]:
        """(manifest field, file name) of every file the runtime may open."""
        refs = [(f"graphs.{g}.file", spec["file"]) for g, spec in self.graphs.items()]
        engines = self.manifest.get("tensorrt", {}).get("engines", {})
        refs += [(f"tensorrt.engines.{g}.file", spec["file"]) for g, spec in engines.items()]
        if "weights" in self.manifest:
            refs.append(("weights.file", self.manifest["weights"]["file"]))
        return refs + [("(reference samples)", REFERENCE)]

    def read(self, name: str) -> bytes:
        """The bytes of a listed file, checked against its sha256: the caller uses exactly these."""
        digest = self.manifest["files"].get(name)
        if digest is None:
            raise BundleError(f"{self.path}: {name} is not listed in the manifest's files; re-export the bundle")
        data = self._locate(name, f"files[{name[:80]!r}]").read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise BundleError(f"{self.path}: {name} does not match its sha256 in the manifest (modified or corrupt); re-export")
        return data

    def graph_bytes(self, graph: str) -> bytes:
        """The ONNX model of `graph` as bytes with its weights inline (TensorRT's parser); the
        external data is read from checked files inside the bundle."""
        data, model, external = self._external_tensors(graph)
        if not external:
            return data
        for tensor, array in external:
            tensor.raw_data = array.tobytes()
            del tensor.external_data[:]
            tensor.data_location = _onnx().TensorProto.DEFAULT
        if model.ByteSize() > MAX_GRAPH_BYTES:
            raise BundleError(f"{self.path}: {graph} is over 2 GB with its weights inline; it cannot be loaded from memory")
        return model.SerializeToString()

    def session_inputs(self, graph: str) -> tuple[bytes, dict[str, np.ndarray]]:
        """What an ONNX Runtime session of `graph` needs: the model's checked bytes and its external
        initializers as read-only arrays over the bundle's checked weights, read once per Bundle."""
        data, _, external = self._external_tensors(graph)
        return data, {tensor.name: array for tensor, array in external}

    def _external_tensors(self, graph: str):
        """(the graph file's checked bytes, the model parsed from them, [(tensor, array over the
        checked external data)]): the file is read once, and those bytes are what runs."""
        if graph not in self.graphs:
            raise BundleError(f"{self.path}: the bundle has no {graph} graph (export it without --no-debug)")
        onnx = _onnx()
        name = self.graphs[graph]["file"]
        data = self.read(name)
        try:
            model = onnx.load_model_from_string(data)
        except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError and others
            raise BundleError(f"{self.path}: {name} is not an ONNX model ({str(e)[:100]}); re-export the bundle") from None
        self._check_graph(model, graph, name)
        external = []
        for tensor in _all_tensors(model):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {entry.key: entry.value for entry in tensor.external_data}
            location = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.get("location", "")))
            if location not in self.manifest["files"]:  # also catches ../ and absolute locations
                raise BundleError(
                    f"{self.path}: {name} keeps tensor {tensor.name[:60]!r} in {info.get('location', '')[:80]!r}, which is "
                    f"not a file of the bundle; refused"
                )
            blob = self._blobs.get(location) or self._blobs.setdefault(location, self.read(location))
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
            count = int(np.prod(tensor.dims, dtype=np.int64))
            try:
                offset, length = int(info.get("offset", 0)), int(info.get("length", count * dtype.itemsize))
            except ValueError:
                raise BundleError(f"{self.path}: {name} gives tensor {tensor.name[:60]!r} a non-numeric offset") from None
            if not 0 <= offset <= offset + length <= len(blob) or length != count * dtype.itemsize:
                raise BundleError(f"{self.path}: {name} reads tensor {tensor.name[:60]!r} outside {location} or with a wrong size")
            external.append((tensor, np.frombuffer(blob, dtype=dtype, count=count, offset=offset).reshape(tensor.dims)))
        return data, model, external

    def _check_graph(self, model, graph: str, name: str) -> None:
        """Refuses a graph that is not what irevnet's exporter writes (runtime/graph_policy.py) or
        not what the manifest describes, before any runtime sees it."""
        where = f"{self.path}: {name}"
        check_graph_policy(model, where)
        initialized = {t.name for t in model.graph.initializer}
        found = {
            "inputs": [(v.name, v.type.tensor_type.elem_type) for v in model.graph.input if v.name not in initialized],
            "outputs": [(v.name, v.type.tensor_type.elem_type) for v in model.graph.output],
        }
        for kind, tensors in found.items():
            expected = [(t["name"], _ONNX_DTYPES.get(t["dtype"])) for t in self.graphs[graph][kind]]
            if tensors != expected:
                raise BundleError(f"{where} has {kind} {[n[:40] for n, _ in tensors][:8]} where the manifest describes "
                                  f"{[n[:40] for n, _ in expected][:8]} (names and dtypes); re-export the bundle")

    def engine_bytes(self, graph: str) -> bytes | None:
        """The serialized TensorRT engine of `graph`, checked; None when none was built."""
        name = self.manifest.get("tensorrt", {}).get("engines", {}).get(graph, {}).get("file")
        return self.read(name) if name else None

    # -- contents ------------------------------------------------------------------------------

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def graphs(self) -> dict[str, dict[str, Any]]:
        return self.manifest["graphs"]

    def has(self, graph: str) -> bool:
        return graph in self.graphs

    def has_engine(self, graph: str) -> bool:
        return graph in self.manifest.get("tensorrt", {}).get("engines", {})

    @property
    def normalization(self) -> dict[str, Any]:
        return self.manifest["normalization"]

    @functools.cached_property
    def config(self) -> IRevNetConfig:
        """The model's architecture (validated when the bundle was opened)."""
        return IRevNetConfig.from_dict(self.manifest["model"]["config"])

    @property
    def num_blocks(self) -> int:
        return self.config.num_blocks

    @property
    def max_batch(self) -> int:
        return int(self.manifest["batch"]["max"])

    def reference(self, *names: str) -> dict[str, np.ndarray]:
        """The PyTorch fp32 reference samples stored at export (images, labels, logits, z,
        reconstruction, h0..hB), checked for dtype and shape.

        Args:
            names: the arrays to read (default: all); absent optional ones (labels, h*) are left
                out. The per-block activations can be tens of MB, so callers ask for what they use.
        """
        try:
            with np.load(io.BytesIO(self.read(REFERENCE)), allow_pickle=False) as data:
                wanted = names or tuple(data.files)
                missing = [k for k in ("images", LOGITS, Z) if k in wanted and k not in data.files]
                if missing:
                    raise BundleError(f"{self.path}: {REFERENCE} lacks {missing}; re-export the bundle")
                present = [k for k in wanted if k in data.files]
                for key in present:
                    self._check_member(data.zip, key)
                arrays = {k: data[k] for k in present}
        except BundleError:
            raise
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise BundleError(f"{self.path}: {REFERENCE} is unreadable ({str(e)[:100]}); re-export the bundle") from None
        self._check_reference(arrays)
        return arrays

    def _check_member(self, archive: zipfile.ZipFile, key: str) -> None:
        """Refuses an array of reference.npz whose header declares more bytes than its member holds,
        or that is compressed (export writes them stored: a compressed one could inflate without
        bound), before numpy allocates it."""
        info = archive.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise BundleError(f"{self.path}: {REFERENCE}[{key!r}] is compressed, which irevnet never writes; re-export")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(member)
        declared = math.prod(shape) * dtype.itemsize
        if declared > info.file_size:
            raise BundleError(f"{self.path}: {REFERENCE}[{key!r}] declares shape {list(shape)[:8]} ({declared} bytes) "
                              f"but holds {info.file_size} bytes; re-export the bundle")

    def _check_reference(self, arrays: dict[str, np.ndarray]) -> None:
        cfg = self.config
        images = arrays.get("images")
        n = len(images) if images is not None and images.ndim >= 1 else None  # a 0-d one is refused below
        expected = {"images": cfg.in_shape, RECONSTRUCTION: cfg.in_shape, LOGITS: (cfg.num_classes,), Z: cfg.z_shape}
        for key, array in arrays.items():
            if key == "labels":
                ok = array.dtype.kind in "iu" and array.ndim == 1
            else:
                ok = array.dtype == np.float32 and array.ndim >= 1 and (key not in expected or array.shape[1:] == tuple(expected[key]))
            if not ok or (n is not None and len(array) > max(n, 1)) or len(array) < 1:
                raise BundleError(
                    f"{self.path}: {REFERENCE}[{key!r}] has dtype {array.dtype} and shape {list(array.shape)}, which "
                    f"do not fit the model; re-export the bundle"
                )


# manifest dtype -> ONNX TensorProto element type
_ONNX_DTYPES = {"float32": 1, "float16": 10, "int64": 7, "int32": 6, Precision.int8: 3, "uint8": 2}

# What irevnet itself writes into a bundle besides the files the manifest lists.
_GENERATED = {MANIFEST, DEBUG, TIMING_CACHE}


def is_bundle_folder(path: Path) -> bool:
    """True when `path` is an irevnet bundle and holds nothing else: its manifest names irevnet
    and every top-level entry is a listed file, a folder of them, or what export and build make.
    `irevnet export -o` replaces only such a folder (a web app with a manifest.json is not one)."""
    try:
        if (path / MANIFEST).stat().st_size > MAX_MANIFEST_BYTES:
            return False
        manifest = json.loads((path / MANIFEST).read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    if not (isinstance(manifest, dict) and isinstance(manifest.get("schema_version"), int)
            and isinstance(manifest.get("irevnet_version"), str) and isinstance(manifest.get("files"), dict)):
        return False
    ours = _GENERATED | {str(name).split("/")[0] for name in manifest["files"]}
    return all(entry.name in ours or TEMPORARY.match(entry.name) for entry in path.iterdir())


def _parse_manifest(manifest_path: Path) -> dict[str, Any]:
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
    return _check_rules(manifest, manifest_path)


def check_manifest(manifest: dict[str, Any], where: str | Path) -> None:
    """What the exporter and the engine builder call before they write a manifest: the rules
    `Bundle.open` enforces (schema, version, config, normalization), applied to the JSON that
    will be written, so a bundle is never written that cannot be read.

    Raises:
        BundleError: one line naming the field, prefixed with `where`.
    """
    try:
        written = json.loads(json.dumps(manifest, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: a value cannot be written as JSON ({str(e)[:120]})") from None
    _check_rules(written, where)


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
        IRevNetConfig.from_dict(manifest["model"]["config"])
    except ConfigError as e:
        raise BundleError(f"{manifest_path}: field 'model.config' is invalid: {e}") from None
    channels = manifest["model"]["config"]["in_shape"][0]
    norm = manifest["normalization"]
    if len(norm["mean"]) != channels or len(norm["std"]) != channels:
        raise BundleError(f"{manifest_path}: field 'normalization' needs {channels} mean and std values, one per channel")
    return manifest


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


def _onnx():
    import onnx  # only where graphs are opened: the manifest checks need no onnx

    return onnx


def _all_tensors(model) -> list:
    """Initializers and tensor attributes of every graph in the model, subgraphs included."""
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(model))
