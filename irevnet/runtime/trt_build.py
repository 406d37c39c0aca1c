"""`irevnet build`: a bundle's ONNX graphs -> TensorRT engines, recorded in its manifest.

Written against the TensorRT 10.x and 11.x Python API; needs only `tensorrt` and a GPU (no torch):
- strongly typed networks: precision is what the ONNX graph says (fp32, fp16 or mixed casts, int8 Q/DQ).
  The STRONGLY_TYPED creation flag is computed from the enum (its value differs between 10.x,
  where it is required, and 11.x, where it is deprecated and every network is strongly typed);
- TF32 is cleared unless asked for: it rounds fp32 convolution inputs to 10 mantissa bits, which
  would cost the fp32 round trip three orders of magnitude;
- one optimization profile over the dynamic batch (min 1, opt, max);
- one timing cache shared by all graphs and persisted, so that the identical F subgraphs of the
  forward and inverse graphs are tuned once and get the same tactics;
- parser errors name the ONNX node.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import validation as check
from ..contract import FORWARD, FORWARD_BLOCKS, INVERSE, INVERSE_BLOCKS, MANIFEST, TIMING_CACHE, engine_file
from ..errors import IRevNetError
from ..io.files import atomic_output, sha256_file, write_json
from . import gpu
from .bundle import Bundle
from .engines import (
    EngineMismatch,
    HardwareCompat,
    check_compatible,
    import_tensorrt,
    make_logger,
    make_profile,
)
from .manifest import check_manifest


@dataclass(frozen=True)
class BuildOptions:
    bundle: str
    max_batch: int | None = None  # default: the bundle's exported maximum
    opt_batch: int | None = None  # default: max_batch
    workspace_mb: int | None = None  # default: TensorRT's (all device memory)
    timing_cache: str | None = None  # default: BUNDLE/timing.cache
    opt_level: int = 3  # builder optimization level 0-5 (TensorRT's default 3)
    tf32: bool = False  # allow TF32 for fp32 convolutions
    hardware_compat: HardwareCompat = HardwareCompat.none  # which other GPUs may run the engines
    version_compat: bool = False  # run on later TensorRT releases of the same major version
    debug: bool = False  # also build the per-block debug graphs

    def __post_init__(self) -> None:
        object.__setattr__(self, "hardware_compat", check.choice("hardware_compat", self.hardware_compat, HardwareCompat))
        if not 0 <= self.opt_level <= 5:
            raise IRevNetError(f"--opt-level must be 0..5, got {self.opt_level}")
        if self.workspace_mb is not None and not 1 <= self.workspace_mb <= 1 << 24:
            raise IRevNetError(f"--workspace-mb must be 1..16777216 (16 TiB), got {self.workspace_mb}")

    @classmethod
    def from_record(cls, bundle: Bundle) -> BuildOptions:
        """The options the bundle's engines were built with (its manifest's tensorrt section), all
        of them: a rebuild makes the same engines for this GPU and TensorRT."""
        section = bundle.manifest.tensorrt
        # timing_cache: the bundle's own (the default); a path recorded elsewhere belongs to the
        # machine that built the engines, and a manifest never chooses a path that irevnet opens
        level = section.builder_optimization_level
        return cls(
            bundle=str(bundle.path), max_batch=section.profile.max, opt_batch=section.profile.opt,
            workspace_mb=section.workspace_mb, timing_cache=None,
            opt_level=cls.opt_level if level is None else level, tf32=section.tf32,
            hardware_compat=section.hardware_compatibility,
            version_compat=section.version_compatible, debug=FORWARD_BLOCKS in section.engines,
        )


def _network_flags(trt) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _hardware_level(trt, compat: HardwareCompat):
    return getattr(trt.HardwareCompatibilityLevel, compat.name.upper())  # NONE, AMPERE_PLUS, SAME_COMPUTE_CAPABILITY


def build_engines(opts: BuildOptions, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Builds forward.engine and inverse.engine (and debug engines), updates the manifest.

    Returns:
        The manifest's new "tensorrt" section.
    """
    bundle = Bundle.open(opts.bundle)
    profile = make_profile(bundle.max_batch, opts.max_batch, opts.opt_batch)
    trt = import_tensorrt()
    gpu_name, cc = gpu.cuda_api().device()
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    cache_path = Path(opts.timing_cache) if opts.timing_cache else bundle.path / TIMING_CACHE
    graphs = [FORWARD, INVERSE] + ([FORWARD_BLOCKS, INVERSE_BLOCKS] if opts.debug else [])
    cache, previous = None, _previous_cache(bundle, cache_path, opts)
    engines = {}
    for graph in graphs:
        log(f"building {engine_file(graph)}")
        start = time.perf_counter()
        # one cache for every graph: identical F layers are timed once
        serialized, cache = _engine(trt, builder, logger, opts, profile, bundle.graph_bytes(graph),
                                    bundle.graphs[graph].file, cache, previous)
        file = engine_file(graph)
        with atomic_output(bundle.path / file) as tmp:
            tmp.write_bytes(serialized)
        engines[graph] = {
            "file": file,
            "bytes": (bundle.path / file).stat().st_size,
            "build_seconds": round(time.perf_counter() - start, 2),
        }
    with atomic_output(cache_path) as tmp:
        tmp.write_bytes(bytes(cache.serialize()))
    section = {
        "version": trt.__version__,
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": {"name": gpu_name, "compute_capability": list(cc)},
        "strongly_typed": True,
        "precision": bundle.precision.value,
        "tf32": opts.tf32,
        "profile": {"min": profile.min, "opt": profile.opt, "max": profile.max},
        "builder_optimization_level": opts.opt_level,
        "workspace_mb": opts.workspace_mb,
        "hardware_compatibility": opts.hardware_compat.value,
        "version_compatible": opts.version_compat,
        "timing_cache": _relative_to(cache_path, bundle.path),
        "engines": engines,
    }
    _record(bundle, section, cache_path)
    return section


