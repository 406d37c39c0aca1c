"""What an export takes: `ExportOptions`, validated when made.

Torch-free, unlike the rest of the room: the CLI imports it at start-up, to take its parameters'
defaults from the fields (`irevnet export --help` must not wait for torch).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import validation as check
from ..contract import OPSETS, Calibration, Precision
from ..errors import IRevNetError

DEFAULT_OPSET = OPSETS.start  # the dynamo exporter's floor
MAX_DATASET_SPEC = 4096  # Linux's PATH_MAX; the manifest's "source" fields hold it (schema: 4200)


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: str
    out: str
    precision: Precision = Precision.fp32
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

    def __post_init__(self) -> None:
        check.paths(self, "checkpoint", "out")
        object.__setattr__(self, "precision", check.choice("precision", self.precision, Precision))
        object.__setattr__(self, "calibration_method", check.choice("calibration_method", self.calibration_method, Calibration))
        check.integer("image_size", self.image_size, 1, optional=True)
        # the exporter needs opset 18; TensorRT 10 parses up to 20 (the graph policy's range)
        check.integer("opset", self.opset, OPSETS.start, OPSETS.stop - 1)
        check.integer("max_batch", self.max_batch, 1, check.MAX_BATCH)
        check.integer("samples", self.samples, 1, 4096)
        check.integer("calibration", self.calibration, 1, 65536)
        if self.dataset is not None and len(self.dataset) > MAX_DATASET_SPEC:  # recorded in the manifest's sources
            raise IRevNetError(f"--dataset is {len(self.dataset)} characters long; give a path of at most {MAX_DATASET_SPEC}")
        if self.exact_coupling is None:
            object.__setattr__(self, "exact_coupling", self.precision in (Precision.int8, Precision.mixed))
        elif self.exact_coupling and self.precision is Precision.fp16:
            raise IRevNetError("--exact-coupling needs an fp32 coupling stream; fp16 bundles compute it in fp16 "
                               "(use --precision mixed)")
