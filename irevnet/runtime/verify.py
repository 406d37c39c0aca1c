"""`irevnet verify`: how far each exported artifact is from the PyTorch model, and where.

Checks, per bundle and backend, against the bundle's tolerances:
- round trip x -> forward -> z -> inverse -> x_hat;
- cross round trips (z from one backend, or from PyTorch, inverted on another);
- parity with PyTorch fp32: logits, z, top-1 agreement, accuracy on labelled data. The reference
  is the live checkpoint when torch is installed, else the samples stored in the bundle;
- error per block from the debug graphs: forward drift from PyTorch, the inverse's round trip
  error at every block boundary, F's bit mismatch between the two graphs, and the inverse's
  error gain recorded at export.
numpy only, unless the torch backend or a live reference is asked for.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import validation as check
from ..contract import (
    FORWARD,
    FORWARD_BLOCKS,
    IMAGE,
    INVERSE,
    INVERSE_BLOCKS,
    LOGITS,
    REFERENCE_IMAGES,
    REFERENCE_LABELS,
    Precision,
    Z,
    block_input,
    branch_output,
)
from ..errors import IRevNetError
from ..io.images import plot_error_vs_depth
from ..io.splits import read_test_images
from ..metrics import rel_l2
from .backends import BackendOptions, open_backend, options_for, refuse_options_not_taken, resolve_backends, unsupported
from .bundle import Bundle
from .comparison import Parity, RoundTrip, Tolerance, tolerance_for
from .manifest import Fidelity


@dataclass
class VerifyOptions:
    bundles: list[str]
    backends: list[str] | None = None  # default: onnxruntime, or triton with `server`
    server: str | None = None  # a live Triton server (http://HOST:PORT, grpc://HOST:PORT): the triton backend
    server_timeout_s: float = 60.0  # the deadline of each call to the server, over its whole answer
    dataset: str | None = None  # held-out real images; default: the bundle's reference samples
    samples: int = 8
    checkpoint: str | None = None  # live PyTorch reference; default: the manifest's, when torch is there
    providers: list[str] | None = None  # ONNX Runtime providers
    threads: int | None = None
    device: str = "auto"  # torch backend
    blocks: bool = True  # per-block analysis (needs the debug graphs)
    plot: str | None = None  # error-vs-depth PNG
    rebuild: bool = False  # rebuild TensorRT engines made for another GPU or TensorRT first

    def __post_init__(self) -> None:
        if not self.bundles:
            raise IRevNetError("give at least one bundle folder")
        self.bundles = [str(b) for b in self.bundles]
        self.backends = resolve_backends(self.backends, self.server, [] if self.server is not None else ["onnxruntime"])
        check.integer("samples", self.samples, 1, 4096)
        check.threads(self.threads)
        check.number("server_timeout_s", self.server_timeout_s, 0.0, 86400.0, low_open=True)
        # --checkpoint is also the live reference, whichever backends run
        refuse_options_not_taken(self.backends, self.backend_options, taken=["checkpoint"])

    @property
    def backend_options(self) -> BackendOptions:
        """What was asked of the backends, each opened with its share (backends.options_for)."""
        return BackendOptions(providers=self.providers, threads=self.threads, device=self.device,
                              checkpoint=self.checkpoint, server=self.server, server_timeout_s=self.server_timeout_s)


@dataclass
class BlockReport:
    """Error per block boundary of one bundle on one backend, from the debug graphs (not a verdict).

    round_trip[i]: the inverse's recovered input of block i vs this backend's forward (last: z);
    forward_drift[i]: the forward's block input vs PyTorch fp32; f_identical_fraction[i]: share of
    block i's F output equal in both graphs; gain: the inverse's per-block error gain (export, fp64).
    """

    precision: str
    backend: str
    gain: list[float] | None = None
    warnings: list[str] = field(default_factory=list)
    skipped: str | None = None  # why there are no figures
    round_trip: list[float] = field(default_factory=list)
    forward_drift: list[float] | None = None
    forward_drift_samples: int | None = None
    f_identical_fraction: list[float] = field(default_factory=list)
    f_max_abs_difference: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        if self.skipped:
            return f"{self.precision} on {self.backend}: per-block analysis skipped, {self.skipped}"
        return (f"{self.precision} on {self.backend}: inverse error per block up to {max(self.round_trip):.1e}, "
                f"F bits equal in {min(self.f_identical_fraction, default=1.0):.0%} or more")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and not (k in _FIGURES and self.skipped)}


_FIGURES = ("round_trip", "f_identical_fraction", "f_max_abs_difference")


@dataclass
class VerifyReport:
    """Everything `verify` measured; truthy when every judged check (round trips, cross round
    trips, parity) passed. Per-block reports are figures, not verdicts."""

    bundles: list[dict[str, str]]
    backends: list[str]
    samples: int
    inputs: str
    reference: str
    round_trip: list[RoundTrip] = field(default_factory=list)
    cross_round_trip: list[RoundTrip] = field(default_factory=list)
    parity: list[Parity] = field(default_factory=list)
    blocks: list[BlockReport] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    plot: str | None = None
    images: list[str] = field(default_factory=list)  # with --dataset: the images used, by their paths in the split

    @property
    def judged(self) -> list[RoundTrip | Parity]:
        return [*self.round_trip, *self.cross_round_trip, *self.parity]

    @property
    def passed(self) -> bool:
        return all(self.judged)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        failed = [str(check) for check in self.judged if not check]
        head = f"{len(self.judged)} checks on {self.samples} {self.inputs}: {'pass' if self else 'FAIL'}"
        return "\n".join([head, *failed])

    def to_dict(self) -> dict[str, Any]:
        out = {"bundles": self.bundles, "backends": self.backends, "samples": self.samples, "inputs": self.inputs,
               "images": self.images, "reference": self.reference}
        for key in ("round_trip", "cross_round_trip", "parity", "blocks"):
            out[key] = [entry.to_dict() for entry in getattr(self, key)]
        out |= {"skipped": self.skipped, "passed": self.passed}
        return out | ({"plot": self.plot} if self.plot else {})


def verify(opts: VerifyOptions, log: Callable[[str], None] = lambda m: None) -> VerifyReport:
    """Runs every check; the report is falsy when any judged check failed."""
    if opts.rebuild:
        from .trt_build import rebuild_stale

        rebuild_stale(opts.bundles, opts.backends, log)
    bundles = [Bundle.open(b) for b in opts.bundles]
    if any(b.config != bundles[0].config for b in bundles):
        raise IRevNetError("the bundles come from different models; verify them one at a time")
    backends = opts.backends
    x, labels, source, paths = _inputs(bundles[0], opts)
    reference = _reference(bundles[0], x, opts, log)
    report = VerifyReport([{"path": str(b.path), "precision": b.precision} for b in bundles], backends, len(x), source,
                          reference["source"], images=paths)
    for bundle in bundles:
        # with several bundles, a pair the backend cannot run (int8 on torch) is skipped; alone, it refuses
        kinds = [kind for kind in backends if len(bundles) == 1 or not unsupported(kind, bundle.precision)]
        report.skipped += [{"bundle": str(bundle.path), "backend": kind, "reason": unsupported(kind, bundle.precision)}
                           for kind in backends if kind not in kinds]
        tol = tolerances(bundle)
        norm = bundle.normalization
        with contextlib.ExitStack() as opened:  # each session opened once, reused for the cross checks
            inverses, outputs = {}, {}
            for kind in kinds:
                log(f"{bundle.precision}: running {kind}")
                fwd = opened.enter_context(_open(kind, bundle, FORWARD, opts))
                inv = opened.enter_context(_open(kind, bundle, INVERSE, opts))
                out = fwd.infer_in_batches({IMAGE: x})
                x_hat = inv.infer_in_batches({Z: out[Z]})[IMAGE]
                inverses[fwd.name], outputs[fwd.name] = (kind, inv), out
                report.round_trip.append(RoundTrip.measure(bundle.precision, fwd.name, fwd.name, kind, x_hat, x, norm, tol.round_trip))
                if reference[Z] is not None:  # PyTorch's z, inverted here: z made elsewhere
                    x_from_ref = inv.infer_in_batches({Z: reference[Z]})[IMAGE]
                    report.cross_round_trip.append(
                        RoundTrip.measure(bundle.precision, "PyTorch fp32", fwd.name, kind, x_from_ref, x, norm, tol.cross))
                if reference[LOGITS] is not None:
                    report.parity.append(Parity.measure(bundle.precision, fwd.name, out, reference[LOGITS], reference[Z],
                                                        tol, labels))
            for a_name, out in outputs.items():  # z from one backend, inverted on another
                for b_name, (b_kind, inv) in inverses.items():
                    if b_name != a_name:
                        x_cross = inv.infer_in_batches({Z: out[Z]})[IMAGE]
                        report.cross_round_trip.append(
                            RoundTrip.measure(bundle.precision, a_name, b_name, b_kind, x_cross, x, norm, tol.cross))
        if opts.blocks:
            for kind in kinds:
                report.blocks.append(_blocks(bundle, kind, x, reference, opts, log))

    if opts.plot and any(b.round_trip for b in report.blocks):
        _plot(report, opts.plot)
        report.plot = opts.plot
    return report


# -- inputs and the PyTorch reference --------------------------------------------------------------


def tolerances(bundle: Bundle) -> Tolerance:
    """The tolerances the bundle was exported under (its manifest), else the current table's."""
    return bundle.manifest.tolerances or tolerance_for(bundle.manifest.tolerance_precision)


