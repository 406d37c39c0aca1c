"""`irevnet export`: a checkpoint -> a verified bundle of forward and inverse ONNX graphs.

The bundle is assembled in a temporary folder beside the target and renamed into place only after
every graph passed its checks, the verification against PyTorch met the precision's tolerances,
and the folder opened as every reader opens a bundle (Bundle.open, then each graph through the
graph policy); a failed or interrupted export leaves any previous bundle untouched.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import onnx
import torch

from .._version import __version__
from ..contract import (
    BATCH_DIM,
    FORWARD,
    FORWARD_BLOCKS,
    IMAGE,
    INVERSE,
    INVERSE_BLOCKS,
    LAYOUT,
    LOGITS,
    MANIFEST,
    RECONSTRUCTION,
    REFERENCE,
    REFERENCE_IMAGES,
    REFERENCE_LABELS,
    SAMPLE_Z,
    SCHEMA_VERSION,
    WEIGHTS,
    BlockPrecision,
    Calibration,
    Precision,
    Z,
    block_input,
    graph_file,
)
from ..errors import BundleError, CheckFailed, IRevNetError
from ..io.checkpoint import Checkpoint, load_checkpoint, weights_sha256
from ..io.datasets import CIFAR_STATS, IMAGENET_STATS
from ..io.files import atomic_directory, check_replaceable, sha256_file, write_json
from ..io.images import reconstruction_metrics
from ..metrics import top1_accuracy
from ..model.graphs import ForwardBlocksGraph, ForwardGraph, InverseBlocksGraph, InverseGraph, prepare
from ..runtime.backends.ort_backend import OrtBackend
from ..runtime.bundle import Bundle, is_bundle_folder
from ..runtime.comparison import Agreement, Comparison, Parity, Tolerance, compare, tolerance_for
from ..runtime.manifest import Manifest, check_manifest
from ..training.data import load_datasets
from ..training.invert import first_images
from .coupling import MANTISSA_BITS, grid_exponent, snap_coupling
from .fidelity import diagnose
from .onnx_export import branch_signatures, check_graph, export_graph, graph_summary, only_outputs
from .options import AUTO, ExportOptions
from .plan import PrecisionPlan, apply_plan
from .quantize import CALIBRATION_METHODS, calibrate
from .weights import SharedWeights

BLOCK_REFERENCE_BYTES = 64 << 20  # per-block reference activations kept in reference.npz, at most


@dataclass(frozen=True)
class ExportResult:
    """A bundle export wrote: where, its manifest, and the checks its verification ran (truthy
    when all passed; a failed one is written only with allow_mismatch)."""

    out: Path
    manifest: Manifest
    checks: tuple[Comparison | Agreement, ...]
    search: Any = None  # --precision auto: the search's report (irevnet.search.PlanSearch)

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def bytes_on_disk(self) -> int:
        return sum((self.out / name).stat().st_size for name in [*self.manifest.files, MANIFEST])

    def __bool__(self) -> bool:
        return all(self.checks)

    def __str__(self) -> str:
        v = self.manifest.verification
        verdict = "passed" if self else "FAILED (kept: --allow-mismatch)"
        return (f"{self.precision} bundle {self.out}: {', '.join(self.manifest.graphs)}; verification on "
                f"{v.samples} {v.inputs} samples, {v.backend}, {verdict}")

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "passed": bool(self), "bytes_on_disk": self.bytes_on_disk,
                "manifest": self.manifest.to_dict(), **({"search": self.search.to_dict()} if self.search is not None else {})}


def export_bundle(opts: ExportOptions, log=lambda msg: None, planner: Planner | None = None,
                  traced: Traced | None = None) -> ExportResult:
    """Exports, verifies and writes a bundle, in four steps: trace the graphs once; measure what
    reduced precision needs once (int8 ranges, the exact coupling's grid); choose the plan (the
    precision's uniform one, the one given, or the planner's); write the bundle of that plan.

    Args:
        planner: chooses the plan of `--precision auto` and judges the bundle written before it
            is put in place (irevnet.search: the search under a budget).
        traced: graphs `trace` made already, for exports of one checkpoint in several
            precisions or plans (tracing is most of a small model's export): used where they are
            what this export would trace (`Traced.unusable_for`), traced anew otherwise.
    Raises:
        CheckFailed: the verification missed a tolerance, or the planner's judgement failed (and
            allow_mismatch is off); no bundle is written.
    """
    out = Path(opts.out)
    check_replaceable(out, is_bundle_folder, "bundle")  # before any work, not after it
    ckpt = load_checkpoint(opts.checkpoint, image_size=opts.image_size)
    plan = given_plan(opts, ckpt.config.num_blocks)
    if opts.precision == AUTO and planner is None:
        raise IRevNetError("--precision auto is chosen by the search: irevnet.search.export_searched(opts)")
    samples = _samples(ckpt, opts.dataset, min(opts.samples, opts.max_batch))
    if traced is not None and (why := traced.unusable_for(ckpt, opts)):
        log(f"tracing anew: the graphs given {why}")
        traced = None
    traced = traced or trace(ckpt, opts, log)
    lowering = measure_lowering(ckpt, opts, traced, samples, plan, log)
    try:
        if planner is not None:
            plan = planner.plan(ckpt, opts, traced, lowering, samples, log)
        with atomic_directory(out, owned=is_bundle_folder, what="bundle") as tmp:
            result = write_bundle(tmp, out, ckpt, traced, lowering, plan, samples, opts, log)
            if planner is not None:
                judged = planner.judge(tmp, log)
                result = replace(result, search=judged)
                if not judged and not opts.allow_mismatch:
                    raise CheckFailed(f"{judged.verdict()}: the search images did not predict the held-out ones "
                                      f"(search on more, --search-images, or leave the budget a margin); no bundle "
                                      f"written (--allow-mismatch keeps it anyway)")
    finally:
        if planner is not None:
            planner.close()
    return result


class Planner(Protocol):
    """What chooses a bundle's plan (irevnet.search.PlanSearcher)."""

    def plan(self, ckpt: Checkpoint, opts: ExportOptions, traced: Traced, lowering: Lowering, samples: Samples,
             log: Callable[[str], None]) -> PrecisionPlan: ...

    def judge(self, bundle: Path, log: Callable[[str], None]) -> Any:
        """The judgement of the bundle written: truthy when it holds, with verdict()."""

    def close(self) -> None:
        """Removes what plan() left for judge(); called whether or not the export finished."""


