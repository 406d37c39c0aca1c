"""`irevnet demo`: the whole product on the bundled digits, in a minute or two on a laptop CPU.

train -> evaluate -> export (fp32, mixed, fp16) -> verify with ONNX Runtime and PyTorch ->
invert from z with the exported graphs -> bench against PyTorch eager -> summary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import validation as check
from .contract import FORWARD, IMAGE, INVERSE, LOGITS, REFERENCE_IMAGES, Precision, Z
from .errors import IRevNetError
from .io.files import atomic_directory, check_replaceable

if TYPE_CHECKING:
    from .runtime.bench import BenchReport
    from .runtime.verify import VerifyReport

PRESET = "irevnet-tiny"


@dataclass(frozen=True)
class DemoOptions:
    out: str = "demo-out"
    fast: bool = False  # 6 epochs, one precision, a shorter bench: under a minute

    def __post_init__(self) -> None:
        check.paths(self, "out")

    @property
    def epochs(self) -> int:
        return 6 if self.fast else 10

    @property
    def precisions(self) -> list[str]:
        return [Precision.fp32] if self.fast else [Precision.fp32, Precision.mixed, Precision.fp16]


Report = Callable[[str, Any], None]


def run_demo(opts: DemoOptions, report: Report = lambda step, result: None, observer=None) -> dict[str, Any]:
    """Runs every stage into `opts.out`; `report(step, result)` is called as each one finishes."""
    from .export.bundle import ExportOptions, export_bundle, trace
    from .io.checkpoint import load_checkpoint
    from .io.images import save_inversion
    from .runtime.bench import BenchOptions, bench
    from .runtime.bundle import is_bundle_folder
    from .runtime.verify import VerifyOptions, verify
    from .training.loop import train
    from .training.options import TrainOptions
    from .training.records import is_run_folder

    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise IRevNetError(f"--out {out} is a file; give a folder for the demo's outputs")
    for precision in opts.precisions:  # every folder the demo replaces, checked before any work
        check_replaceable(out / f"bundle-{precision}", is_bundle_folder, "bundle")
    check_replaceable(out / "run", is_run_folder, "run folder")
    out.mkdir(parents=True, exist_ok=True)
    # A rerun replaces the previous demo's run whole; an interrupted one leaves it untouched.
    with atomic_directory(out / "run", owned=is_run_folder, what="run folder") as tmp:
        trained = train(TrainOptions(model=PRESET, dataset="digits", out=str(tmp), epochs=opts.epochs, device="cpu"),
                        observer)
    report("train", trained)
    checkpoint = out / "run" / "best.pt"

    exports = {precision: ExportOptions(checkpoint=str(checkpoint), out=str(out / f"bundle-{precision}"),
                                        precision=precision, dataset="digits", max_batch=32)
               for precision in opts.precisions}
    # fp32 and mixed are traced alike, once; export_bundle traces fp16 anew (Traced.unusable_for)
    traced = trace(load_checkpoint(checkpoint), exports[opts.precisions[0]])
    bundles = {}
    for precision, export in exports.items():
        bundles[precision] = export_bundle(export, traced=traced)
        report(f"export {precision}", bundles[precision])

    accuracy = _accuracy(checkpoint, out / "bundle-fp32")
    report("evaluate", accuracy)

    plot = out / "error_vs_depth.png"
    verified = verify(VerifyOptions(bundles=[str(out / f"bundle-{p}") for p in opts.precisions],
                                    backends=["onnxruntime", "torch"], plot=str(plot)))
    report("verify", verified)

    grid = out / "inversion.png"
    norm = bundles[Precision.fp32].manifest.normalization
    save_inversion(*_onnx_round_trip(out / "bundle-fp32"), norm.mean, norm.std, grid)
    report("invert", grid)

    speed = bench(BenchOptions(bundles=[str(out / "bundle-fp32")], backends=["onnxruntime", "torch"], batch_sizes=[32],
                               warmup_s=0.3, duration_s=0.5 if opts.fast else 1.5))
    report("bench", speed)

    summary = _summary(accuracy, verified, speed)
    summary["files"] = {
        "run": str(out / "run"), "bundles": [str(out / f"bundle-{p}") for p in opts.precisions],
        "inversion grid": str(grid), "error vs depth": str(plot),
    }
    return summary


def _accuracy(checkpoint: Path, bundle_path: Path) -> dict[str, float]:
    """Top-1 on the whole digits test split: the PyTorch checkpoint and the exported fp32 graph."""
    from .devices import resolve_device
    from .io.checkpoint import load_checkpoint
    from .runtime import Bundle, open_backend
    from .training.data import load_datasets
    from .training.evaluate import evaluate

    ckpt = load_checkpoint(checkpoint)
    data = load_datasets("digits", ckpt.config.in_shape, augment=False)
    torch_top1 = evaluate(ckpt.model, data.test, resolve_device("cpu"))["top1"]
    bundle = Bundle.open(bundle_path)
    x = np.stack([img.numpy() for img, _ in data.test])  # 360 images of 16x16: 0.4 MB
    labels = np.array([label for _, label in data.test])
    with open_backend("onnxruntime", bundle, FORWARD) as fwd:
        correct = int((fwd.infer_in_batches({IMAGE: x}, [LOGITS])[LOGITS].argmax(1) == labels).sum())
    return {"images": len(data.test), "top1_pytorch": torch_top1, "top1_onnx": 100 * correct / len(data.test)}


def _onnx_round_trip(bundle_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The reference images and their reconstruction by the exported forward and inverse graphs."""
    from .runtime import Bundle, open_backend

    bundle = Bundle.open(bundle_path)
    x = bundle.reference(REFERENCE_IMAGES).images
    with open_backend("onnxruntime", bundle, FORWARD) as fwd, open_backend("onnxruntime", bundle, INVERSE) as inv:
        return x, inv.infer({Z: fwd.infer({IMAGE: x})[Z]})[IMAGE]


def _summary(accuracy: dict, verified: VerifyReport, speed: BenchReport) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for entry in verified.round_trip:
        side = "onnxruntime" if entry.kind == "onnxruntime" else "pytorch"
        rows.setdefault(entry.precision, {"precision": entry.precision})[side] = {
            "rel_l2": entry.rel_l2, "psnr_db": entry.psnr_db}
    return {
        "accuracy": accuracy,
        "round_trip": list(rows.values()),
        "speedup_vs_pytorch": {e.direction: e for e in speed.results if e.kind == "onnxruntime"},
        "verify_passed": verified.passed,
    }