class GraphEngines:
    """Engines of graphs outside a bundle (the precision search's plans, judged before any bundle
    is written), built as `irevnet build` builds a bundle's with its default options (strongly
    typed, TF32 off, the profile from batch 1 to `max_batch`) but tuned for `opt_batch`, the batch
    they are timed at: one builder and one timing cache for all of them, so that the F layers the
    plans share are timed once. Checks for TensorRT and a GPU when made."""

    def __init__(self, max_batch: int, opt_batch: int | None = None):
        self.trt = import_tensorrt()
        gpu.cuda_api().device()  # a GPU, or one line now
        self.logger = make_logger(self.trt)
        self.builder = self.trt.Builder(self.logger)
        self.profile = make_profile(max_batch, max_batch, opt_batch)
        self.opts = BuildOptions(bundle="")
        self.cache = None

    def build(self, model: bytes, name: str) -> bytes:
        """The serialized engine of an ONNX graph (weights inline); `name` for messages."""
        serialized, self.cache = _engine(self.trt, self.builder, self.logger, self.opts, self.profile, model, name,
                                         self.cache, b"")
        return serialized


def _engine(trt, builder, logger, opts: BuildOptions, profile, model: bytes, name: str, cache, previous: bytes):
    """One graph's serialized engine, and the timing cache it was built with (made from the bytes
    `previous` where `cache` is None, then shared by the next graphs)."""
    config = builder.create_builder_config()
    if cache is None:
        cache = config.create_timing_cache(previous)
    config.set_timing_cache(cache, False)
    _configure(trt, config, opts)
    network, parser = _parse(trt, builder, logger, model, name)
    (tensor,) = [network.get_input(i).name for i in range(network.num_inputs)]
    feature_shape = list(network.get_input(0).shape)[1:]
    optimization = builder.create_optimization_profile()
    optimization.set_shape(tensor, *profile.shapes(feature_shape))
    config.add_optimization_profile(optimization)
    serialized = builder.build_serialized_network(network, config)
    del parser
    if serialized is None:
        raise IRevNetError(f"TensorRT could not build an engine of {name}: {logger.errors()}")
    return bytes(serialized), cache