def given_plan(opts: ExportOptions, num_blocks: int) -> PrecisionPlan | None:
    """The plan an export of `opts` writes: --precision-plan's, or its precision's uniform one
    (None for fp16, whose coupling stream is fp16 too, and for auto, which the search picks)."""
    if opts.precision_plan is not None:
        return PrecisionPlan.parse(opts.precision_plan, num_blocks)
    if opts.precision == AUTO:
        return None
    return PrecisionPlan.for_precision(opts.precision, num_blocks)


@dataclass(frozen=True)
class Samples:
    """The verification's inputs: real held-out images (with their labels) or seeded noise."""

    images: torch.Tensor
    labels: np.ndarray | None
    normalization: dict[str, Any]


@dataclass(frozen=True)
class Traced:
    """Every graph of the bundle as torch.onnx traced it, once: fp32 (fp16 for an fp16 bundle).
    Plans are applied to copies, so one trace serves every plan a search writes."""

    graphs: Mapping[str, tuple[onnx.ModelProto, bool, float]]  # name -> (graph, strict check, seconds to trace)
    precision: Precision  # fp32, or fp16
    weights_sha256: str  # of the weights every graph derives from: folded, in `precision`
    key: TraceKey  # what the graphs were traced from

    def copy(self, name: str) -> onnx.ModelProto:
        proto = onnx.ModelProto()
        proto.CopyFrom(self.graphs[name][0])
        return proto

    def unusable_for(self, ckpt: Checkpoint, opts: ExportOptions) -> str | None:
        """Why these graphs are not what an export of `opts` would trace (None: they are)."""
        key = TraceKey.of(ckpt, opts, weights_sha256(prepare(ckpt.model, traced_precision(opts.precision))))
        differ = [f.name for f in dataclasses.fields(TraceKey) if getattr(key, f.name) != getattr(self.key, f.name)]
        if differ:
            return f"were traced with another {', '.join(differ)}"
        if missing := [n for n in graph_names(opts) if n not in self.graphs]:
            return f"have no {', '.join(missing)} graph"
        return None


@dataclass(frozen=True)
class TraceKey:
    """What `trace` makes its graphs from: the folded weights and the model's configuration, the
    precision traced, the inverse's range projection and the opset (not the batch bound: the
    graphs serve every one)."""

    weights: str
    config: str
    precision: str
    projection: bool
    opset: int

    @classmethod
    def of(cls, ckpt: Checkpoint, opts: ExportOptions, weights: str) -> TraceKey:
        return cls(weights, json.dumps(ckpt.config.to_dict(), sort_keys=True), traced_precision(opts.precision).value,
                   bool(opts.projection), opts.opset)