def _has_torch() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # blocked, or a broken installation
        return False


def _inputs(bundle: Bundle, opts: VerifyOptions) -> tuple[np.ndarray, np.ndarray | None, str, list[str]]:
    """(images, labels, what they are, their paths in the split: empty for the stored samples)."""
    if opts.dataset:
        x, labels, paths = read_test_images(opts.dataset, bundle.config.in_shape, opts.samples)
        return x, labels, f"images of {opts.dataset} (a seeded sample of its held-out split, stratified by class)", paths
    ref = bundle.reference(REFERENCE_IMAGES, REFERENCE_LABELS)
    n = min(opts.samples, len(ref.images))
    return ref.images[:n], ref.labels[:n] if ref.labels is not None else None, "reference samples stored at export", []


def _reference(bundle: Bundle, x: np.ndarray, opts: VerifyOptions, log) -> dict[str, Any]:
    """PyTorch fp32 logits, z and block activations for x: live if possible, else stored."""
    ckpt = opts.checkpoint or bundle.manifest.checkpoint.path
    if _has_torch() and Path(ckpt).is_file():
        log("computing the PyTorch fp32 reference")
        from .backends.torch_backend import TorchBackend

        kw = {"precision": Precision.fp32, "image_size": bundle.config.in_shape[1], "device": "cpu",
              "sha256": bundle.manifest.checkpoint.sha256}  # the exported checkpoint, or refused
        graph = FORWARD_BLOCKS if opts.blocks else FORWARD
        with TorchBackend(ckpt, graph, **kw) as torch_fwd:
            out = torch_fwd.infer({IMAGE: x})
        blocks = [out[block_input(i)] for i in range(bundle.num_blocks + 1)] if opts.blocks else None
        return {"source": f"PyTorch fp32, live from {ckpt}", LOGITS: out[LOGITS], Z: out[Z], "h": blocks}
    if opts.checkpoint and not Path(opts.checkpoint).is_file():
        raise IRevNetError(f"checkpoint not found: {opts.checkpoint}")
    blocks = [block_input(i) for i in range(bundle.num_blocks + 1)] if opts.blocks else []
    stored = bundle.reference(REFERENCE_IMAGES, LOGITS, Z, *blocks)
    if opts.dataset or not np.array_equal(stored.images[: len(x)], x):
        return {"source": "none (no torch, and the inputs are not the stored samples)", LOGITS: None, Z: None, "h": None}
    n = len(x)
    return {
        "source": "PyTorch fp32 outputs stored in the bundle at export",
        LOGITS: stored.logits[:n], Z: stored.z[:n],
        "h": list(stored.blocks) if blocks and stored.blocks else None,
    }


