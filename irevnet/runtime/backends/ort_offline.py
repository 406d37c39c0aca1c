"""ONNX Runtime CPU sessions that hold one copy of the weights between them.

At session start ONNX Runtime's CPU provider rewrites convolutions into its blocked NCHWc layout
(graph optimization level ALL) and keeps the reordered weights inside the session, so every
session has its own copy: a process holding irevnet-301's forward and inverse held 2.3 GB for
500 MB of weights. With graph optimizations off sessions can share weights (add_initializer does
not copy) but run 1.5x slower. ONNX Runtime's offline mode has both: each graph is optimized once
on this machine and saved, the NCHWc weights then being plain initializers; later sessions load
the saved graph with optimizations off and take their initializers from one pool keyed by
content, so the inverse's reordered F weights are the forward's.

The saved graphs depend on the CPU (the NCHWc block width follows its vector width) and on the
onnxruntime version, so they live in this machine's cache, never in a bundle:

    ~/.cache/irevnet/ort_cpu/<onnxruntime version>-<CPU>/
        <graph key>.onnx     the optimized graph, its large initializers as external data
        <sha256>.bin         one distinct tensor, named by the sha256 of its bytes

Tensors are stored once however many graphs and bundles use them, and checked against their name
when read. The graph key hashes the bundle's graph and weights files (their manifest sha256s).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import tempfile
import weakref
from pathlib import Path

import numpy as np

from ...files import atomic_output, machine_cache
from ..bundle import Bundle

_TENSOR_FILE = re.compile(r"^[0-9a-f]{64}\.bin$")
MIN_EXTERNAL_BYTES = 1024  # smaller initializers stay inline in the saved graph
ALIGNMENT = 64

# sha256 of a tensor's bytes -> the array every live session of this process shares
_pool: weakref.WeakValueDictionary[str, np.ndarray] = weakref.WeakValueDictionary()


@functools.lru_cache(maxsize=1)
def cache_root() -> Path:
    """This machine's folder for graphs optimized by this onnxruntime version on this CPU."""
    import onnxruntime

    cpu = platform.machine() + platform.processor()
    try:  # Linux: the instruction-set flags decide the NCHWc kernels ONNX Runtime picks
        cpu += next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        pass
    return machine_cache() / "ort_cpu" / f"{onnxruntime.__version__}-{hashlib.sha256(cpu.encode()).hexdigest()[:16]}"


def graph_key(bundle: Bundle, graph: str) -> str:
    """Names a graph by the sha256s of the files it is made of (graph file, weights file)."""
    files = [bundle.graphs[graph]["file"]] + ([bundle.manifest["weights"]["file"]] if "weights" in bundle.manifest else [])
    return hashlib.sha256("\n".join(bundle.manifest["files"][f] for f in files).encode()).hexdigest()


def prepared_session_inputs(bundle: Bundle, graph: str) -> tuple[bytes, dict[str, np.ndarray], Path]:
    """(optimized model bytes, its external initializers from the shared pool, their folder),
    for a session with graph optimizations off. Optimizes and saves the graph first if this
    machine has not yet.

    Raises:
        OSError: the cache folder cannot be written.
    """
    root = cache_root()
    path = root / f"{graph_key(bundle, graph)}.onnx"
    if path.is_file():
        try:
            return _load(path)
        except ValueError:  # a tensor file changed or went missing: prepare again
            pass
    _prepare(bundle, graph, path)
    return _load(path)


def _prepare(bundle: Bundle, graph: str, path: Path) -> None:
    import onnx
    import onnxruntime as ort

    path.parent.mkdir(parents=True, exist_ok=True)
    model, initializers = bundle.session_inputs(graph)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".prepare.") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "graph.onnx")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "graph.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", str(MIN_EXTERNAL_BYTES))
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in initializers.values()]
        options.add_external_initializers(list(initializers), values)
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])  # saves the optimized graph
        optimized = onnx.load(Path(tmp) / "graph.onnx", load_external_data=False)
        with open(Path(tmp) / "graph.data", "rb") as data:
            for tensor in _external(optimized):
                info = {entry.key: entry.value for entry in tensor.external_data}
                data.seek(int(info.get("offset", 0)))
                raw = data.read(int(info["length"]))
                digest = hashlib.sha256(raw).hexdigest()
                with atomic_output(path.parent / f"{digest}.bin") as out:  # also replaces a damaged one
                    out.write_bytes(raw)
                del tensor.external_data[:]
                for key, value in (("location", f"{digest}.bin"), ("length", str(len(raw)))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
    with atomic_output(path) as out:  # written last: a graph in the cache has all its tensors
        out.write_bytes(optimized.SerializeToString())


def _load(path: Path) -> tuple[bytes, dict[str, np.ndarray], Path]:
    import onnx

    data = path.read_bytes()
    model = onnx.load_model_from_string(data)
    initializers = {}
    for tensor in _external(model):
        info = {entry.key: entry.value for entry in tensor.external_data}
        name = info.get("location", "")
        if not _TENSOR_FILE.match(name) or int(info.get("offset", 0)) != 0:
            raise ValueError(f"{path}: tensor {tensor.name[:60]!r} is not a file of the cache")
        digest = name.removesuffix(".bin")
        owner = _pool.get(digest)
        if owner is None:
            owner = _read_aligned(path.parent / name)
            if hashlib.sha256(_aligned(owner)).hexdigest() != digest:
                raise ValueError(f"{path.parent / name} does not match its name")
            owner.flags.writeable = False
            _pool[digest] = owner
        array = _aligned(owner)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        if array.nbytes != int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize:
            raise ValueError(f"{path}: tensor {tensor.name[:60]!r} does not fit {name}")
        initializers[tensor.name] = array.view(dtype).reshape(tensor.dims)  # a view: the pool's memory
    return data, initializers, path.parent


def _read_aligned(file: Path) -> np.ndarray:
    """A buffer holding the file's bytes at a 64-byte aligned address (see _aligned): the NCHWc
    kernels load whole cache lines of weights, and unaligned weights cost 10% at batch 1."""
    try:
        with open(file, "rb") as f:
            owner = np.empty(os.fstat(f.fileno()).st_size + ALIGNMENT, dtype=np.uint8)
            if f.readinto(memoryview(_aligned(owner))) != owner.size - ALIGNMENT:
                raise ValueError(f"{file} changed while it was read")
    except OSError:
        raise ValueError(f"{file} is missing") from None
    return owner


def _aligned(owner: np.ndarray) -> np.ndarray:
    """The aligned bytes inside a buffer of _read_aligned: a view, so the pool's weak reference
    to the owner lives as long as any session uses them."""
    start = -owner.ctypes.data % ALIGNMENT
    return owner[start:start + owner.size - ALIGNMENT]


def _external(model) -> list:
    import onnx

    return [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