def graph_names(opts: ExportOptions) -> tuple[str, ...]:
    """The graphs an export of `opts` writes."""
    return (FORWARD, INVERSE, FORWARD_BLOCKS, INVERSE_BLOCKS) if opts.debug_graphs else (FORWARD, INVERSE)


@dataclass(frozen=True)
class Lowering:
    """What reduced precision needs, measured once on calibration images: the int8 activation
    ranges and the exact coupling's grid (each None where the export does not need it)."""

    calibration: dict[str, Any] | None  # source, images, method, ranges
    grid: dict[str, Any] | None  # exponent, step, bound, max_abs_measured, source, images

    @property
    def ranges(self) -> dict[str, float] | None:
        return self.calibration["ranges"] if self.calibration else None


def trace(ckpt: Checkpoint, opts: ExportOptions, log=lambda msg: None) -> Traced:
    """The graphs traced from the model: the forward and inverse graphs, and the per-block debug
    graphs with `debug_graphs`.

    Only the debug graphs are traced: the forward and inverse graphs are theirs with the block
    outputs left out (only_outputs), so an export traces two graphs, with or without debug
    graphs, and a bundle's forward and inverse are the same either way."""
    cfg = ckpt.config
    precision = traced_precision(opts.precision)
    net = prepare(ckpt.model, precision)  # every graph's weights
    directions = (
        (FORWARD, FORWARD_BLOCKS, lambda: ForwardBlocksGraph(net), ForwardGraph.output_names, cfg.in_shape),
        (INVERSE, INVERSE_BLOCKS, lambda: InverseBlocksGraph(net, opts.projection), InverseGraph.output_names,
         cfg.z_shape),
    )
    graphs = {}
    for name, debug, module, outputs, shape in directions:
        log(f"exporting the {name} graph" + (f" and its debug twin {debug}" if opts.debug_graphs else ""))
        start = time.perf_counter()
        tapped = module()
        try:
            proto = export_graph(tapped, torch.zeros(2, *shape), opset=opts.opset)
        finally:
            tapped.taps.remove()  # the next direction taps the same network
        graphs[name] = (only_outputs(proto, outputs), True, time.perf_counter() - start)  # the trace's seconds
        if opts.debug_graphs:
            graphs[debug] = (proto, False, 0.0)
    weights = weights_sha256(net)
    return Traced(MappingProxyType({name: graphs[name] for name in graph_names(opts)}), precision, weights,
                  TraceKey.of(ckpt, opts, weights))


def measure_lowering(ckpt: Checkpoint, opts: ExportOptions, traced: Traced, samples: Samples,
                     plan: PrecisionPlan | None, log=lambda msg: None) -> Lowering:
    """The int8 ranges (from the fp32 forward graph) and the exact coupling's grid (from the fp32
    model), measured on the calibration images, where the export's plans need them (`plan`: the
    given one; None for fp16, and for auto, whose search may pick any)."""
    int8 = opts.precision == AUTO or (plan is not None and BlockPrecision.int8 in plan.blocks)
    if not (int8 or opts.exact_coupling):
        return Lowering(None, None)
    x, source = calibration_images(ckpt, opts, samples.images)
    calibration = None
    if int8:
        log("calibrating the int8 activation ranges")
        calibration = _calibrate(traced.graphs[FORWARD][0], x, source, opts.max_batch, opts.calibration_method)
    return Lowering(calibration, _grid(ckpt.model, x, source) if opts.exact_coupling else None)


def lower(traced: Traced, name: str, plan: PrecisionPlan | None, lowering: Lowering) -> onnx.ModelProto:
    """Graph `name` of `plan`: a copy of the traced graph with each block's F in its precision,
    and the coupling stream on the exact grid where the export has one."""
    proto = traced.copy(name)
    if plan is not None:
        apply_plan(proto, plan, lowering.ranges)
    if lowering.grid:
        snap_coupling(proto, lowering.grid["exponent"], IMAGE if name in (FORWARD, FORWARD_BLOCKS) else None)
    return proto


