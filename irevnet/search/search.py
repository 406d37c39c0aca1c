"""The fastest precision plan that meets an accuracy budget.

1. Every graph is traced once and the int8 ranges measured once (export.bundle's trace and
   measure_lowering); every plan's graphs derive from them (export.bundle.lower).
2. Blocks are ranked by the drift each adds when it alone is reduced to int8 (search/sensitivity.py,
   on the first RANKING_IMAGES calibration images, through a debug view of the traced forward
   graph), where uniform int8 misses the budget: a budget that every block in int8 meets needs no
   ranking.
3. Starting from every block in int8, the most sensitive blocks are raised to fp32 (fp16 is not
   a fast path on the CPU backends, bf16 has no plan entry: `not_picked`; on TensorRT to fp16
   first, then to fp32 if no plan of fp16 blocks met the budget: `rungs`). The count k is guessed
   from the per-block drifts and uniform int8's (`predicted`) and judged; the fewest that meet
   the budget are then bracketed and found by regula falsi on the plans' margins to the budget,
   safeguarded by bisection (`climb`); then the uniform fp32 plan if it was not among them: at
   most B + 2 plans for B blocks, 4 ceil(log2 B) + 3 whatever the guess and the margins, 4 when
   the guess is right and the margins fall on a line.
4. Each plan is judged by its forward graph, derived in memory and opened on the target backend
   (no bundle is written for it): judged by the whole-dataset evaluation against PyTorch fp32
   on the search images, checked against PyTorch fp32 on the export's verification samples with
   the plan's tolerances where it met the budget there (one that misses them is never chosen),
   and measured on the held-out split for the report. The plans' forwards are timed side by
   side on that backend (alternating rounds, as `irevnet bench` times bundles; up to OPEN_AT_ONCE together, whose
   sessions are then closed), and the fastest plan that met the budget on the search images is
   chosen. The export then writes and verifies its bundle (the
   round trip included) as any export does, and the bundle, as written, is judged on the held-out
   split, which no decision saw.

Images: the export calibrates on the training split's first `calibration` images; the search
decides on `search_images` others of that split, a sample stratified by class; the held-out (val)
split judges (a stratified sample of `held_out` of it, where given). No image serves twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contract import BlockPrecision, Precision
from ..errors import IRevNetError
from ..export.plan import PrecisionPlan
from .budget import Budget

if TYPE_CHECKING:
    from ..evaluation.engine import Target
    from ..export.bundle import Lowering, Samples, Traced
    from ..export.options import ExportOptions
    from ..io.checkpoint import Checkpoint
    from ..io.splits import Split


# plans whose sessions stay open to be timed side by side, at most: each holds its plan's weights
# (irevnet-301 peaked at 12.4 GB resident with 15 open at once)
OPEN_AT_ONCE = 8
# calibration images the blocks are ranked on, at most: a block's drift sums every value of its F
# output, millions per image on irevnet-301, whose order on 16 of 32 images kept a Spearman
# correlation of 0.997 with the order on all 32 (the quarter most sensitive: 24 of 25 the same;
# the trained irevnet-tiny's on 16 of 256 digits: 1.0), for 70% of the time
RANKING_IMAGES = 16
# alternating rounds each plan's forward is timed over (one call each at least): a median of 3
# calls of a forward that takes longer than the round (irevnet-301's, about a second on 2 vCPUs)
TIMING_ROUNDS = 3


@dataclass(frozen=True)
class Measured:
    """A plan's agreement with PyTorch fp32 over some images."""

    images: int
    agreement: float  # share of images with PyTorch fp32's top-1
    logits_median: float  # per-image logits rel. L2 to PyTorch fp32's
    logits_p99: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Candidate:
    """One plan the search tried (or a uniform plan shown beside them)."""

    label: str
    plan: PrecisionPlan
    search: Measured | None = None  # on the search images (what the search decided on)
    held_out: Measured | None = None  # on the held-out split (what the report shows)
    median_ms: float | None = None  # the forward at the bench batch on the target backend
    # its forward met the plan's verification tolerances (one that did not is never chosen); None:
    # not checked, as it cannot be chosen (it missed the budget on the search images, or is shown only)
    verified: bool | None = None

    @property
    def kept(self) -> list[str]:
        """The blocks not in int8, by their F names."""
        return [f"block{i}/F ({p.value})" for i, p in enumerate(self.plan.blocks) if p is not BlockPrecision.int8]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "precision_plan": self.plan.to_list(), "kept": self.kept,
                "search": self.search and self.search.to_dict(), "held_out": self.held_out and self.held_out.to_dict(),
                "median_ms": self.median_ms, "verified": self.verified}


