"""`irevnet export` (checkpoint -> verified ONNX bundle) and `irevnet build` (bundle -> TensorRT engines)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..contract import Calibration
from ..export.options import ExportOptions, ExportPrecision
from ..runtime.engines import HardwareCompat
from ..runtime.trt_build import BuildOptions
from . import render
from .app import CheckpointOpt, ImageSizeOpt, JsonOpt, check_outputs, command, write_json


@command
def export(
    checkpoint: CheckpointOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Bundle folder to write (replaced whole on success).")],
    precision: Annotated[ExportPrecision, typer.Option(
        help="fp32 | fp16 | mixed (F in fp16, coupling stream in fp32) | int8 (F's convolutions int8, calibrated on "
             "--dataset) | plan (each block's F as --precision-plan says) | auto (the fastest plan within "
             "--budget).")] = ExportOptions.precision,
    image_size: ImageSizeOpt = ExportOptions.image_size,
    opset: Annotated[int, typer.Option(help="ONNX opset (18-20).")] = ExportOptions.opset,
    max_batch: Annotated[
        int, typer.Option(help="Largest batch of the dynamic batch dimension N.")
    ] = ExportOptions.max_batch,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="Verify on real test images (default: seeded random).")
    ] = ExportOptions.dataset,
    samples: Annotated[int, typer.Option(help="Images in the verification batch.")] = ExportOptions.samples,
    calibration: Annotated[
        int, typer.Option(help="int8 and --exact-coupling: training images measured for ranges.")
    ] = ExportOptions.calibration,
    calibration_method: Annotated[
        Calibration, typer.Option(help="int8: each activation's range: mse (least squared quantization error), "
                                  "percentile (99.99th of |value|) or max (|value|).")
    ] = ExportOptions.calibration_method,
    exact_coupling: Annotated[
        bool | None, typer.Option("--exact-coupling/--no-exact-coupling", help="Coupling stream on a fixed-point grid, so the "
                                  "inverse sees the forward's bits (default: on for int8 and mixed).")
    ] = ExportOptions.exact_coupling,
    projection: Annotated[
        bool, typer.Option(help="Range projection in the inverse (injective models).")
    ] = ExportOptions.projection,
    debug_graphs: Annotated[
        bool, typer.Option("--debug/--no-debug", help="Also write per-block debug graphs (used by `irevnet verify`).")
    ] = ExportOptions.debug_graphs,
    allow_mismatch: Annotated[
        bool, typer.Option(help="Keep the bundle even if it misses its tolerances.")
    ] = ExportOptions.allow_mismatch,
    precision_plan: Annotated[str | None, typer.Option(
        help="One precision per block for F, block 0 first: int8, fp16 or fp32, comma-separated, a JSON list, or a "
             "file of either (the coupling stream stays fp32).")] = ExportOptions.precision_plan,
    budget: Annotated[str | None, typer.Option(
        help="--precision auto: what the plan must keep of PyTorch fp32: agreement>=A (top-1) and/or logits<=L "
             "(p99 rel. L2), comma-separated.")] = ExportOptions.budget,
    search_backend: Annotated[str, typer.Option(
        help="--precision auto: where plans are timed and judged: onnxruntime, openvino, or tensorrt (a GPU).")
    ] = ExportOptions.search_backend,
    search_images: Annotated[int, typer.Option(
        help="--precision auto: training images after the calibration's that the search decides on.")
    ] = ExportOptions.search_images,
    held_out: Annotated[int | None, typer.Option(
        help="--precision auto: the first N held-out images that judge the plans (default: all).")
    ] = ExportOptions.held_out,
    search_batch: Annotated[int, typer.Option(
        help="--precision auto: the batch plans are timed and evaluated at.")] = ExportOptions.search_batch,
    search_bench_s: Annotated[float, typer.Option(
        help="--precision auto: seconds each plan's forward is timed for, over 3 rounds.")] = ExportOptions.search_bench_s,
    frontier: Annotated[str | None, typer.Option(
        help="--precision auto: write the speed/agreement frontier of the plans tried to this PNG.")
    ] = ExportOptions.frontier,
    engine: Annotated[bool, typer.Option(help="Also build TensorRT engines (as `irevnet build` with its defaults).")] = False,
    json: JsonOpt = None,
) -> None:
    """Export forward (image -> logits, z) and inverse (z -> image) ONNX graphs, verified against PyTorch.

    Example: `irevnet export -c runs/digits/best.pt -o bundles/digits -d digits --precision mixed`
    """
    from ..search import run_export

    opts = ExportOptions(checkpoint=checkpoint, out=out, precision=precision, image_size=image_size, opset=opset,
                         max_batch=max_batch, dataset=dataset, samples=samples, calibration=calibration,
                         calibration_method=calibration_method, exact_coupling=exact_coupling, projection=projection,
                         debug_graphs=debug_graphs, allow_mismatch=allow_mismatch, precision_plan=precision_plan,
                         budget=budget, search_backend=search_backend, search_images=search_images, held_out=held_out,
                         search_batch=search_batch, search_bench_s=search_bench_s, frontier=frontier)
    check_outputs(json, frontier)
    with render.console.status("exporting") as status:
        result = run_export(opts, log=lambda msg: status.update(msg))
    render.export(result)
    write_json(json, result.to_dict())
    if engine:
        _build(BuildOptions(bundle=out))


def _build(opts) -> None:
    """Builds the engines of `opts.bundle` (a trt_build.BuildOptions) and prints them."""
    from ..runtime.trt_build import build_engines

    with render.console.status("building engines") as status:
        render.engines(build_engines(opts, log=lambda msg: status.update(msg)))


@command
def build(
    bundle: Annotated[str, typer.Argument(help="Bundle folder from `irevnet export`.")],
    max_batch: Annotated[
        int | None, typer.Option(help="Largest batch of the profile (default: the bundle's).")
    ] = BuildOptions.max_batch,
    opt_batch: Annotated[
        int | None, typer.Option(help="Batch the kernels are tuned for (default: max).")
    ] = BuildOptions.opt_batch,
    workspace_mb: Annotated[
        int | None, typer.Option(help="Builder workspace limit in MiB.")
    ] = BuildOptions.workspace_mb,
    timing_cache: Annotated[
        str | None, typer.Option(help="Timing cache file (default: BUNDLE/timing.cache).")
    ] = BuildOptions.timing_cache,
    opt_level: Annotated[int, typer.Option(help="Builder optimization level 0-5.")] = BuildOptions.opt_level,
    tf32: Annotated[
        bool, typer.Option(help="Allow TF32 in fp32 convolutions (spoils the fp32 round trip).")
    ] = BuildOptions.tf32,
    hardware_compat: Annotated[
        HardwareCompat, typer.Option(help="Let the engines run on other GPUs.")
    ] = BuildOptions.hardware_compat,
    version_compat: Annotated[
        bool, typer.Option(help="Let the engines run on later TensorRT releases.")
    ] = BuildOptions.version_compat,
    debug: Annotated[
        bool, typer.Option(help="Also build the per-block debug engines for `irevnet verify`.")
    ] = BuildOptions.debug,
) -> None:
    """Compile a bundle's forward and inverse graphs into TensorRT engines (strongly typed).

    Example: `irevnet build bundles/digits --opt-batch 8`
    """
    _build(BuildOptions(bundle=bundle, max_batch=max_batch, opt_batch=opt_batch, workspace_mb=workspace_mb,
                        timing_cache=timing_cache, opt_level=opt_level, tf32=tf32, hardware_compat=hardware_compat,
                        version_compat=version_compat, debug=debug))
