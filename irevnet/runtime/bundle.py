"""An exported bundle on disk: manifest.json, the graphs, the engines, the reference samples.

numpy only. A bundle may come from another machine, so everything in it is checked before use:

- manifest.json is validated against the published JSON Schema (manifest.schema.json, shipped in
  this package) and must hold finite numbers only; a bad field is named in one line. It is read
  once, into the typed `Manifest` (runtime/manifest.py) that every reader uses;
- every file the runtime opens is a plain relative path inside the bundle that `files` lists:
  `..`, absolute paths and links that resolve outside are refused, and so are ONNX external-data
  locations that leave the bundle;
- `Bundle.read` reads a file once, checks its sha256 and returns those bytes: what was hashed is
  what runs (the graphs go to ONNX Runtime and TensorRT as bytes, never as paths). On ONNX
  Runtime's CPU provider what runs is this machine's optimized copy of those bytes, cached under
  the graph's and weights' sha256 (backends/ort_offline.py);
- a graph holds only what irevnet exports (runtime/graph_policy.py), and its inputs and outputs are
  those the manifest declares; the reference samples are checked too (runtime/reference.py).

The manifest is not signed: whoever can write the bundle can rewrite its hashes too. The checks
catch corruption, files swapped or added by mistake, and paths that reach outside the bundle.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import DEBUG, MANIFEST, REFERENCE, TIMING_CACHE, Precision
from ..errors import BundleError
from ..io.files import TEMPORARY, sha256_file
from ..model.config import IRevNetConfig
from .graph_policy import check_graph_policy
from .manifest import MAX_MANIFEST_BYTES, GraphSpec, Manifest, Normalization, read_manifest
from .reference import ReferenceSamples, read_reference

MAX_GRAPH_BYTES = (2 << 30) - 1  # protobuf's limit for a model handed over in memory


@dataclass
class Bundle:
    """A checked bundle folder and its typed manifest."""

    path: Path
    manifest: Manifest
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
        manifest = read_manifest(manifest_path)
        bundle = cls(path, manifest)
        digests: dict[tuple[int, int], str] = {}  # each distinct file hashed once, however many names reach it
        for name, digest in manifest.files.items():
            file = bundle._locate(name, f"files[{name[:80]!r}]")
            info = file.stat()
            inode = (info.st_dev, info.st_ino)
            if inode not in digests:
                digests[inode] = sha256_file(file)
            if digests[inode] != digest:
                raise BundleError(f"{path}: {name} does not match its sha256 in the manifest (modified or corrupt); re-export")
        for key, name in bundle._referenced_files():
            if name not in manifest.files:
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
        refs = [(f"graphs.{g}.file", spec.file) for g, spec in self.graphs.items()]
        if self.manifest.tensorrt is not None:
            refs += [(f"tensorrt.engines.{g}.file", e.file) for g, e in self.manifest.tensorrt.engines.items()]
        if self.manifest.weights is not None:
            refs.append(("weights.file", self.manifest.weights.file))
        return refs + [("(reference samples)", REFERENCE)]

    def read(self, name: str) -> bytes:
        """The bytes of a listed file, checked against its sha256: the caller uses exactly these."""
        digest = self.manifest.files.get(name)
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
        name = self.graphs[graph].file
        data = self.read(name)
        try:
            model = onnx.load_model_from_string(data)
        except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError and others
            raise BundleError(f"{self.path}: {name} is not an ONNX model ({str(e)[:100]}); re-export the bundle") from None
        check_graph_policy(model, f"{self.path}: {name}")
        self._check_signature(model, graph, name)
        external = []
        for tensor in _all_tensors(model):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {entry.key: entry.value for entry in tensor.external_data}
            location = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.get("location", "")))
            if location not in self.manifest.files:  # also catches ../ and absolute locations
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

    def _check_signature(self, model, graph: str, name: str) -> None:
        """Refuses a graph whose inputs and outputs (names, element types) are not those the
        manifest describes, before any runtime sees it."""
        initialized = {t.name for t in model.graph.initializer}
        found = {
            "inputs": [(v.name, v.type.tensor_type.elem_type) for v in model.graph.input if v.name not in initialized],
            "outputs": [(v.name, v.type.tensor_type.elem_type) for v in model.graph.output],
        }
        spec = self.graphs[graph]
        for kind, tensors in found.items():
            expected = [(t.name, _ONNX_DTYPES.get(t.dtype)) for t in getattr(spec, kind)]
            if tensors != expected:
                raise BundleError(f"{self.path}: {name} has {kind} {[n[:40] for n, _ in tensors][:8]} where the manifest "
                                  f"describes {[n[:40] for n, _ in expected][:8]} (names and dtypes); re-export the bundle")

    def engine_bytes(self, graph: str) -> bytes | None:
        """The serialized TensorRT engine of `graph`, checked; None when none was built."""
        return self.read(self.manifest.tensorrt.engines[graph].file) if self.has_engine(graph) else None

    # -- contents ------------------------------------------------------------------------------

    @property
    def precision(self) -> Precision:
        return self.manifest.precision

    @property
    def graphs(self) -> Mapping[str, GraphSpec]:
        return self.manifest.graphs

    def has(self, graph: str) -> bool:
        return graph in self.graphs

    def has_engine(self, graph: str) -> bool:
        return self.manifest.tensorrt is not None and graph in self.manifest.tensorrt.engines

    @property
    def normalization(self) -> Normalization:
        return self.manifest.normalization

    @property
    def config(self) -> IRevNetConfig:
        """The model's architecture (validated when the bundle was opened)."""
        return self.manifest.config

    @property
    def num_blocks(self) -> int:
        return self.config.num_blocks

    @property
    def max_batch(self) -> int:
        return self.manifest.batch.max

    def reference(self, *names: str) -> ReferenceSamples:
        """The PyTorch fp32 reference samples stored at export, checked for dtype and shape.

        Args:
            names: the members to read (contract.REFERENCE_IMAGES, REFERENCE_LABELS, LOGITS, Z,
                RECONSTRUCTION, block_input(i); default: all); absent optional ones (labels, h*)
                are left out. The per-block activations can be tens of MB, so callers ask for
                what they use.
        """
        return read_reference(self.read(REFERENCE), names, self.config, str(self.path))


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


def _onnx():
    import onnx  # only where graphs are opened: the manifest checks need no onnx

    return onnx


def _all_tensors(model) -> list:
    """Initializers and tensor attributes of every graph in the model, subgraphs included."""
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(model))