@dataclass
class PlanSearch:
    """What a search tried, what it chose, and the chosen bundle's judgement on the held-out split
    (truthy when that meets the budget)."""

    budget: Budget
    backend: str
    bench_batch: int
    sensitivity: list[float]  # per block: the drift it adds alone in int8 (empty: uniform int8 met the budget)
    tried: list[Candidate]  # in the order tried; the search's decisions
    uniform: list[Candidate]  # fp32, mixed, int8, for the frontier
    chosen: Candidate
    images: dict[str, Any]  # calibration, search, held_out: counts and where from
    notes: list[str]  # precisions not picked on this backend, and why
    evaluations: int  # plans judged on the search images
    seconds: float = 0.0
    judged: Measured | None = None  # the written bundle on the held-out split

    def __bool__(self) -> bool:
        return self.judged is not None and self.budget.met(self.judged.agreement, self.judged.logits_p99)

    def verdict(self) -> str:
        j = self.judged
        if j is None:
            return "the chosen plan was not judged on the held-out split"
        return (f"the chosen plan ({self.chosen.plan}) has agreement {j.agreement:.4f} and logits rel. L2 p99 "
                f"{j.logits_p99:.2e} on {j.images} held-out images: {'meets' if self else 'misses'} {self.budget}")

    def frontier(self) -> list[Candidate]:
        """Every plan shown (tried and uniform, one per plan), fastest first, with held-out numbers and a time."""
        seen: dict[tuple, Candidate] = {}
        for c in [*self.uniform, *self.tried]:
            if c.held_out is not None and c.median_ms is not None:
                seen.setdefault(tuple(c.plan.blocks), c)
        return sorted(seen.values(), key=lambda c: c.median_ms)

    def pareto(self) -> list[Candidate]:
        """The plans no other is at least as fast and at least as close to PyTorch fp32 as (on the
        held-out agreement and logits drift both), fastest first."""
        shown = self.frontier()

        def dominates(d: Candidate, c: Candidate) -> bool:
            return (d is not c and d.median_ms <= c.median_ms and d.held_out.agreement >= c.held_out.agreement
                    and d.held_out.logits_p99 <= c.held_out.logits_p99)

        return [c for c in shown if not any(dominates(d, c) for d in shown)]

    def __str__(self) -> str:
        return f"precision search under {self.budget}: chose {self.chosen.plan}; {self.verdict()}"

    def to_dict(self) -> dict[str, Any]:
        return {"budget": str(self.budget), "backend": self.backend, "bench_batch": self.bench_batch,
                "sensitivity": self.sensitivity, "tried": [c.to_dict() for c in self.tried],
                "uniform": [c.to_dict() for c in self.uniform], "chosen": self.chosen.to_dict(),
                "judged": self.judged and self.judged.to_dict(), "met": bool(self), "images": self.images,
                "notes": self.notes, "evaluations": self.evaluations, "seconds": self.seconds}


def rungs(backend: str) -> tuple[BlockPrecision, ...]:
    """What the climb raises blocks to on `backend`, in turn: fp16 first on TensorRT (a GPU runs
    fp16 convolutions natively, faster than fp32; fp32 where no plan of fp16 blocks meets the
    budget), fp32 on the CPU backends."""
    return (BlockPrecision.fp16, BlockPrecision.fp32) if backend == "tensorrt" else (BlockPrecision.fp32,)


def not_picked(backend: str) -> list[str]:
    """The precisions the search does not raise blocks to on `backend`, and why."""
    bf16 = "bf16: no plan entry (ONNX's Conv takes bfloat16 from opset 22, beyond the 18-20 TensorRT 10 parses)"
    if backend == "tensorrt":
        return [bf16, ("fp16: the first rung of the climb (a GPU runs fp16 convolutions natively); raised blocks go to "
                       "fp32 only where no plan of fp16 blocks meets the budget")]
    return [bf16, (f"fp16: {backend} on the CPU runs fp16 convolutions through conversions to fp32, slower than fp32 "
                   f"itself, so raised blocks go to fp32 (the mixed bundle is measured beside the plans all the same)")]


