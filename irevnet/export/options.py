"""What an export takes: `ExportOptions`, validated when made.

Torch-free, unlike the rest of the room: the CLI imports it at start-up, to take its parameters'
defaults from the fields (`irevnet export --help` must not wait for torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .. import validation as check
from ..contract import OPSETS, Calibration, Precision
from ..errors import IRevNetError

AUTO = "auto"  # --precision auto: the search picks the plan under --budget (never a bundle's precision)
# what --precision takes: a bundle precision, or auto
ExportPrecision = Enum("ExportPrecision", {p.name: p.value for p in Precision} | {AUTO: AUTO}, type=str)
ExportPrecision.__str__ = lambda self: self.value
DEFAULT_OPSET = OPSETS.start  # the dynamo exporter's floor
MAX_DATASET_SPEC = 4096  # Linux's PATH_MAX; the manifest's "source" fields hold it (schema: 4200)


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: str
    out: str
    precision: Precision | str = Precision.fp32  # a bundle precision, or AUTO
    image_size: int | None = None  # for reference files that do not store it
    opset: int = DEFAULT_OPSET
    max_batch: int = 32  # dynamic batch range 1..max_batch
    dataset: str | None = None  # real images for the verification (and the normalisation)
    samples: int = 8  # verification batch
    calibration: int = 256  # int8 and the exact coupling: images measured (the dataset's training split)
    calibration_method: Calibration = Calibration.mse  # int8: how each activation's range is chosen
    # the coupling stream on a fixed-point grid (export/coupling.py); default: on for int8 and mixed
    exact_coupling: bool | None = None
    projection: bool = True  # range projection in the inverse (injective models)
    debug_graphs: bool = True  # per-block debug graphs for `irevnet verify`
    allow_mismatch: bool = False  # keep a bundle that misses its tolerances
    # precision per block (export/plan.py): one of int8, fp16, fp32 per block, as a list or a file
    precision_plan: str | None = None
    # precision auto: the search (irevnet/search) picks the fastest plan that meets this budget
    budget: str | None = None  # agreement>=A and/or logits<=L against PyTorch fp32
    search_backend: str = "onnxruntime"  # where plans are timed and judged: onnxruntime, openvino, tensorrt
    search_images: int = 256  # training images after the calibration's that the search decides on
    held_out: int | None = None  # the first N images of the held-out split that judge (default: all)
    search_batch: int = 8  # the batch plans are timed and evaluated at
    search_bench_s: float = 1.0  # seconds each plan is timed for, over 3 alternating rounds (one run each at least)
    frontier: str | None = None  # a PNG of the plans tried: latency against agreement and logits drift

    def __post_init__(self) -> None:
        check.paths(self, "checkpoint", "out")
        value = getattr(self.precision, "value", self.precision)
        object.__setattr__(self, "precision", AUTO if value == AUTO else check.choice("precision", value, Precision))
        object.__setattr__(self, "calibration_method", check.choice("calibration_method", self.calibration_method, Calibration))
        check.integer("image_size", self.image_size, 1, optional=True)
        # the exporter needs opset 18; TensorRT 10 parses up to 20 (the graph policy's range)
        check.integer("opset", self.opset, OPSETS.start, OPSETS.stop - 1)
        check.integer("max_batch", self.max_batch, 1, check.MAX_BATCH)
        check.integer("samples", self.samples, 1, 4096)
        check.integer("calibration", self.calibration, 1, 65536)
        if self.dataset is not None and len(self.dataset) > MAX_DATASET_SPEC:  # recorded in the manifest's sources
            raise IRevNetError(f"--dataset is {len(self.dataset)} characters long; give a path of at most {MAX_DATASET_SPEC}")
        self._check_plan_and_budget()
        if self.exact_coupling is None:
            reduced = (Precision.int8, Precision.mixed, Precision.plan, AUTO)
            object.__setattr__(self, "exact_coupling", self.precision in reduced)
        elif self.exact_coupling and self.precision is Precision.fp16:
            raise IRevNetError("--exact-coupling needs an fp32 coupling stream; fp16 bundles compute it in fp16 "
                               "(use --precision mixed)")

    def _check_plan_and_budget(self) -> None:
        if self.precision is Precision.plan and self.precision_plan is None:
            raise IRevNetError("--precision plan takes its blocks' precisions from --precision-plan PLAN; give it")
        if self.precision_plan is not None:
            if self.precision not in (Precision.fp32, Precision.plan):
                raise IRevNetError(f"--precision-plan sets each block's precision; give it without --precision "
                                   f"{self.precision}")
            object.__setattr__(self, "precision", Precision.plan)
        if self.precision == AUTO:
            if self.budget is None:
                raise IRevNetError("--precision auto searches for the fastest plan within a budget: give --budget, "
                                   "e.g. --budget 'agreement>=0.999'")
            if self.dataset is None:
                raise IRevNetError("--precision auto judges plans on real images: give --dataset (its training split "
                                   "calibrates and searches, its held-out split judges)")
            from ..search.budget import Budget

            Budget.parse(self.budget)  # bounded in length: a budget is a few short terms
        elif self.budget is not None:
            raise IRevNetError("--budget bounds the search of --precision auto; give both, or neither")
        elif self.frontier is not None:
            raise IRevNetError("--frontier draws the plans a search tried: give it with --precision auto")
        if self.frontier is not None:
            check.paths(self, "frontier")
        if self.search_backend not in ("onnxruntime", "openvino", "tensorrt"):
            raise IRevNetError(f"--search-backend {self.search_backend[:40]!r}: choose onnxruntime, openvino or "
                               f"tensorrt")
        check.integer("search_images", self.search_images, 1, 10**7)
        check.integer("held_out", self.held_out, 1, optional=True)
        check.integer("search_batch", self.search_batch, 1, check.MAX_BATCH)
        check.number("search_bench_s", self.search_bench_s, 0.0, 60.0, low_open=True)
