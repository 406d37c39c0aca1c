"""An exported bundle on disk: manifest.json, the graphs, the engines, the reference samples.

numpy only. `Bundle.open` refuses a bundle from a newer schema, a manifest without the fields the
runtime reads, a missing file, and files that do not match the sha256 the manifest recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError
from ..files import sha256_file

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REFERENCE = "reference.npz"

# The graphs of a bundle, and the engine file each is compiled into.
FORWARD, INVERSE = "forward", "inverse"
FORWARD_BLOCKS, INVERSE_BLOCKS = "forward_blocks", "inverse_blocks"

# The manifest fields the runtime reads, as dotted paths, and their types. The manifest is not
# covered by its own hashes, so a hand-edited one is checked here rather than failing later.
_REQUIRED_FIELDS: dict[str, type] = {
    "precision": str,
    "model.config": dict,
    "normalization.mean": list,
    "normalization.std": list,
    "batch.max": int,
    "range_projection": bool,
    "checkpoint.path": str,
    "files": dict,
    "graphs": dict,
}
_REQUIRED_GRAPH_FIELDS: dict[str, type] = {"file": str, "inputs": list, "outputs": list}


@dataclass
class Bundle:
    """A verified bundle folder and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path, *, check_hashes: bool = True) -> Bundle:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{path} is not a bundle: {MANIFEST} is missing; create one with `irevnet export`")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{manifest_path}: not valid JSON ({e}); re-export the bundle") from None
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        if not isinstance(version, int):
            raise BundleError(f"{manifest_path}: no schema_version; not an irevnet manifest")
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"{manifest_path}: schema version {version} is newer than this irevnet reads ({SCHEMA_VERSION}); "
                f"upgrade irevnet"
            )
        _check_fields(manifest_path, manifest)
        bundle = cls(path, manifest)
        for name, digest in manifest.get("files", {}).items():
            file = path / name
            if not file.is_file():
                raise BundleError(f"{path}: {name} is missing; re-export the bundle")
            if check_hashes and sha256_file(file) != digest:
                raise BundleError(f"{path}: {name} does not match its sha256 in the manifest (modified or corrupt); re-export")
        return bundle

    # -- contents ------------------------------------------------------------------------------

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def graphs(self) -> dict[str, dict[str, Any]]:
        return self.manifest["graphs"]

    def has(self, graph: str) -> bool:
        return graph in self.graphs

    def onnx_path(self, graph: str) -> Path:
        if graph not in self.graphs:
            raise BundleError(f"{self.path}: the bundle has no {graph} graph (export it without --no-debug)")
        return self.path / self.graphs[graph]["file"]

    def engine_path(self, graph: str) -> Path | None:
        file = self.manifest.get("tensorrt", {}).get("engines", {}).get(graph, {}).get("file")
        return self.path / file if file else None

    @property
    def normalization(self) -> dict[str, Any]:
        return self.manifest["normalization"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["model"]["config"]

    @property
    def num_blocks(self) -> int:
        return sum(self.config["blocks"])

    @property
    def max_batch(self) -> int:
        return int(self.manifest["batch"]["max"])

    def reference(self, *names: str) -> dict[str, np.ndarray]:
        """The PyTorch fp32 reference samples stored at export (images, labels, logits, z,
        reconstruction, h0..hB).

        Args:
            names: the arrays to read (default: all); absent ones (labels, h*) are left out. The
                per-block activations can be tens of MB, so callers ask for what they use.
        """
        file = self.path / REFERENCE
        if not file.is_file():
            raise BundleError(f"{self.path}: {REFERENCE} is missing; re-export the bundle")
        with np.load(file, allow_pickle=False) as data:  # an NpzFile reads each array on access
            return {k: data[k] for k in (names or data.files) if k in data.files}

    def io_spec(self, graph: str) -> tuple[list[dict], list[dict]]:
        g = self.graphs[graph]
        return g["inputs"], g["outputs"]


def _check_fields(manifest_path: Path, manifest: dict[str, Any]) -> None:
    required = dict(_REQUIRED_FIELDS)
    for graph in (FORWARD, INVERSE, *(g for g in (FORWARD_BLOCKS, INVERSE_BLOCKS) if g in manifest.get("graphs", {}))):
        required.update({f"graphs.{graph}.{k}": t for k, t in _REQUIRED_GRAPH_FIELDS.items()})
    for dotted, kind in required.items():
        value: Any = manifest
        for key in dotted.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BundleError(
                f"{manifest_path}: field {dotted!r} is missing or not a {kind.__name__}; "
                f"re-export the bundle"
            )