def write_bundle(tmp: Path, out: Path, ckpt: Checkpoint, traced: Traced, lowering: Lowering,
                 plan: PrecisionPlan | None, samples: Samples, opts: ExportOptions,
                 log=lambda msg: None) -> ExportResult:
    """Writes the bundle of `plan` into the empty folder `tmp` (to be put at `out`): its graphs,
    the verification against PyTorch, the reference samples, the manifest, and the check that
    every reader opens it.

    Raises:
        CheckFailed: the verification missed the plan's tolerances, and allow_mismatch is off.
    """
    precision = plan.precision if plan is not None else traced.precision
    graphs, weights = _write_graphs(tmp, traced, lowering, plan, opts, log)
    log("verifying with ONNX Runtime (CPU)")
    tolerance = tolerance_for(plan.tolerance_precision if plan is not None else precision,
                              lowering.grid and lowering.grid["exponent"])
    verification, reference, checks = _verify(tmp, graphs, ckpt.model, samples, precision, tolerance, opts)
    np.savez(tmp / REFERENCE, **reference)
    np.save(tmp / SAMPLE_Z, reference[Z][:1])  # a z for the C++ example to invert
    log("estimating the inverse's per-block error gain (fp64)")
    fidelity = diagnose(ckpt.model, samples.images.float(), project=opts.projection)
    if graphs[FORWARD]["branches_sha256"] != graphs[INVERSE]["branches_sha256"]:
        raise IRevNetError("the forward and inverse graphs carry different F subgraphs; this is an export bug")
    manifest = _manifest(tmp, ckpt, opts, precision, plan, traced, graphs, weights, lowering, samples, fidelity,
                         tolerance, verification)
    if not verification["passed"] and not opts.allow_mismatch:
        failed = ", ".join(c["name"] for c in verification["checks"] if not c["passed"])
        raise CheckFailed(f"export verification failed ({failed}) against the {precision} tolerances; "
                          f"no bundle written (--allow-mismatch keeps it anyway)")
    typed = check_manifest(manifest, f"the manifest of {out}")  # what Bundle.open enforces, field by field
    write_json(tmp / MANIFEST, manifest)
    _open_as_a_reader(tmp, out)
    return ExportResult(out, typed, tuple(checks))


def _write_graphs(tmp: Path, traced: Traced, lowering: Lowering, plan: PrecisionPlan | None, opts: ExportOptions,
                  log) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each graph of the plan, checked and saved, its weights in the bundle's one weights file."""
    names = graph_names(opts)
    graphs: dict[str, dict[str, Any]] = {}
    shared = SharedWeights(tmp / WEIGHTS)  # every graph's weights, each tensor once
    for name in (n for n in traced.graphs if n in names):
        _, strict, seconds = traced.graphs[name]
        log(f"writing the {name} graph")
        start = time.perf_counter()
        proto = lower(traced, name, plan, lowering)
        check_graph(proto, graph_file(name), strict=strict)
        signatures = branch_signatures(proto)
        shared.externalize(proto)
        onnx.save_model(proto, str(tmp / graph_file(name)))
        graphs[name] = {
            "file": graph_file(name),
            **graph_summary(proto),
            "branches_sha256": hashlib.sha256("".join(signatures.values()).encode()).hexdigest(),
            "export_seconds": round(seconds + time.perf_counter() - start, 2),
            "files": [graph_file(name), WEIGHTS],
        }
    return graphs, shared.close()


def _manifest(tmp: Path, ckpt: Checkpoint, opts: ExportOptions, precision: Precision, plan: PrecisionPlan | None,
              traced: Traced, graphs, weights, lowering: Lowering, samples: Samples, fidelity, tolerance: Tolerance,
              verification) -> dict[str, Any]:
    model, cfg = ckpt.model, ckpt.config
    calibration, grid = lowering.calibration, lowering.grid
    int8 = plan is not None and BlockPrecision.int8 in plan.blocks
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    return {
        "schema_version": SCHEMA_VERSION,
        "irevnet_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "precision": precision.value,
        **({"precision_plan": plan.to_list()} if plan is not None else {}),
        "opset": opts.opset,
        "model": {
            "config": cfg.to_dict(),
            "type": "injective" if cfg.injective else "bijective",
            "depth": cfg.depth,
            "parameters": model.num_parameters(),
        },
        "checkpoint": {"path": str(opts.checkpoint), "sha256": sha256_file(opts.checkpoint), "format": ckpt.format},
        "weights_sha256": traced.weights_sha256,  # folded fp32 (fp16 for an fp16 bundle), whatever the plan
        "normalization": samples.normalization,
        "layout": LAYOUT,
        "batch": {"dim": BATCH_DIM, "min": 1, "max": opts.max_batch},
        "range_projection": bool(opts.projection and cfg.injective),
        "branches": {
            "identical_in_forward_and_inverse": graphs[FORWARD]["branches_sha256"] == graphs[INVERSE]["branches_sha256"],
            "note": "F subgraphs (names, types, attributes, weights) are identical in both graphs, so F is "
            "expected to evaluate to the same bits when both run on the same kernels; `irevnet verify` measures it",
        },
        "graphs": graphs,
        "weights": weights,
        **({"calibration": {k: v for k, v in calibration.items() if k != "ranges"}} if calibration and int8 else {}),
        **({"exact_coupling": grid} if grid else {}),
        "fidelity": fidelity,
        "versions": _versions(),
        "tolerances": tolerance.to_dict(),
        "verification": verification,
        "files": {f: sha256_file(tmp / f) for f in files},
    }


