"""`irevnet evaluate` and `irevnet invert`: a bundle (or a checkpoint) over a whole split."""

from __future__ import annotations

from typing import Annotated

import typer

from ..evaluation.invert import InvertOptions
from ..evaluation.run import EvaluateOptions
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
    target: TargetArg = EvaluateOptions.target,
    checkpoint: CheckpointOpt = EvaluateOptions.checkpoint,
    dataset: DatasetOpt = EvaluateOptions.dataset,
    split: SplitOpt = EvaluateOptions.split,
    limit: LimitOpt = EvaluateOptions.limit,
    backend: BackendOpt = EvaluateOptions.backend,
    server: ServerOpt = EvaluateOptions.server,
    server_timeout_s: ServerTimeoutOpt = EvaluateOptions.server_timeout_s,
    round_trip: Annotated[
        bool, typer.Option(help="Run the inverse too: each image back from z.")
    ] = EvaluateOptions.round_trip,
    records: RecordsOpt = EvaluateOptions.records,
    resume: ResumeOpt = EvaluateOptions.resume,
    shard: ShardOpt = EvaluateOptions.shard,
    merge: Annotated[
        list[str], typer.Option(help="Records of a shard to join into --records (repeat).")
    ] = EvaluateOptions.merge,
    against: Annotated[
        str | None, typer.Option(help="Records of another run of the model: top-1 agreement, logits drift, the "
                                 "images whose top-1 changed.")
    ] = EvaluateOptions.against,
    changed_grid: Annotated[
        str | None, typer.Option(help="With --against: PNG of those images, reconstructed.")
    ] = EvaluateOptions.changed_grid,
    strict: StrictOpt = EvaluateOptions.strict,
    batch_size: BatchOpt = EvaluateOptions.batch_size,
    chunk_size: ChunkOpt = EvaluateOptions.chunk_size,
    workers: WorkersOpt = EvaluateOptions.workers,
    threads: ThreadsOpt = EvaluateOptions.threads,
    providers: ProviderOpt = EvaluateOptions.providers,
    device: DeviceOpt = EvaluateOptions.device,
    image_size: ImageSizeOpt = EvaluateOptions.image_size,
    ray: Annotated[bool, typer.Option(help="Spread the chunks over a local Ray instance.")] = EvaluateOptions.ray,
    ray_address: Annotated[
        str | None, typer.Option(help="... or over the Ray cluster at this address.")
    ] = EvaluateOptions.ray_address,
    ray_workers: Annotated[
        int, typer.Option(help="Ray actors, each with its own graphs.")
    ] = EvaluateOptions.ray_workers,
    quiet: QuietOpt = False,
    json: JsonOpt = None,
) -> None:
    """Top-1, top-5, loss and the round trip of a bundle over a whole split, on any backend.

    Example: `irevnet evaluate bundles/int8 -d imagefolder:/data/imagenet --records int8.parquet --against fp32.parquet`
    """
    from ..evaluation.run import evaluate as run_evaluate

    opts = EvaluateOptions(target=target, checkpoint=checkpoint, dataset=dataset, split=split, limit=limit,
                           backend=backend, server=server, server_timeout_s=server_timeout_s, round_trip=round_trip,
                           records=records, resume=resume, shard=shard, merge=merge, against=against,
                           changed_grid=changed_grid, strict=strict, batch_size=batch_size, chunk_size=chunk_size,
                           workers=workers, threads=threads, providers=providers, device=device, image_size=image_size,
                           ray=ray, ray_address=ray_address, ray_workers=ray_workers)
    check_outputs(json, changed_grid)
    with render.ChunkProgress(quiet) as bar:
        report = run_evaluate(opts, progress=bar.update)
    render.evaluation(report)
    write_json(json, report.to_dict())


@command
def invert(
    target: TargetArg = InvertOptions.target,
    checkpoint: CheckpointOpt = InvertOptions.checkpoint,
    dataset: DatasetOpt = InvertOptions.dataset,
    out: Annotated[str, typer.Option("--out", "-o", help="Folder: every image and its reconstruction as PNGs, and "
                                                         "grid.png; a .png: the grid alone.")] = InvertOptions.out,
    split: SplitOpt = InvertOptions.split,
    limit: LimitOpt = InvertOptions.limit,
    samples: Annotated[int, typer.Option(help="Images in the grid.")] = InvertOptions.samples,
    projection: Annotated[bool, typer.Option(help="A checkpoint of an injective model: range projection (off to "
                                                  "compare).")] = InvertOptions.projection,
    backend: BackendOpt = InvertOptions.backend,
    records: RecordsOpt = InvertOptions.records,
    resume: ResumeOpt = InvertOptions.resume,
    shard: ShardOpt = InvertOptions.shard,
    strict: StrictOpt = InvertOptions.strict,
    batch_size: BatchOpt = InvertOptions.batch_size,
    chunk_size: ChunkOpt = InvertOptions.chunk_size,
    workers: WorkersOpt = InvertOptions.workers,
    threads: ThreadsOpt = InvertOptions.threads,
    device: DeviceOpt = InvertOptions.device,
    image_size: ImageSizeOpt = InvertOptions.image_size,
    quiet: QuietOpt = False,
    json: JsonOpt = None,
) -> None:
    """Reconstruct a split from z with the deployed inverse: every image beside its reconstruction.

    Example: `irevnet invert bundles/fp32 -d imagefolder:/data/imagenet -o inverted --limit 1000`
    """
    from ..evaluation.invert import invert as run_invert

    opts = InvertOptions(target=target, checkpoint=checkpoint, dataset=dataset, out=out, split=split, limit=limit,
                         samples=samples, projection=projection, backend=backend, records=records, resume=resume,
                         shard=shard, strict=strict, batch_size=batch_size, chunk_size=chunk_size, workers=workers,
                         threads=threads, device=device, image_size=image_size)
    check_outputs(json)
    with render.ChunkProgress(quiet) as bar:
        report = run_invert(opts, progress=bar.update)
    render.evaluation(report.evaluation)
    render.console.print(str(report).split("; grid ", 1)[1].join(("grid ", "")), soft_wrap=True)
    write_json(json, report.to_dict())
