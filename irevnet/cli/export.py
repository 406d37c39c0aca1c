"""`irevnet export` (checkpoint -> verified ONNX bundle) and `irevnet build` (bundle -> TensorRT engines)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..contract import Calibration, Precision
from ..runtime.engines import HardwareCompat
from . import render
from .app import CheckpointOpt, ImageSizeOpt, JsonOpt, check_outputs, command, options, write_json


@command
def export(
    checkpoint: CheckpointOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Bundle folder to write (replaced whole on success).")],
    precision: Annotated[Precision, typer.Option(help="fp32 | fp16 | mixed (F in fp16, coupling stream in fp32) | int8 (F's convolutions int8, calibrated on --dataset).")] = Precision.fp32,
    image_size: ImageSizeOpt = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (18-20).")] = 18,
    max_batch: Annotated[int, typer.Option(help="Largest batch of the dynamic batch dimension N.")] = 32,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="Verify on real test images (default: seeded random).")
    ] = None,
    samples: Annotated[int, typer.Option(help="Images in the verification batch.")] = 8,
    calibration: Annotated[int, typer.Option(help="int8 and --exact-coupling: training images measured for ranges.")] = 256,
    calibration_method: Annotated[
        Calibration, typer.Option(help="int8: each activation's range: mse (least squared quantization error), "
                                  "percentile (99.99th of |value|) or max (|value|).")
    ] = Calibration.mse,
    exact_coupling: Annotated[
        bool | None, typer.Option("--exact-coupling/--no-exact-coupling", help="Coupling stream on a fixed-point grid, so the "
                                  "inverse sees the forward's bits (default: on for int8 and mixed).")
    ] = None,
    projection: Annotated[bool, typer.Option(help="Range projection in the inverse (injective models).")] = True,
    debug_graphs: Annotated[bool, typer.Option("--debug/--no-debug", help="Also write per-block debug graphs (used by `irevnet verify`).")] = True,
    allow_mismatch: Annotated[bool, typer.Option(help="Keep the bundle even if it misses its tolerances.")] = False,
    engine: Annotated[bool, typer.Option(help="Also build TensorRT engines (as `irevnet build` with its defaults).")] = False,
    json: JsonOpt = None,
) -> None:
    """Export forward (image -> logits, z) and inverse (z -> image) ONNX graphs, verified against PyTorch.

    Example: `irevnet export -c runs/digits/best.pt -o bundles/digits -d digits --precision mixed`
    """
    from ..export.bundle import ExportOptions, export_bundle

    opts = options(ExportOptions, locals())
    check_outputs(json)
    with render.console.status("exporting") as status:
        result = export_bundle(opts, log=lambda msg: status.update(msg))
    render.export(result)
    write_json(json, result.to_dict())
    if engine:
        from ..runtime.trt_build import BuildOptions

        _build(BuildOptions(bundle=out))


def _build(opts) -> None:
    """Builds the engines of `opts.bundle` (a trt_build.BuildOptions) and prints them."""
    from ..runtime.trt_build import build_engines

    with render.console.status("building engines") as status:
        render.engines(build_engines(opts, log=lambda msg: status.update(msg)))


@command
def build(
    bundle: Annotated[str, typer.Argument(help="Bundle folder from `irevnet export`.")],
    max_batch: Annotated[int | None, typer.Option(help="Largest batch of the profile (default: the bundle's).")] = None,
    opt_batch: Annotated[int | None, typer.Option(help="Batch the kernels are tuned for (default: max).")] = None,
    workspace_mb: Annotated[int | None, typer.Option(help="Builder workspace limit in MiB.")] = None,
    timing_cache: Annotated[str | None, typer.Option(help="Timing cache file (default: BUNDLE/timing.cache).")] = None,
    opt_level: Annotated[int, typer.Option(help="Builder optimization level 0-5.")] = 3,
    tf32: Annotated[bool, typer.Option(help="Allow TF32 in fp32 convolutions (spoils the fp32 round trip).")] = False,
    hardware_compat: Annotated[HardwareCompat, typer.Option(help="Let the engines run on other GPUs.")] = HardwareCompat.none,
    version_compat: Annotated[bool, typer.Option(help="Let the engines run on later TensorRT releases.")] = False,
    debug: Annotated[bool, typer.Option(help="Also build the per-block debug engines for `irevnet verify`.")] = False,
) -> None:
    """Compile a bundle's forward and inverse graphs into TensorRT engines (strongly typed).

    Example: `irevnet build bundles/digits --opt-batch 8`
    """
    from ..runtime.trt_build import BuildOptions

    _build(options(BuildOptions, locals()))