def run_export(opts: ExportOptions, log=lambda msg: None):
    """What `irevnet export` runs: the search's bundle for --precision auto, export_bundle's for
    every other precision."""
    from ..export.bundle import export_bundle
    from ..export.options import AUTO

    return export_searched(opts, log) if opts.precision == AUTO else export_bundle(opts, log)


def export_searched(opts: ExportOptions, log=lambda msg: None, traced: Traced | None = None):
    """`irevnet export --precision auto`: the bundle of the fastest plan that meets the budget
    (the result's `search` is the PlanSearch), and the frontier's PNG where asked. `traced`: as
    export_bundle takes it."""
    from ..export.bundle import export_bundle

    if opts.search_backend == "tensorrt":  # TensorRT and a GPU, or one line before any work
        from ..runtime import gpu
        from ..runtime.engines import import_tensorrt

        import_tensorrt()
        gpu.cuda_api().device()
    result = export_bundle(opts, log, planner=PlanSearcher(), traced=traced)
    if opts.frontier:
        from .frontier import plot_frontier

        plot_frontier(result.search, opts.frontier, f"precision plans of {opts.checkpoint}")
    return result


class PlanSearcher:
    """The export's planner for `--precision auto` (export.bundle.Planner): plan() searches, judge()
    evaluates the written bundle on the held-out split."""

    def __init__(self):
        self.context: _Context | None = None
        self.report: PlanSearch | None = None

    def plan(self, ckpt: Checkpoint, opts: ExportOptions, traced: Traced, lowering: Lowering, samples: Samples,
             log) -> PrecisionPlan:
        self.context = _Context(ckpt, opts, traced, lowering, samples, log)
        self.report = _search(self.context)
        return self.report.chosen.plan

    def judge(self, bundle: Path, log) -> PlanSearch:
        report, context = self.report, self.context
        log(f"judging the chosen plan on {len(context.held_out)} held-out images")
        start = time.monotonic()
        report.judged = context.judge_bundle(bundle)
        report.seconds += time.monotonic() - start
        return report

    def close(self) -> None:
        if self.context is not None:
            self.context.close()