def traced_precision(precision: Precision) -> Precision:
    """The precision a bundle's graphs are traced in: fp16 for fp16, fp32 for every plan."""
    return Precision.fp16 if precision is Precision.fp16 else Precision.fp32


def _open_as_a_reader(tmp: Path, out: Path) -> None:
    """Opens the finished bundle as every reader does, before it is put in place: Bundle.open
    (manifest, paths, hashes), then each graph through the graph policy and its declared inputs
    and outputs. What a reader would refuse is never written."""
    try:
        Bundle.open(tmp).check_graphs()
    except BundleError as e:
        detail = str(e).replace(str(tmp), str(out))[:300]
        raise BundleError(f"export made a bundle that readers refuse, so {out} was not written: {detail}; this is "
                          f"an export bug") from None


# -- inputs for the verification and the int8 calibration ----------------------------------------


def calibration_images(ckpt: Checkpoint, opts: ExportOptions, images: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The dataset's training images (never the held-out ones the verification judges), or the
    verification's random inputs without a dataset."""
    if opts.dataset:
        data = load_datasets(opts.dataset, ckpt.config.in_shape, augment=False)
        return first_images(data.train, opts.calibration).float(), f"dataset {opts.dataset}, training split"
    return images.float(), "seeded random N(0, 1) (no --dataset: ranges of noise, not of images)"


def _calibrate(forward: onnx.ModelProto, x: torch.Tensor, source: str, max_batch: int,
               method: Calibration) -> dict[str, Any]:
    """Activation ranges of F's convolutions (int8), from the fp32 forward graph."""
    ranges = calibrate(forward, x.numpy(), max_batch, method)
    return {"source": source, "images": len(x), "method": CALIBRATION_METHODS[method], "ranges": ranges}


def _grid(model, x: torch.Tensor, source: str) -> dict[str, Any]:
    """The exact coupling's grid 2^-k, from the largest coupling value of the fp32 model."""
    with torch.no_grad():
        largest = max(float(t.abs().max()) for pair in model.forward_pairs(x) for t in pair if t.numel())
    if not math.isfinite(largest):
        raise IRevNetError(f"the model's coupling values are not finite on the {source} (the fp32 model overflows); "
                           f"check the checkpoint, or export without --exact-coupling")
    k = grid_exponent(largest)
    return {"exponent": k, "step": 2.0**-k, "bound": 2.0 ** (MANTISSA_BITS - k), "max_abs_measured": largest,
            "source": source, "images": len(x)}


def _samples(ckpt: Checkpoint, dataset: str | None, n: int) -> Samples:
    cfg = ckpt.config
    if dataset:  # drawn as verify draws them: a seeded sample over the held-out split, stratified by class
        from ..io.splits import open_split, sample_images

        split = open_split(dataset, "val", tuple(cfg.in_shape))
        if split.classes != cfg.num_classes:
            raise IRevNetError(f"{dataset} has {split.classes} classes but the checkpoint {cfg.num_classes}; export "
                               f"with the dataset it was trained on")
        x, y, _, _ = sample_images(split, n)
        normalization = {"dataset": split.kind, "mean": list(split.mean), "std": list(split.std)}
        return Samples(torch.from_numpy(x), y, {**normalization, "source": f"dataset {dataset}", **_pixels()})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *cfg.in_shape, generator=g)  # normalised inputs are ~N(0, 1)
    return Samples(x, None, {**_normalization_for(ckpt), **_pixels()})


