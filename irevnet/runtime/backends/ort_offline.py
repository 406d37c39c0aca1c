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
        <graph key>.sha256   the sha256 of that graph, recorded when it was made
        <sha256>.bin         one distinct tensor, named by the sha256 of its bytes

Tensors are stored once however many graphs and bundles use them. The graph key hashes the
bundle's graph and weights files (their manifest sha256s). The cache is an input like any other:
every file is opened without following links or blocking, sized before it is read (a tensor must
have exactly the size its graph gives it), and checked against its recorded sha256 (a graph) or
its name (a tensor). Anything off, and the graph is prepared again from the bundle's checked
bytes, with one warning line: what runs is what the bundle's hashes name, whatever the cache holds.
A preparation killed halfway leaves a `.prepare.PID.*.tmp` folder, which the next one removes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
import re
import weakref
from pathlib import Path

import numpy as np

from ...contract import ONNX_SUFFIX
from ...io.files import atomic_output, machine_cache, open_regular, read_regular, work_folder
from ..bundle import MAX_GRAPH_BYTES, Bundle

_TENSOR_FILE = re.compile(r"^[0-9a-f]{64}\.bin$")
MIN_EXTERNAL_BYTES = 1024  # smaller initializers stay inline in the saved graph
ALIGNMENT = 64

# sha256 of a tensor's bytes -> the array every live session of this process shares
_pool: weakref.WeakValueDictionary[str, np.ndarray] = weakref.WeakValueDictionary()


def forget_shared_tensors() -> None:
    """Makes the next session read its tensors from the cache again, as a new process would
    (sessions still open keep theirs)."""
    _pool.clear()


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
    weights = bundle.manifest.weights
    files = [bundle.graphs[graph].file] + ([weights.file] if weights is not None else [])
    return hashlib.sha256("\n".join(bundle.manifest.files[f] for f in files).encode()).hexdigest()


def prepared_session_inputs(bundle: Bundle, graph: str) -> tuple[bytes, dict[str, np.ndarray], Path]:
    """(optimized model bytes, its external initializers from the shared pool, their folder),
    for a session with graph optimizations off. Optimizes and saves the graph first if this
    machine has not yet, or if what the cache holds fails its checks.

    Raises:
        OSError: the cache folder cannot be written.
        RuntimeError: ONNX Runtime could not save the optimized graph (a full disk, say).
    """
    path = cache_root() / (graph_key(bundle, graph) + ONNX_SUFFIX)
    try:
        return load_cached(path)
    except FileNotFoundError:  # not prepared on this machine yet
        pass
    except ValueError as e:
        logging.getLogger(__name__).warning("the cached optimized %s graph is not usable (%s); preparing it again",
                                            graph, str(e)[:200])
    _prepare(bundle, graph, path)
    try:
        return load_cached(path)
    except (FileNotFoundError, ValueError) as e:  # changed again under us: do not loop
        raise RuntimeError(f"the cache at {path.parent} does not keep what is written to it ({str(e)[:200]})") from None


def _prepare(bundle: Bundle, graph: str, path: Path) -> None:
    import onnx
    import onnxruntime as ort

    model, initializers = bundle.session_inputs(graph)
    with work_folder(path.parent, "prepare") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "graph.onnx")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "graph.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", str(MIN_EXTERNAL_BYTES))
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in initializers.values()]
        options.add_external_initializers(list(initializers), values)
        try:
            ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])  # saves the optimized graph
        # ONNX Runtime's errors derive from Exception directly. A full disk, or a graph it refuses:
        # the caller opens the graph plainly, and that session reports a real failure in one line
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(f"ONNX Runtime could not save the optimized graph ({str(e)[:200]})") from None
        try:
            optimized = onnx.load(Path(tmp) / "graph.onnx", load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError: ONNX Runtime wrote part of it (a full disk)
            raise RuntimeError(f"ONNX Runtime saved an unreadable optimized graph ({str(e)[:100]})") from None
        with open(Path(tmp) / "graph.data", "rb") as data:
            for tensor in _external(optimized):
                info = {entry.key: entry.value for entry in tensor.external_data}
                data.seek(int(info.get("offset", 0)))
                raw = data.read(int(info["length"]))
                digest = hashlib.sha256(raw).hexdigest()
                with atomic_output(path.parent / f"{digest}.bin", replace_special=True) as out:  # also replaces a damaged one
                    out.write_bytes(raw)
                del tensor.external_data[:]
                for key, value in (("location", f"{digest}.bin"), ("length", str(len(raw)))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
    data = optimized.SerializeToString()
    with atomic_output(path, replace_special=True) as out:  # after its tensors: a graph in the cache has all of them
        out.write_bytes(data)
    with atomic_output(_record(path), replace_special=True) as out:  # last: the digest vouches for a complete graph
        out.write_text(hashlib.sha256(data).hexdigest())


def _record(path: Path) -> Path:
    return path.with_suffix(".sha256")


def load_cached(path: Path) -> tuple[bytes, dict[str, np.ndarray], Path]:
    """The cached graph at `path` and its tensors, every file checked.

    Raises:
        FileNotFoundError: the graph or its record is not there (never prepared).
        ValueError: anything fails a check.
    """
    import onnx

    recorded = read_regular(_record(path), 64).decode("ascii", "replace")
    data = read_regular(path, MAX_GRAPH_BYTES)
    if hashlib.sha256(data).hexdigest() != recorded:
        raise ValueError(f"{path} does not match the sha256 recorded when it was made")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError; cannot happen for the bytes recorded
        raise ValueError(f"{path} is not an ONNX model ({str(e)[:100]})") from None
    initializers = {}
    for tensor in _external(model):
        info = {entry.key: entry.value for entry in tensor.external_data}
        name = info.get("location", "")
        if not _TENSOR_FILE.match(name) or info.get("offset", "0") != "0":
            raise ValueError(f"{path}: tensor {tensor.name[:60]!r} is not a file of the cache")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        size = int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize
        if any(d < 0 for d in tensor.dims) or size > MAX_GRAPH_BYTES:
            raise ValueError(f"{path}: tensor {tensor.name[:60]!r} has dims {list(tensor.dims)[:8]}")
        digest = name.removesuffix(".bin")
        owner = _pool.get(digest)
        if owner is None:
            owner = _read_aligned(path.parent / name, size)
            if hashlib.sha256(_aligned(owner)).hexdigest() != digest:
                raise ValueError(f"{path.parent / name} does not match its name")
            owner.flags.writeable = False
            _pool[digest] = owner
        array = _aligned(owner)
        if array.nbytes != size:
            raise ValueError(f"{path}: tensor {tensor.name[:60]!r} does not fit {name}")
        initializers[tensor.name] = array.view(dtype).reshape(tensor.dims)  # a view: the pool's memory
    return data, initializers, path.parent


def _read_aligned(file: Path, size: int) -> np.ndarray:
    """A buffer holding the file's `size` bytes at a 64-byte aligned address (see _aligned): the
    NCHWc kernels load whole cache lines of weights, and unaligned weights cost 10% at batch 1.
    The file is opened as files.open_regular does and must hold exactly `size` bytes: nothing
    is allocated for a file of another size."""
    try:
        with open_regular(file) as (f, actual):
            if actual != size:
                raise ValueError(f"{file} holds {actual} bytes, not the {size} its graph gives it")
            owner = np.empty(size + ALIGNMENT, dtype=np.uint8)
            if f.readinto(memoryview(_aligned(owner))) != size:
                raise ValueError(f"{file} changed while it was read")
    except FileNotFoundError:
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