def rebuild_stale_engines(bundle_path: str | Path, log: Callable[[str], None] = lambda m: None) -> dict[str, Any] | None:
    """Rebuilds a bundle's engines if they were built for another GPU or TensorRT version, with
    every option recorded at their build (`BuildOptions.from_record`).

    Returns:
        The manifest's new "tensorrt" section, or None when the engines fit (or there are none).
    """
    bundle = Bundle.open(bundle_path)
    if bundle.manifest.tensorrt is None:
        return None
    trt = import_tensorrt()
    gpu_name, cc = gpu.cuda_api().device()
    try:
        check_compatible(bundle.manifest.tensorrt, trt.__version__, gpu_name, cc)
    except EngineMismatch as e:
        log(f"rebuilding: {e}")
        return build_engines(BuildOptions.from_record(bundle), log)
    return None


def rebuild_stale(bundles: list[str], backends: list[str], log: Callable[[str], None] = lambda m: None) -> list[str]:
    """verify's and bench's `rebuild` option: when the TensorRT backend is asked for, each bundle's
    engines made for another GPU or TensorRT are rebuilt once, before anything runs.

    Returns:
        The bundles whose engines were rebuilt.
    """
    if "tensorrt" not in backends:  # resolved backend names
        return []
    rebuilt = []
    for bundle in bundles:
        log(f"checking the engines of {bundle}")
        if rebuild_stale_engines(bundle, log) is not None:
            rebuilt.append(bundle)
            log(f"rebuilt the TensorRT engines of {bundle} for this GPU")
    return rebuilt


def _previous_cache(bundle: Bundle, cache_path: Path, opts: BuildOptions) -> bytes:
    """The timing cache to start from: a --timing-cache of the user's as it is; the bundle's own
    only as the checked bytes its manifest lists (an unlisted one is not read, and is replaced)."""
    if opts.timing_cache:
        return cache_path.read_bytes() if cache_path.is_file() else b""
    return bundle.read(TIMING_CACHE) if TIMING_CACHE in bundle.manifest.files else b""


def _configure(trt, config, opts: BuildOptions) -> None:
    if not opts.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if opts.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    config.builder_optimization_level = opts.opt_level
    if opts.hardware_compat is not HardwareCompat.none:
        config.hardware_compatibility_level = _hardware_level(trt, opts.hardware_compat)
    if opts.version_compat:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)


def _parse(trt, builder, logger, model: bytes, name: str):
    """Parses the checked bytes of a graph (external weights already inline, see Bundle.graph_bytes)."""
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            errors.append(f"node {e.node_name() or e.node()} ({e.node_operator()}): {e.desc()}")
        raise IRevNetError(f"TensorRT could not parse {name}: {'; '.join(errors) or logger.errors()}")
    return network, parser


def _relative_to(path: Path, root: Path) -> str:
    """`path` relative to the bundle when inside it (a bundle names no absolute path of its own)."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _record(bundle: Bundle, section: dict[str, Any], cache_path: Path) -> None:
    """Writes the TensorRT section and the new files' hashes into the manifest (atomically)."""
    manifest = bundle.manifest.to_dict()
    manifest["tensorrt"] = section
    files = dict(manifest["files"])
    for engine in section["engines"].values():
        files[engine["file"]] = sha256_file(bundle.path / engine["file"])
    if cache_path.parent.resolve() == bundle.path.resolve():
        files[cache_path.name] = sha256_file(cache_path)
    manifest["files"] = dict(sorted(files.items()))
    check_manifest(manifest, f"the manifest of {bundle.path}")  # what Bundle.open enforces, before it is written
    write_json(bundle.path / MANIFEST, manifest)