def _pixels() -> dict[str, Any]:
    return {"pixel_range": [0.0, 1.0], "formula": "pixel = image * std + mean (per channel)"}


def _normalization_for(ckpt: Checkpoint) -> dict[str, Any]:
    """Mean/std from the checkpoint's training data, else the paper's for its class count."""
    meta = ckpt.meta
    if "mean" in meta and "std" in meta:
        return {"dataset": meta.get("dataset"), "mean": list(meta["mean"]), "std": list(meta["std"]), "source": "checkpoint"}
    c, classes = ckpt.config.in_shape[0], ckpt.config.num_classes
    known = {1000: ("imagenet", IMAGENET_STATS), 10: ("cifar10", CIFAR_STATS["cifar10"]), 100: ("cifar100", CIFAR_STATS["cifar100"])}
    if c == 3 and classes in known:
        name, (mean, std) = known[classes]
        return {"dataset": name, "mean": list(mean), "std": list(std), "source": f"default for {classes} classes"}
    return {"dataset": None, "mean": [0.0] * c, "std": [1.0] * c, "source": "unknown: identity"}


# -- verification --------------------------------------------------------------------------------


@torch.no_grad()
def _verify(tmp: Path, graphs, model, samples: Samples, precision: Precision, tol: Tolerance, opts: ExportOptions):
    images, labels, normalization = samples.images, samples.labels, samples.normalization
    x = images.float()
    logits_ref, z_ref = model(x)
    rec_ref = model.inverse(z_ref, project=opts.projection)
    x_np = x.numpy()
    with OrtBackend(tmp / graphs[FORWARD]["file"], providers=["cpu"]) as fwd, \
            OrtBackend(tmp / graphs[INVERSE]["file"], providers=["cpu"]) as inv:
        out = fwd.infer({IMAGE: x_np})
        x_hat = inv.infer({Z: out[Z]})[IMAGE]
        # the dynamic batch: one image alone gives what it gave inside the batch
        single = fwd.infer({IMAGE: x_np[:1]})[Z]
        single_inv = inv.infer({Z: out[Z][:1]})[IMAGE]
    mean, std = normalization["mean"], normalization["std"]
    rt = reconstruction_metrics(x_np, x_hat, mean, std)
    parity = Parity.measure(precision.value, "onnxruntime-cpu", out, logits_ref.numpy(), z_ref.numpy(), tol)
    logits, z, agreement = parity.checks
    checks = [
        logits, z,
        compare("round trip", x_hat, x_np, tol.round_trip),
        compare("batch 1 vs batched (forward)", single, out[Z][:1], tol.z),
        compare("batch 1 vs batched (inverse)", single_inv, x_hat[:1], tol.round_trip),
        agreement,
    ]
    result = {
        "backend": "onnxruntime-cpu",
        "samples": len(x_np),
        "inputs": "dataset" if labels is not None else "seeded random N(0, 1)",
        "checks": [c.to_dict() for c in checks],
        "top1_agreement": agreement.value,
        "top1_agreement_min": agreement.minimum,
        "round_trip_psnr_db": rt["psnr_db"],
        "round_trip_max_abs_pixels": rt["max_abs"],
        "passed": all(checks),
    }
    if labels is not None:
        result["top1_pytorch"] = top1_accuracy(logits_ref.numpy(), labels)
        result["top1_onnx"] = top1_accuracy(out[LOGITS], labels)

    reference = {REFERENCE_IMAGES: x_np, LOGITS: logits_ref.numpy(), Z: z_ref.numpy(), RECONSTRUCTION: rec_ref.numpy()}
    if labels is not None:
        reference[REFERENCE_LABELS] = labels
    reference |= _block_reference(model, x)
    return result, reference, checks


def _block_reference(model, x: torch.Tensor) -> dict[str, np.ndarray]:
    """h0..hB of the PyTorch fp32 forward for as many samples as fit BLOCK_REFERENCE_BYTES."""
    from ..model.layers import merge

    pairs = [merge(*p) for p in model.forward_pairs(x[:1])]
    per_sample = sum(p.numel() * 4 for p in pairs)
    n = min(len(x), BLOCK_REFERENCE_BYTES // max(per_sample, 1))
    if n < 1:
        return {}
    if n > 1:  # one sample is all irevnet-301 fits: then the sizing pass is the result
        pairs = [merge(*p) for p in model.forward_pairs(x[:n])]
    return {block_input(i): h.numpy() for i, h in enumerate(pairs)}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    return {
        "irevnet": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
    }