def _open(kind: str, bundle: Bundle, graph: str, opts: VerifyOptions):
    return open_backend(kind, bundle, graph, options_for(kind, opts.backend_options))


# -- checks ----------------------------------------------------------------------------------------


def _blocks(bundle: Bundle, kind: str, x: np.ndarray, reference, opts: VerifyOptions, log) -> BlockReport:
    fidelity = bundle.manifest.fidelity or Fidelity()
    gain = list(fidelity.inverse_gain) if fidelity.inverse_gain is not None else None
    report = BlockReport(bundle.precision, kind, gain, list(fidelity.warnings))
    if not (bundle.has(FORWARD_BLOCKS) and bundle.has(INVERSE_BLOCKS)):
        report.skipped = "the bundle has no debug graphs (exported with --no-debug)"
        return report
    if kind == "triton":
        report.skipped = "a Triton repository serves the forward and inverse graphs only"
        return report
    if kind == "tensorrt" and not bundle.has_engine(FORWARD_BLOCKS):
        report.skipped = "no debug engines (build them with `irevnet build --debug`)"
        return report
    log(f"{bundle.precision}: per-block analysis on {kind}")
    b = bundle.num_blocks
    x = x[: bundle.max_batch]  # one batch: the per-block figures need no more
    with _open(kind, bundle, FORWARD_BLOCKS, opts) as fwd, _open(kind, bundle, INVERSE_BLOCKS, opts) as inv:
        f_out = fwd.infer({IMAGE: x})
        i_out = inv.infer({Z: f_out[Z]})
        report.backend = fwd.name
    report.round_trip = [rel_l2(i_out[block_input(i)], f_out[block_input(i)]) for i in range(b + 1)]
    if reference["h"] is not None:
        n = min(len(reference["h"][0]), len(x))
        report.forward_drift = [rel_l2(f_out[block_input(i)][:n], reference["h"][i][:n]) for i in range(b + 1)]
        report.forward_drift_samples = n
    report.f_identical_fraction = [float(np.mean(f_out[branch_output(i)] == i_out[branch_output(i)])) for i in range(b)]
    report.f_max_abs_difference = [float(np.max(np.abs(f_out[branch_output(i)] - i_out[branch_output(i)])))
                                   for i in range(b)]
    return report


def _plot(report: VerifyReport, path: str) -> None:
    inverse, forward = {}, {}
    for entry in report.blocks:
        label = f"{entry.precision} {entry.backend}"
        if entry.round_trip:
            inverse[label] = entry.round_trip
        if entry.forward_drift:
            forward[label] = entry.forward_drift
    panels = {"inverse: recovered block inputs vs this backend's forward": inverse}
    if forward:
        panels["forward: block outputs vs PyTorch fp32"] = forward
    plot_error_vs_depth(panels, path, "error per block")