class _Context:
    """What the search's plans are judged by: the export's steps, the splits, PyTorch fp32's
    records on the search images and on the held-out split, and its outputs on the export's
    verification samples. A plan is judged by its forward graph in memory, on the target backend:
    no bundle is written until one is chosen."""

    def __init__(self, ckpt: Checkpoint, opts: ExportOptions, traced: Traced, lowering: Lowering, samples: Samples,
                 log):
        import torch

        from ..evaluation.engine import checkpoint_target
        from ..io.files import sha256_file
        from ..io.splits import open_split, stratified

        self.ckpt, self.opts, self.traced, self.lowering, self.samples, self.log = ckpt, opts, traced, lowering, samples, log
        self.start = time.monotonic()
        self.scratch: Path | None = None
        self.graphs: dict[int, tuple[Candidate, Any]] = {}  # id() of a candidate -> it, its forward graph's backend
        shape = tuple(ckpt.config.in_shape)
        train = open_split(opts.dataset, "train", shape)
        # the export calibrates on the training split's first images; the search decides on a
        # sample over the rest, stratified by class, and the held-out split judges (its first N
        # of a stratified order with --held-out: every class, not the first in the listing)
        first = opts.calibration
        rest = [item for item in stratified(train) if item.index >= first][:opts.search_images]
        if not rest:
            raise IRevNetError(f"{opts.dataset}'s training split has {len(train)} images, all calibrated on "
                               f"(--calibration {first}); lower --calibration to leave images for the search")
        self.search_split = dataclasses.replace(train, items=sorted(rest, key=lambda item: item.index))
        val = open_split(opts.dataset, "val", shape)
        held = stratified(val)[:opts.held_out] if opts.held_out else val.items
        self.held_out = dataclasses.replace(val, items=sorted(held, key=lambda item: item.index))
        self.checkpoint_sha256 = sha256_file(opts.checkpoint)
        # beside the bundle, as its own temporary folder is: PyTorch fp32's records
        out = Path(opts.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.search-", dir=out.parent))
        self.plans = 0
        self.engines = None  # tensorrt: what builds every plan's engine, with one timing cache
        try:  # a failure (or SIGTERM) here leaves no scratch folder: the planner has no context to close yet
            if opts.search_backend == "tensorrt":
                from ..runtime.trt_build import GraphEngines

                self.engines = GraphEngines(opts.max_batch, self.batch)
            log(f"PyTorch fp32 on {len(self.search_split)} search and {len(self.held_out)} held-out images")
            # the checkpoint as the export loaded and traced it: not read, folded or hashed again
            self.reference_target = checkpoint_target(str(opts.checkpoint), image_size=opts.image_size,
                                                      projection=opts.projection, loaded=ckpt,
                                                      sha256=self.checkpoint_sha256, weights=traced.weights_sha256)
            self.reference = {"search": self._records(None, self.search_split, "reference-search"),
                              "held_out": self._records(None, self.held_out, "reference-held-out")}
            with torch.no_grad():  # what each plan's forward is checked against, as the export's verification does
                logits, z = ckpt.model(samples.images.float())
            self.verification = (samples.images.float().numpy(), logits.numpy(), z.numpy())
        except BaseException:
            self.close()
            raise

    def _records(self, graph: Target | None, split: Split, name: str):
        """Evaluates a plan's graph (None: the checkpoint on torch, PyTorch fp32) over `split` with
        the whole-dataset evaluation; returns the records' path for the checkpoint, the agreement
        with PyTorch fp32's records for a plan."""
        from ..evaluation.run import EvaluateOptions, evaluate

        against = None if graph is None else self.reference["held_out" if split is self.held_out else "search"]
        records = self.scratch / f"{name}.parquet" if graph is None else None
        opts = EvaluateOptions(
            target=graph.path if graph is not None else None,
            checkpoint=None if graph is not None else str(self.opts.checkpoint),
            dataset=self.opts.dataset, split=split.split,
            backend=self.opts.search_backend if graph is not None else "torch",
            round_trip=False, records=records and str(records), against=against and str(against),
            batch_size=self.batch, chunk_size=self.batch * 32, image_size=self.opts.image_size,
            projection=self.opts.projection,
        )
        report = evaluate(opts, split=split, target=graph or self.reference_target)
        return records if graph is None else report.summary.agreement

    def measure(self, graph: Target, split: Split) -> Measured:
        agreement = self._records(graph, split, "")
        if not agreement.images or agreement.drift is None:
            raise IRevNetError(f"no image of {self.opts.dataset}'s {split.split} split was read by both this plan and "
                               f"PyTorch fp32; check the dataset")
        return Measured(agreement.images, agreement.top1, agreement.drift["median"], agreement.drift["p99"])

    def judge_bundle(self, bundle: Path) -> Measured:
        """The written bundle on the held-out split, opened as any bundle is (Bundle.open: its
        hashes); on tensorrt, its checked forward graph compiled as the plans' were (the bundle
        has no engines: `irevnet build` makes them)."""
        from ..contract import FORWARD, LOGITS, MANIFEST, Z
        from ..evaluation.engine import bundle_target
        from ..runtime import Bundle
        from ..runtime.backends import BackendOptions, open_graph

        if self.engines is None:  # ONNX Runtime on the CPU provider, as the plans were judged
            options = BackendOptions(providers=["cpu"]) if self.opts.search_backend == "onnxruntime" else BackendOptions()
            return self.measure(bundle_target(str(bundle), self.opts.search_backend, options), self.held_out)
        opened = Bundle.open(bundle)
        backend = open_graph("tensorrt", opened.graph_bytes(FORWARD), [LOGITS, Z], max_batch=opened.max_batch,
                             origin=f"{bundle}: {FORWARD}", engines=self.engines)
        try:
            sha256 = hashlib.sha256((opened.path / MANIFEST).read_bytes()).hexdigest()
            return self.measure(self._target(backend, str(bundle), sha256), self.held_out)
        finally:
            backend.close()

    def candidate(self, label: str, plan: PrecisionPlan, *, budget: Budget | None) -> Candidate:
        """Opens the plan's forward graph on the target backend, judges it on the search images
        when it is one of the search's decisions (`budget` given), checks its logits and z against
        PyTorch fp32 on the export's verification samples with the plan's tolerances where it met
        the budget there (the forward half of the export's verification, on the target backend;
        the chosen bundle's own verification adds the round trip and batch 1: a plan that missed
        cannot be chosen), and measures it on the held-out split; `time` then times the
        candidates together."""
        from ..contract import FORWARD, IMAGE, LOGITS, Z
        from ..export.bundle import lower
        from ..runtime.backends import open_graph
        from ..runtime.comparison import Parity, tolerance_for

        if plan.precision is not Precision.plan:  # a uniform plan goes by its precision's name
            label = plan.precision.value
        self.plans += 1
        self.log(f"plan {self.plans}: {label}")
        model = lower(self.traced, FORWARD, plan, self.lowering).SerializeToString()
        origin = f"plan {self.plans} ({label})"
        backend = open_graph(self.opts.search_backend, model, [LOGITS, Z], max_batch=self.opts.max_batch, origin=origin,
                             engines=self.engines)
        found = Candidate(label, plan)
        self.graphs[id(found)] = (found, backend)  # from now on close() closes it, whatever fails next
        graph = self._target(backend, origin, hashlib.sha256(model).hexdigest())
        if budget is not None:
            found.search = self.measure(graph, self.search_split)
            if budget.met(found.search.agreement, found.search.logits_p99):
                x, logits, z = self.verification
                grid = self.lowering.grid and self.lowering.grid["exponent"]
                found.verified = bool(Parity.measure(plan.precision.value, backend.name, backend.infer({IMAGE: x}),
                                                     logits, z, tolerance_for(plan.tolerance_precision, grid)))
        found.held_out = self.measure(graph, self.held_out)
        if len(self.graphs) >= OPEN_AT_ONCE:
            self.time()
        return found

    def _target(self, backend, origin: str, sha256: str) -> Target:
        """An evaluation's target for a plan's graph: `backend`, lent to each evaluation (which
        closes what it opens) and kept open for the next one and the timing."""
        from ..evaluation.engine import Target

        cfg = self.ckpt.config
        return Target("graph", origin, sha256, self.checkpoint_sha256, self.traced.weights_sha256, Precision.plan.value,
                      tuple(cfg.in_shape), cfg.num_classes, self.opts.max_batch, lambda round_trip: (_Lent(backend), None))

    def time(self) -> None:
        """The forward of each plan not yet timed, at the search batch on the target backend, in
        alternating rounds (runtime.timing.alternate, as `irevnet bench` times bundles side by
        side): a machine that slows down mid-run slows every plan alike. Then their sessions are
        closed: plans are timed as they come, OPEN_AT_ONCE at a time, and at the end."""
        from ..contract import FORWARD, IMAGE
        from ..runtime.reference import ReferenceSamples
        from ..runtime.timing import LatencyStats, alternate, tiled_input

        if not self.graphs:
            return
        self.log(f"timing the forward of {len(self.graphs)} plans on {self.opts.search_backend}")
        runners = {key: backend for key, (_, backend) in self.graphs.items()}
        x = tiled_input(ReferenceSamples(images=self.verification[0]), FORWARD, self.batch)
        # no warm-up: every plan's session has run its verification and evaluations at this batch
        measured = alternate(runners, {IMAGE: x}, warmup_s=0.0, duration_s=self.opts.search_bench_s,
                             counts=[None] * TIMING_ROUNDS)
        for key, (c, _) in self.graphs.items():
            c.median_ms = LatencyStats.of([t for latencies, _ in measured[key] for t in latencies], self.batch).median_ms
        self.close_graphs()

    @property
    def batch(self) -> int:
        return min(self.opts.search_batch, self.opts.max_batch)

    def close_graphs(self) -> None:
        for _, backend in self.graphs.values():
            backend.close()
        self.graphs.clear()

    def close(self) -> None:
        self.close_graphs()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


class _Lent:
    """A backend lent to one evaluation: the evaluation's close() leaves it open."""

    def __init__(self, backend):
        self.backend, self.name = backend, backend.name

    def infer(self, feeds, outputs=None):
        return self.backend.infer(feeds, outputs)

    def close(self) -> None:
        pass


def _search(context: _Context) -> PlanSearch:
    """The search of the module docstring, over the context's plans."""
    from ..contract import FORWARD
    from ..export.bundle import Lowering, calibration_images, lower
    from .sensitivity import block_sensitivity

    opts, log = context.opts, context.log
    budget = Budget.parse(opts.budget)
    b = context.ckpt.config.num_blocks
    calibration, source = calibration_images(context.ckpt, opts, context.samples.images)
    sensitivity: list[float] = []
    order: list[int] = []

    def ranked() -> list[int]:
        """The blocks, most sensitive first: measured only when a block must be raised, and once."""
        if not order:
            log("ranking the blocks by the drift each adds alone in int8")
            unsnapped = Lowering(context.lowering.calibration, None)
            sensitivity.extend(block_sensitivity(
                lower(context.traced, FORWARD, None, unsnapped),
                lower(context.traced, FORWARD, PrecisionPlan.uniform(BlockPrecision.int8, b), unsnapped),
                calibration.numpy().astype(np.float32)[:RANKING_IMAGES], context.batch))
            order.extend(sorted(range(b), key=lambda i: -sensitivity[i]))
        return list(order)

    notes = not_picked(opts.search_backend)
    tried: list[Candidate] = []

    def judge(plan: PrecisionPlan, label: str) -> float:
        """Judges a plan once (a second climb starts from uniform int8 again): its margin to the
        budget on the search images (infinite where it missed its verification tolerances)."""
        c = next((c for c in tried if c.plan == plan), None)
        if c is None:
            c = context.candidate(label, plan, budget=budget)
            tried.append(c)
        if c.verified is False:
            return np.inf
        return budget.margin(c.search.agreement, c.search.logits_p99, c.search.images)

    def meets(c: Candidate) -> bool:
        return c.verified is True and budget.met(c.search.agreement, c.search.logits_p99)

    for rung in rungs(opts.search_backend):  # fp32 after fp16 only where no plan of fp16 blocks met it
        climb(b, ranked, judge, lambda order: predicted(order, sensitivity, tried[0].search, budget), rung)
        if any(meets(c) for c in tried):
            break
    fp32 = PrecisionPlan.uniform(BlockPrecision.fp32, b)
    if not any(c.plan == fp32 for c in tried):  # the plan every budget within reach is met by, timed beside the others
        judge(fp32, BlockPrecision.fp32.value)
    meeting = [c for c in tried if meets(c)]
    if not meeting:
        best = max(tried, key=lambda c: (c.search.agreement, -c.search.logits_p99))
        raise IRevNetError(f"no plan meets --budget {budget}: the best reached agreement {best.search.agreement:.4f}, "
                           f"logits rel. L2 p99 {best.search.logits_p99:.2e} ({best.plan}), on "
                           f"{best.search.images} search images; loosen the budget")
    uniform = [next(c for c in tried if c.plan == fp32)]
    for precision, label in ((BlockPrecision.fp16, Precision.mixed.value), (BlockPrecision.int8, Precision.int8.value)):
        plan = PrecisionPlan.uniform(precision, b)
        uniform.append(next((c for c in tried if c.plan == plan), None) or context.candidate(label, plan, budget=None))
    context.time()  # those not timed yet
    chosen = min(meeting, key=lambda c: c.median_ms)  # the fastest of those that meet it
    first, searched = len(calibration), len(context.search_split)
    images = {
        "calibration": {"images": len(calibration), "from": f"the first {len(calibration)} of the {source}"},
        "search": {"images": searched, "from": f"{opts.dataset} training split: a sample stratified by class of the "
                   f"images after the first {first}", "indices": [item.index for item in context.search_split.items]},
        "held_out": {"images": len(context.held_out), "from": f"{opts.dataset} held-out (val) split"
                     + (f": a sample stratified by class of {opts.held_out}" if opts.held_out else ""),
                     "indices": [item.index for item in context.held_out.items]},
    }
    return PlanSearch(budget, opts.search_backend, context.batch, sensitivity, tried, uniform, chosen, images, notes,
                      len(tried), time.monotonic() - context.start)


def climb(num_blocks: int, rank: Callable[[], list[int]], judge: Callable[[PrecisionPlan, str], float],
          guess: Callable[[list[int]], int] = lambda order: 1, rung: BlockPrecision = BlockPrecision.fp32) -> None:
    """Step 3: from every block in int8, raises the blocks in the order `rank()` gives (most
    sensitive first; called only when uniform int8 misses) to `rung`, until a plan meets the
    budget, and finds the fewest that do. `judge` returns a plan's margin to the budget
    (Budget.margin: at most 0 where it is met, the further from 0 the further from the bound).

    k = guess(order) first (the count the per-block drifts predict, `predicted`); while that
    misses, up by steps of 1, 2, 4, ... (or further, to where the line through the last two
    margins crosses 0); once the fewest is bracketed between a plan that misses and one that
    meets, the next count is where the line through their margins crosses 0 (regula falsi on
    the counts), and a bisection follows two such steps in a row that did not halve the bracket,
    or one that did not and whose outcome the line got wrong.

    Plans judged, uniform int8 included: 3 where the guess is right and the margins fall on a
    line, 4 for any guess there, at most 4 ceil(log2 B) + 2 whatever the guess and the margins,
    and never more than B + 1, as no count is judged twice (tests/search checks B = 1..40, 63-65, 100, 127 and 128,
    for every count, six guesses each, with margins on a line and with margins of random sizes).
    """
    order: list[int] = []
    margins: dict[int, float] = {}

    def raised(k: int) -> PrecisionPlan:
        blocks = [BlockPrecision.int8] * num_blocks
        for i in order[:k]:
            blocks[i] = rung
        return PrecisionPlan(tuple(blocks))

    def tried(k: int) -> bool:
        margins[k] = judge(raised(k), f"{BlockPrecision.int8.value} + {k} {rung.value}" if k else
                           BlockPrecision.int8.value)
        return margins[k] <= 0

    def crossing(a: int, b: int) -> float | None:
        """Where the line through the margins at counts a and b crosses 0 (None: no such line)."""
        ma, mb = margins[a], margins[b]
        if not (np.isfinite(ma) and np.isfinite(mb)) or ma == mb:
            return None
        return a + (b - a) * ma / (ma - mb)

    if tried(0):
        return
    order.extend(rank())
    low, high = 0, None  # with `low` blocks raised the budget was missed, with `high` met (None: not yet)
    k = min(max(int(guess(order)), 1), num_blocks)
    step = 1
    while high is None:  # up from the guess while the budget is missed
        if tried(k):
            high = k
        elif k == num_blocks:
            return  # not even every block in fp32
        else:
            ahead = crossing(low, k)
            ahead = k + step if ahead is None or ahead <= k else math.ceil(ahead)
            low, k, step = k, min(max(k + step, ahead), num_blocks), 2 * step
    slow = 0  # regula falsi steps in a row that did not halve the bracket
    while high - low > 1:
        at = None if slow >= 2 else crossing(low, high)
        k = (low + high) // 2 if at is None else min(max(math.ceil(at), low + 1), high - 1)
        width = high - low
        met = tried(k)
        low, high = (low, k) if met else (k, high)
        if at is None or high - low <= width / 2:
            slow = 0
        else:  # one more step that did not halve it; one the line got wrong counts as two
            slow += 1 if met == (k >= at) else 2


def predicted(order: list[int], sensitivity: list[float], int8: Measured, budget: Budget) -> int:
    """How many of the most sensitive blocks to raise, as the per-block drifts predict: the blocks'
    int8 errors are taken as independent, so the drift left with the first k raised is uniform
    int8's, scaled by the root of the share of the squared per-block drifts still in int8; a top-1
    that disagrees with PyTorch fp32 is taken as proportional to that drift (a flip needs a
    logit margin smaller than it). The climb judges this count first."""
    total = sum(s * s for s in sensitivity)
    share = 1.0  # of the squared drift that may stay in int8
    if budget.logits is not None and int8.logits_p99 > 0:
        share = min(share, (budget.logits / int8.logits_p99) ** 2)
    if budget.agreement is not None and int8.agreement < 1:
        share = min(share, ((1.0 - budget.agreement) / (1.0 - int8.agreement)) ** 2)
    left = total
    for k, i in enumerate(order, 1):
        left -= sensitivity[i] ** 2
        if left <= share * total * (1 + 1e-12):
            return k
    return len(order)
