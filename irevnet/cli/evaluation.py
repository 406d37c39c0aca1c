"""`irevnet evaluate` and `irevnet invert`: a bundle (or a checkpoint) over a whole split."""

from __future__ import annotations

from typing import Annotated

import typer

from ..devices import Device
from . import render
from .app import (
    DatasetOpt,
    DeviceOpt,
    ImageSizeOpt,
    JsonOpt,
    ProviderOpt,
    ServerOpt,
    ServerTimeoutOpt,
    ThreadsOpt,
    check_outputs,
    command,
    options,
    write_json,
)

TargetArg = Annotated[str | None, typer.Argument(help="A bundle folder, or a checkpoint file (run on torch).")]
CheckpointOpt = Annotated[str | None, typer.Option("--checkpoint", "-c", help="A checkpoint to run on torch, instead "
                                                                               "of a bundle.")]
SplitOpt = Annotated[str, typer.Option(help="val (the held-out images) or train.")]
LimitOpt = Annotated[int | None, typer.Option(help="The first N images of the split.")]
BackendOpt = Annotated[str, typer.Option("--backend", "-b", help="What runs the bundle's graphs: onnxruntime, "
                                                                  "openvino, tensorrt, torch.")]
RecordsOpt = Annotated[str | None, typer.Option(help="Parquet file: one row per image (pandas, polars, DuckDB).")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue the run of --records from its finished chunks.")]
ShardOpt = Annotated[str | None, typer.Option(help="I/N: this run's slice of the chunks, for array jobs.")]
BatchOpt = Annotated[int, typer.Option(help="Images per run of the graphs.")]
ChunkOpt = Annotated[int, typer.Option(help="Images per chunk, the unit of resume and shards (a multiple of "
                                            "--batch-size).")]
WorkersOpt = Annotated[int, typer.Option(help="Decoding threads.")]
StrictOpt = Annotated[bool, typer.Option(help="Stop at the first unreadable file (default: count it, go on).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="One line per chunk, no progress bar.")]


@command
def evaluate(
    target: TargetArg = None,
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "digits",
    split: SplitOpt = "val",
    limit: LimitOpt = None,
    backend: BackendOpt = "onnxruntime",
    server: ServerOpt = None,
    server_timeout_s: ServerTimeoutOpt = 60.0,
    round_trip: Annotated[bool, typer.Option(help="Run the inverse too: each image back from z.")] = True,
    records: RecordsOpt = None,
    resume: ResumeOpt = False,
    shard: ShardOpt = None,
    merge: Annotated[list[str] | None, typer.Option(help="Records of a shard to join into --records (repeat).")] = None,
    against: Annotated[str | None, typer.Option(help="Records of another run of the model: top-1 agreement, "
                                                     "logits drift, the images whose top-1 changed.")] = None,
    changed_grid: Annotated[str | None, typer.Option(help="With --against: PNG of those images, reconstructed.")] = None,
    strict: StrictOpt = False,
    batch_size: BatchOpt = 8,
    chunk_size: ChunkOpt = 256,
    workers: WorkersOpt = 2,
    threads: ThreadsOpt = None,
    providers: ProviderOpt = None,
    device: DeviceOpt = Device.auto,
    image_size: ImageSizeOpt = None,
    ray: Annotated[bool, typer.Option(help="Spread the chunks over a local Ray instance.")] = False,
    ray_address: Annotated[str | None, typer.Option(help="... or over the Ray cluster at this address.")] = None,
    ray_workers: Annotated[int, typer.Option(help="Ray actors, each with its own graphs.")] = 2,
    quiet: QuietOpt = False,
    json: JsonOpt = None,
) -> None:
    """Top-1, top-5, loss and the round trip of a bundle over a whole split, on any backend.

    Example: `irevnet evaluate bundles/int8 -d imagefolder:/data/imagenet --records int8.parquet --against fp32.parquet`
    """
    from ..evaluation.run import EvaluateOptions
    from ..evaluation.run import evaluate as run_evaluate

    opts = options(EvaluateOptions, locals())
    check_outputs(json, changed_grid)
    with render.ChunkProgress(quiet) as bar:
        report = run_evaluate(opts, progress=bar.update)
    render.evaluation(report)
    write_json(json, report.to_dict())


@command
def invert(
    target: TargetArg = None,
    checkpoint: CheckpointOpt = None,
    dataset: DatasetOpt = "digits",
    out: Annotated[str, typer.Option("--out", "-o", help="Folder: every image and its reconstruction as PNGs, and "
                                                         "grid.png; a .png: the grid alone.")] = "inversion",
    split: SplitOpt = "val",
    limit: LimitOpt = None,
    samples: Annotated[int, typer.Option(help="Images in the grid.")] = 8,
    projection: Annotated[bool, typer.Option(help="A checkpoint of an injective model: range projection (off to "
                                                  "compare).")] = True,
    backend: BackendOpt = "onnxruntime",
    records: RecordsOpt = None,
    resume: ResumeOpt = False,
    shard: ShardOpt = None,
    strict: StrictOpt = False,
    batch_size: BatchOpt = 8,
    chunk_size: ChunkOpt = 256,
    workers: WorkersOpt = 2,
    threads: ThreadsOpt = None,
    device: DeviceOpt = Device.auto,
    image_size: ImageSizeOpt = None,
    quiet: QuietOpt = False,
    json: JsonOpt = None,
) -> None:
    """Reconstruct a split from z with the deployed inverse: every image beside its reconstruction.

    Example: `irevnet invert bundles/fp32 -d imagefolder:/data/imagenet -o inverted --limit 1000`
    """
    from ..evaluation.invert import InvertOptions
    from ..evaluation.invert import invert as run_invert

    opts = options(InvertOptions, locals())
    check_outputs(json)
    with render.ChunkProgress(quiet) as bar:
        report = run_invert(opts, progress=bar.update)
    render.evaluation(report.evaluation)
    render.console.print(str(report).split("; grid ", 1)[1].join(("grid ", "")), soft_wrap=True)
    write_json(json, report.to_dict())
