"""The `irevnet` command: one thin typer command per stage over the library.

Exit codes: 0 success, 1 a check that ran and failed, 2 bad usage or bad input (one line on
stderr, no traceback), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._version import __version__
from .errors import CheckFailed, IRevNetError

app = typer.Typer(
    name="irevnet",
    help="i-RevNets: train, invert, export forward/inverse ONNX graphs and TensorRT engines, verify, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
console = Console(highlight=False)
if not console.is_terminal:  # logs and pipes: room for the wide tables instead of 80 columns
    console.width = 140


def _fail(message: str, code: int) -> None:
    # plain, unwrapped line: one line however narrow the terminal
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


# The extra that installs each optional package (pyproject.toml): a runtime-only install has
# numpy, onnx and the CLI, and training/export need `irevnet[torch]`.
_EXTRA_OF = {
    "torch": "torch", "torchvision": "torch", "onnxscript": "torch", "sklearn": "torch", "PIL": "torch",
    "onnxruntime": "ort", "tensorrt": "tensorrt", "cuda": "tensorrt",
}


def _one_line(e: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker (whose message carries the
    worker's traceback), its last line without the class name."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    if len(lines) <= 1:
        return str(e).strip()
    return re.sub(r"^[\w.]+Error: ", "", lines[-1].strip())


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt, so that every `finally` runs and
    temporary files are removed (not an Exception: nothing may swallow it)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_exception():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Registers a CLI command whose library errors become one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_as_exception():
                return fn(*args, **kwargs)
        except IRevNetError as e:
            _fail(_one_line(e), 2)
        except CheckFailed as e:
            _fail(str(e), 1)
        except ModuleNotFoundError as e:
            extra = _EXTRA_OF.get((e.name or "").split(".")[0])
            if extra is None:
                raise
            _fail(f"`irevnet {fn.__name__}` needs {e.name}, which is not installed; pip install 'irevnet[{extra}]'", 2)
        except OSError as e:  # an output folder that cannot be created, a full disk, no permission
            where = f" {e.filename}" if e.filename else ""
            _fail(f"cannot write or read{where}: {e.strerror or e}; check the path, its permissions and free space", 2)
        except KeyboardInterrupt:
            _fail("interrupted; files already written are complete (writes are atomic)", 130)
        except Terminated:
            _fail("terminated (SIGTERM); temporary files removed, files already written are complete", 143)

    return app.command()(wrapper)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"irevnet {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """i-RevNets (Jacobsen, Smeulders, Oyallon, ICLR 2018): deep networks invertible up to the
    final linear classifier. `irevnet demo` runs the whole pipeline on bundled digits."""


# -- shared option types -----------------------------------------------------------------------

CheckpointOpt = Annotated[
    Path, typer.Option("--checkpoint", "-c", help="Checkpoint: irevnet .pt, reference ImageNet .pth.tar or CIFAR .t7.")
]
ImageSizeOpt = Annotated[
    int | None,
    typer.Option("--image-size", help="Input height = width (reference ImageNet files do not store it; default 224)."),
]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Also write the results to this JSON file.")]
DatasetOpt = Annotated[
    str, typer.Option("--dataset", "-d", help="digits | cifar10:PATH | cifar100:PATH | imagefolder:PATH | synthetic.")
]


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class RecipeChoice(str, Enum):
    cifar = "cifar"
    imagenet = "imagenet"
    digits = "digits"


class Direction(str, Enum):
    forward = "forward"
    inverse = "inverse"
    both = "both"


DeviceOpt = Annotated[Device, typer.Option("--device", help="auto picks cuda when torch sees a GPU.")]


def _check_outputs(*paths: Path | None) -> None:
    """Refuses output files that cannot be written before the command does its work."""
    from .files import check_writable

    for path in paths:
        if path is not None:
            check_writable(path)


def _write_json(path: Path | None, data: Any) -> None:
    if path is not None:
        from .files import write_json

        write_json(path, data)
        console.print(f"wrote {path}")


def _shape(shape: Any) -> str:
    return "x".join(map(str, shape))


def _print_key_values(title: str, rows: dict[str, Any]) -> None:
    console.print(f"[bold]{escape(title)}[/]", soft_wrap=True)
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


# -- commands ------------------------------------------------------------------------------------


@command
def presets() -> None:
    """List the model presets (paper configurations and tiny test models)."""
    from .config import PRESETS

    table = Table("name", "type", "blocks", "channels", "input -> z", "what for")
    for name in sorted(PRESETS):
        cfg, desc = PRESETS[name]
        table.add_row(
            name, "injective" if cfg.injective else "bijective", "-".join(map(str, cfg.blocks)),
            "-".join(map(str, cfg.channels)), f"{_shape(cfg.in_shape)} -> {_shape(cfg.z_shape)}", desc,
        )
    console.print(table)


@command
def info(checkpoint: CheckpointOpt, image_size: ImageSizeOpt = None, json: JsonOpt = None) -> None:
    """Describe a checkpoint: format, architecture, parameters, input and z shapes.

    Example: `irevnet info -c runs/digits/best.pt`
    """
    _check_outputs(json)
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, image_size=image_size)
    cfg = ckpt.config
    summary = {
        "format": ckpt.format,
        "type": "injective i-RevNet (a)" if cfg.injective else "bijective i-RevNet (b)",
        "depth": cfg.depth,
        "parameters": ckpt.model.num_parameters(),
        "input shape": list(cfg.in_shape),
        "z shape": list(cfg.z_shape),
        "blocks": list(cfg.blocks),
        "strides": list(cfg.strides),
        "channels": list(cfg.channels),
        "init_ds": cfg.init_ds,
        "classes": cfg.num_classes,
        **{f"meta.{k}": v for k, v in ckpt.meta.items() if isinstance(v, (int, float, str))},
    }
    _print_key_values(str(checkpoint), summary)
    _write_json(json, {"checkpoint": str(checkpoint), **summary, "config": cfg.to_dict()})


class _ProgressBar:
    """Training progress on the console: a bar per epoch, a summary line after it."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"), console=console, transient=True,
        )
        self.task = None

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if console.is_terminal:  # logs and pipes get the epoch lines only
            self.progress.start()
            self.task = self.progress.add_task("train", total=steps, epoch=f"{epoch}/{epochs}", stats="")

    def step(self, loss: float, top1: float, images_per_s: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, advance=1, stats=f"loss {loss:.4f}  top-1 {top1:5.1f}%  {images_per_s:,.0f} img/s")

    def epoch_end(self, m: dict[str, Any]) -> None:
        if self.task is not None:
            self.progress.stop()
            self.progress.remove_task(self.task)
            self.task = None
        console.print(
            f"epoch {m['epoch']:>3}  lr {m['lr']:.4g}  loss {m['train_loss']:.4f}  train {m['train_top1']:5.1f}%  "
            f"test top-1 {m['test_top1']:5.2f}%  top-5 {m['test_top5']:6.2f}%  {m['images_per_s']:,.0f} img/s",
            soft_wrap=True,
        )


@command
def train(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Preset to train (irevnet presets).")] = "irevnet-tiny",
    dataset: DatasetOpt = "digits",
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: last.pt, best.pt, metrics.jsonl, run.json.")] = Path(
        "runs/irevnet"
    ),
    recipe: Annotated[
        RecipeChoice | None, typer.Option(help="The paper's SGD schedule to follow (default: by dataset).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the recipe's epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override the global batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Override the initial learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Override the weight decay.")] = None,
    seed: int = 0,
    device: DeviceOpt = Device.auto,
    amp: Annotated[bool, typer.Option(help="fp16 autocast with gradient scaling (CUDA).")] = False,
    channels_last: Annotated[bool | None, typer.Option(help="NHWC memory format (default: with CUDA + AMP).")] = None,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from last.pt, with its recorded options; flags given override.")
    ] = False,
    download: Annotated[bool, typer.Option(help="Download CIFAR if the folder lacks it.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="One log line per epoch, no progress bar.")] = False,
    memory_efficient: Annotated[
        bool, typer.Option(help="Backpropagate through the block inverses: activation memory independent of depth.")
    ] = False,
) -> None:
    """Train an i-RevNet; resumable, and multi-GPU under torchrun.

    Example: `irevnet train -m irevnet-tiny -d digits -o runs/digits`

    Multi-GPU: `torchrun --nproc-per-node 8 -m irevnet train -m irevnet-301 -d imagefolder:/data/imagenet`
    """
    from .train import TrainOptions, resume_options
    from .train import train as run_training

    opts = TrainOptions(
        model=model, dataset=dataset, out=str(out), recipe=recipe.value if recipe else None, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, seed=seed, device=device.value, amp=amp, channels_last=channels_last,
        workers=workers, resume=resume, download=download, memory_efficient=memory_efficient,
    )
    if resume:  # the run's recorded options, except those given on this command line
        # by name: typer vendors its own click, so its ParameterSource is not click's
        given = {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
        given -= {"out", "resume"}
        opts = resume_options(out, **{k: v for k, v in dataclasses.asdict(opts).items() if k in given})
    if quiet:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    result = run_training(opts, None if quiet else _ProgressBar())
    if result["rank"] == 0:
        console.print(f"best test top-1 {result['best_top1']:.2f}% after {result['epochs']} epochs; files in {out}/")


@command
def evaluate(
    checkpoint: CheckpointOpt,
    dataset: DatasetOpt = "digits",
    image_size: ImageSizeOpt = None,
    batch_size: int = 256,
    workers: int = 0,
    device: DeviceOpt = Device.auto,
    json: JsonOpt = None,
) -> None:
    """Loss, top-1 and top-5 of a checkpoint on a dataset's test split.

    Example: `irevnet evaluate -c ILSVRC_trained_irevnet.pth.tar -d imagefolder:/data/imagenet`
    """
    _check_outputs(json)
    from .checkpoint import load_checkpoint
    from .data import load_datasets
    from .devices import resolve_device
    from .errors import IRevNetError
    from .train import evaluate as run_eval

    ckpt = load_checkpoint(checkpoint, image_size=image_size)
    data = load_datasets(dataset, ckpt.config.in_shape, augment=False)
    if data.num_classes != ckpt.config.num_classes:
        raise IRevNetError(
            f"{checkpoint} has {ckpt.config.num_classes} classes but {dataset} has {data.num_classes}; "
            f"evaluate on the dataset it was trained on"
        )
    dev = resolve_device(device.value)
    metrics = run_eval(ckpt.model.to(dev), data.test, dev, batch_size=batch_size, workers=workers)
    _print_key_values(f"{checkpoint} on {dataset}", {
        "images": metrics["images"], "loss": f"{metrics['loss']:.4f}",
        "top-1": f"{metrics['top1']:.3f}%", "top-5": f"{metrics['top5']:.3f}%",
    })
    _write_json(json, {"checkpoint": str(checkpoint), "dataset": dataset, **metrics})


@command
def invert(
    checkpoint: CheckpointOpt,
    dataset: DatasetOpt = "digits",
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG: originals on top, reconstructions from z below.")] = Path(
        "inversion.png"
    ),
    samples: Annotated[int, typer.Option(help="Test images to invert.")] = 8,
    image_size: ImageSizeOpt = None,
    projection: Annotated[
        bool, typer.Option(help="Range projection for injective models (on by default; off to compare).")
    ] = True,
    device: DeviceOpt = Device.auto,
    json: JsonOpt = None,
) -> None:
    """Reconstruct test images from their final representation z, like the paper's figure.

    Example: `irevnet invert -c runs/digits/best.pt -d digits -o inversion.png`
    """
    _check_outputs(out, json)
    from .checkpoint import load_checkpoint
    from .data import load_datasets
    from .devices import resolve_device
    from .errors import IRevNetError
    from .images import denormalize, save_grid
    from .invert import first_images
    from .invert import invert as run_invert

    if samples < 1:
        raise IRevNetError(f"--samples must be at least 1, got {samples}")
    ckpt = load_checkpoint(checkpoint, image_size=image_size)
    data = load_datasets(dataset, ckpt.config.in_shape, augment=False)
    model = ckpt.model.to(resolve_device(device.value))
    result = run_invert(model, first_images(data.test, samples), data.mean, data.std, project=projection)
    save_grid([np.clip(denormalize(a, data.mean, data.std), 0, 1) for a in (result.originals, result.reconstructions)], out)
    m = result.metrics
    table = Table("image", "PSNR (dB)", "max abs error (pixels, 0-1)", title=f"inverse(forward(x)) on {dataset}")
    for i, row in enumerate(m["per_image"]):
        table.add_row(str(i), _db(row["psnr_db"]), f"{row['max_abs']:.2e}")
    table.add_row("all", _db(m["psnr_db"]), f"{m['max_abs']:.2e}", style="bold")
    console.print(table)
    console.print(f"relative L2 error {m['rel_l2']:.2e}; grid written to {out}")
    _write_json(json, {"checkpoint": str(checkpoint), "dataset": dataset, "projection": projection, **m})


class PrecisionChoice(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    mixed = "mixed"


@command
def export(
    checkpoint: CheckpointOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write (replaced whole on success).")],
    precision: Annotated[
        PrecisionChoice, typer.Option(help="fp32 | fp16 | mixed (F in fp16, coupling stream in fp32).")
    ] = PrecisionChoice.fp32,
    image_size: ImageSizeOpt = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (18-20).")] = 18,
    max_batch: Annotated[int, typer.Option(help="Largest batch of the dynamic batch dimension N.")] = 32,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="Verify on real test images (default: seeded random).")
    ] = None,
    samples: Annotated[int, typer.Option(help="Images in the verification batch.")] = 8,
    projection: Annotated[bool, typer.Option(help="Range projection in the inverse (injective models).")] = True,
    debug: Annotated[bool, typer.Option(help="Also write per-block debug graphs (used by `irevnet verify`).")] = True,
    allow_mismatch: Annotated[bool, typer.Option(help="Keep the bundle even if it misses its tolerances.")] = False,
    engine: Annotated[bool, typer.Option(help="Also build TensorRT engines (as `irevnet build` with its defaults).")] = False,
) -> None:
    """Export forward (image -> logits, z) and inverse (z -> image) ONNX graphs, verified against PyTorch.

    Example: `irevnet export -c runs/digits/best.pt -o bundles/digits -d digits --precision mixed`
    """
    from .export.bundle import ExportOptions, export_bundle

    opts = ExportOptions(
        checkpoint=str(checkpoint), out=str(out), precision=precision.value, image_size=image_size, opset=opset,
        max_batch=max_batch, dataset=dataset, samples=samples, projection=projection, debug_graphs=debug,
        allow_mismatch=allow_mismatch,
    )
    with console.status("exporting") as status:
        manifest = export_bundle(opts, log=lambda msg: status.update(msg))
    _print_export(manifest, out)
    if engine:
        from .export.trt_build import BuildOptions

        _build(BuildOptions(bundle=str(out)))


def _print_export(manifest: dict[str, Any], out: Path) -> None:
    v = manifest["verification"]
    graphs = Table("graph", "nodes", "ops", "export s", title=f"{out} ({manifest['precision']})")
    for name, g in manifest["graphs"].items():
        graphs.add_row(name, str(g["nodes"]), ", ".join(f"{k} {n}" for k, n in g["ops"].items()), f"{g['export_seconds']:.1f}")
    console.print(graphs)
    table = Table("check (vs PyTorch fp32)", "max abs", "rel. L2", "tolerance", "", title=f"verification: {v['samples']} {v['inputs']} samples, {v['backend']}")
    for c in v["checks"]:
        if "rel_l2" in c:
            table.add_row(c["name"], f"{c['max_abs']:.2e}", f"{c['rel_l2']:.2e}", f"{c['tolerance']:.0e}", _verdict(c["passed"]))
        else:
            table.add_row(c["name"], "", f"{c['value']:.3f}", f">= {c['min']}", _verdict(c["passed"]))
    console.print(table)
    extra = f"round trip PSNR {_db(v['round_trip_psnr_db'])} dB"
    if "top1_pytorch" in v:
        extra += f"; top-1 PyTorch {v['top1_pytorch']:.1f}% vs ONNX {v['top1_onnx']:.1f}%"
    console.print(extra)
    console.print(f"bundle written to {out}" if v["passed"] else f"bundle written to {out} despite failed checks (--allow-mismatch)")


BackendOpt = Annotated[
    list[str] | None,
    typer.Option("--backend", "-b", help="onnxruntime | tensorrt | torch; repeat for several (default: onnxruntime)."),
]
ProviderOpt = Annotated[
    list[str] | None, typer.Option("--provider", help="ONNX Runtime providers in order: tensorrt, cuda, cpu (default: all available).")
]
ThreadsOpt = Annotated[int | None, typer.Option(help="Intra-op threads (ONNX Runtime, torch).")]
RebuildOpt = Annotated[bool, typer.Option(help="Rebuild TensorRT engines made for another GPU or TensorRT version.")]


class HardwareCompat(str, Enum):
    none = "none"
    ampere_plus = "ampere_plus"
    same_compute_capability = "same_compute_capability"


def _build(opts) -> None:
    """Builds the engines of `opts.bundle` (a trt_build.BuildOptions) and prints them."""
    from .export.trt_build import build_engines

    with console.status("building engines") as status:
        section = build_engines(opts, log=lambda msg: status.update(msg))
    t = Table("engine", "size MB", "build s", title=f"TensorRT {section['version']} on {section['gpu']['name']} "
              f"(sm_{''.join(map(str, section['gpu']['compute_capability']))}), batch {section['profile']}")
    for e in section["engines"].values():
        t.add_row(e["file"], f"{e['bytes'] / 1e6:.1f}", f"{e['build_seconds']:.1f}")
    console.print(t)


@command
def build(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder from `irevnet export`.")],
    max_batch: Annotated[int | None, typer.Option(help="Largest batch of the profile (default: the bundle's).")] = None,
    opt_batch: Annotated[int | None, typer.Option(help="Batch the kernels are tuned for (default: max).")] = None,
    workspace_mb: Annotated[int | None, typer.Option(help="Builder workspace limit in MiB.")] = None,
    timing_cache: Annotated[Path | None, typer.Option(help="Timing cache file (default: BUNDLE/timing.cache).")] = None,
    opt_level: Annotated[int, typer.Option(help="Builder optimization level 0-5.")] = 3,
    tf32: Annotated[bool, typer.Option(help="Allow TF32 in fp32 convolutions (spoils the fp32 round trip).")] = False,
    hardware_compat: Annotated[HardwareCompat, typer.Option(help="Let the engines run on other GPUs.")] = HardwareCompat.none,
    version_compat: Annotated[bool, typer.Option(help="Let the engines run on later TensorRT releases.")] = False,
    debug: Annotated[bool, typer.Option(help="Also build the per-block debug engines for `irevnet verify`.")] = False,
) -> None:
    """Compile a bundle's forward and inverse graphs into TensorRT engines (strongly typed).

    Example: `irevnet build bundles/digits --opt-batch 8`
    """
    from .export.trt_build import BuildOptions

    _build(BuildOptions(
        bundle=str(bundle), max_batch=max_batch, opt_batch=opt_batch, workspace_mb=workspace_mb,
        timing_cache=str(timing_cache) if timing_cache else None, opt_level=opt_level, tf32=tf32,
        hardware_compat=hardware_compat.value, version_compat=version_compat, debug=debug,
    ))


@command
def verify(
    bundles: Annotated[list[Path], typer.Argument(help="Bundle folder(s); several precisions of one model compare side by side.")],
    backend: BackendOpt = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Real test images (needs torch); default: the bundle's reference samples.")] = None,
    samples: Annotated[int, typer.Option(help="Images to check.")] = 8,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="Live PyTorch reference (default: the manifest's, when torch is installed).")] = None,
    provider: ProviderOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = Device.auto,
    blocks: Annotated[bool, typer.Option(help="Error per block from the debug graphs.")] = True,
    plot: Annotated[Path | None, typer.Option(help="Write the error-vs-depth plot (PNG) here.")] = None,
    rebuild: RebuildOpt = False,
    json: JsonOpt = None,
) -> None:
    """Check exported bundles: round trip, cross round trips, parity with PyTorch, error per block.

    Exits 1 when a check misses the bundle's tolerance. Runs without torch, against the
    reference samples stored in the bundle.

    Example: `irevnet verify bundles/fp32 bundles/mixed bundles/fp16 --plot blocks.png`
    """
    _check_outputs(plot, json)
    from .errors import CheckFailed
    from .runtime.verify import VerifyOptions
    from .runtime.verify import verify as run_verify

    opts = VerifyOptions(
        bundles=[str(b) for b in bundles], backends=backend or ["onnxruntime"], dataset=dataset, samples=samples,
        checkpoint=str(checkpoint) if checkpoint else None, providers=provider, threads=threads, device=device.value,
        blocks=blocks, plot=str(plot) if plot else None, rebuild=rebuild,
    )
    with console.status("verifying") as status:
        result = run_verify(opts, log=lambda msg: status.update(msg))
    _print_verify(result)
    _write_json(json, result)
    if not result["passed"]:
        raise CheckFailed("verify failed: see the FAIL rows above")
    console.print("[green]verify passed[/]")


def _print_verify(r: dict[str, Any]) -> None:
    console.print(f"{r['samples']} {r['inputs']}; reference: {r['reference']}")
    t = Table("precision", "z from", "inverted by", "rel. L2", "max abs (px)", "PSNR dB", "worst", "tol.", "",
              title="round trip inverse(forward(x)) vs x")
    for e in r["round_trip"] + r["cross_round_trip"]:
        t.add_row(e["precision"], escape(e["forward"]), escape(e["inverse"]), f"{e['rel_l2']:.2e}", f"{e['max_abs_pixels']:.2e}",
                  _db(e["psnr_db"]), str(e["worst_sample"]), f"{e['tolerance']:.0e}", _verdict(e["passed"]))
    console.print(t)
    if r["parity"]:
        t = Table("precision", "backend", "logits rel.", "logits max abs", "z rel.", "top-1 agree", "top-1 vs PyTorch", "",
                  title="parity with PyTorch fp32")
        for e in r["parity"]:
            acc = f"{e['top1_backend']:.2f}% vs {e['top1_pytorch']:.2f}%" if "top1_backend" in e else "(no labels)"
            t.add_row(e["precision"], escape(e["backend"]), f"{e['logits']['rel_l2']:.2e}", f"{e['logits']['max_abs']:.2e}",
                      f"{e['z']['rel_l2']:.2e}", f"{e['top1_agreement']:.3f}", acc, _verdict(e["passed"]))
        console.print(t)
    for e in r["blocks"]:
        title = f"error per block: {e['precision']} on {escape(e['backend'])} (row i: input of block i; last row: z)"
        if "skipped" in e:
            console.print(f"{title}: skipped, {e['skipped']}")
            continue
        t = Table("i", "block i inverse gain", "fwd drift", "inverse error", "F bits equal", title=title)
        n = len(e["round_trip"])
        rows = range(n) if n <= 32 else sorted(set(range(4)) | set(range(n - 4, n)) | set(
            sorted(range(n), key=lambda i: -e["round_trip"][i])[:6]))
        for i in rows:
            gain = e["gain"][i] if e.get("gain") and i < len(e["gain"]) else None
            drift = e["forward_drift"][i] if "forward_drift" in e else None
            same = e["f_identical_fraction"][i] if i < len(e["f_identical_fraction"]) else None
            t.add_row(str(i), "" if gain is None else f"{gain:.3g}", "" if drift is None else f"{drift:.1e}",
                      f"{e['round_trip'][i]:.1e}", "" if same is None else f"{same:.0%}")
        console.print(t)
        if n > 32:
            console.print(f"({n} block boundaries; showing the first, last and worst; all in --json)")
        for w in e["warnings"]:
            console.print(f"[yellow]warning[/]: {w}")
    if any("round_trip" in e for e in r["blocks"]):
        console.print("fwd drift: block input vs PyTorch fp32; inverse error: recovered block input vs this backend's "
                      "forward; F bits equal: share of F outputs identical in both graphs (only the last block sees "
                      "the same input in both; earlier ones inherit the recovered input's rounding).")
    if r.get("plot"):
        console.print(f"plot written to {r['plot']}")


@command
def bench(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    backend: BackendOpt = None,
    direction: Annotated[Direction, typer.Option(help="Which graphs to time.")] = Direction.both,
    batch_sizes: Annotated[
        str | None, typer.Option(help="Comma-separated batch sizes (default: 1, 8 and the bundle's --max-batch).")
    ] = None,
    warmup_s: Annotated[float, typer.Option(help="Warm-up seconds per measurement.")] = 1.0,
    duration_s: Annotated[float, typer.Option(help="Measured seconds per measurement.")] = 3.0,
    iterations: Annotated[int | None, typer.Option(help="Measure this many runs instead of --duration-s.")] = None,
    provider: ProviderOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = Device.auto,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="For --backend torch (default: the manifest's).")] = None,
    rebuild: RebuildOpt = False,
    json: JsonOpt = None,
) -> None:
    """Latency percentiles and throughput of the bundle's graphs, side by side per backend.

    Example: `irevnet bench bundles/fp32 -b onnxruntime -b torch --batch-sizes 1,32`
    """
    _check_outputs(json)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .errors import IRevNetError
    from .runtime.bench import BenchOptions
    from .runtime.bench import bench as run_bench

    try:
        sizes = [int(s) for s in batch_sizes.split(",") if s.strip()] if batch_sizes else None
    except ValueError:
        raise IRevNetError(f"--batch-sizes must be integers separated by commas, got {batch_sizes!r}") from None
    opts = BenchOptions(
        bundle=str(bundle), backends=backend or ["onnxruntime"], direction=direction.value, batch_sizes=sizes,
        warmup_s=warmup_s, duration_s=duration_s, iterations=iterations, providers=provider, threads=threads,
        device=device.value, checkpoint=str(checkpoint) if checkpoint else None, rebuild=rebuild,
    )
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True) as p:
        task = p.add_task("bench", total=1.0)
        result = run_bench(opts, progress=lambda what, frac: p.update(task, description=what, completed=frac))
    _print_bench(result)
    _write_json(json, result)


def _print_bench(r: dict[str, Any]) -> None:
    m = r["machine"]
    t = Table("backend", "dir", "batch", "median ms", "p90", "p99", "images/s", "GFLOP/s", "speedup",
              title=f"{r['bundle']} ({r['precision']}), {r['model']['gflop_per_image']:.2f} GFLOP/image; "
              f"min/mean/p95/max in --json")
    for e in r["results"]:
        t.add_row(escape(e["backend"]), e["direction"][:3].replace("for", "fwd"), str(e["batch"]), f"{e['median_ms']:.2f}",
                  f"{e['p90_ms']:.2f}", f"{e['p99_ms']:.2f}", f"{e['images_per_s']:,.1f}",
                  f"{e['gflops']:.1f}", "" if e["speedup"] is None else f"{e['speedup']:.2f}x")
    console.print(t)
    gpus = ", ".join(m["gpus"]) or "none"
    console.print(f"{m['cpu']} ({m['cpu_count']} logical CPUs), GPU: {gpus}; numpy fp32 matmul {m['fp32_matmul_gflops']:.1f} GFLOP/s; "
                  f"speedup = baseline mean latency / mean latency (baseline: {r['results'][0]['baseline']})", soft_wrap=True)


@command
def memory(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Presets to measure (repeatable).")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch of the measured training step.")] = 32,
    image_size: ImageSizeOpt = None,
    device: DeviceOpt = Device.cpu,
    json: JsonOpt = None,
) -> None:
    """Activation memory and time of one training step: standard backprop vs --memory-efficient.

    Each measurement runs in a fresh process. On the CPU, activation memory is the peak resident
    memory during the step minus the resident memory before it (parameters, gradients and
    momentum already allocated); on CUDA, max allocated minus allocated before.

    Example: `irevnet memory -m irevnet-301 -m irevnet-cifar --batch-size 32`
    """
    _check_outputs(json)
    from .config import get_config
    from .memory import measure_in_subprocess

    presets = model or ["irevnet-cifar", "irevnet-301"]
    for name in presets:
        get_config(name)  # unknown names fail here, in one line
    rows = []
    with console.status("measuring") as status:
        for name in presets:
            pair = {}
            for efficient in (False, True):
                status.update(f"{name}, batch {batch_size}, {'memory-efficient' if efficient else 'standard'}")
                pair[efficient] = measure_in_subprocess(name, batch_size, efficient, device.value, image_size)
            rows.append({
                "preset": name, "standard": pair[False], "memory_efficient": pair[True],
                "memory_ratio": pair[False]["activation_bytes"] / max(pair[True]["activation_bytes"], 1),
                "time_ratio": pair[True]["step_seconds"] / pair[False]["step_seconds"],
            })
    t = Table("preset", "batch", "image", "standard MB", "memory-efficient MB", "saving", "step s (std / eff)", "time",
              title=f"one SGD step on {rows[0]['standard']['device']}; activation memory")
    for r in rows:
        std, eff = r["standard"], r["memory_efficient"]
        t.add_row(r["preset"], str(std["batch"]), str(std["image_size"]), f"{std['activation_bytes'] / 2**20:,.0f}",
                  f"{eff['activation_bytes'] / 2**20:,.0f}", f"{r['memory_ratio']:.1f}x",
                  f"{std['step_seconds']:.2f} / {eff['step_seconds']:.2f}", f"{r['time_ratio']:.2f}x")
    console.print(t)
    console.print(rows[0]["standard"]["measured_as"])
    _write_json(json, {"results": rows})


@command
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the run, bundles and pictures.")] = Path("demo-out"),
    fast: Annotated[bool, typer.Option(help="Under a minute: 6 epochs, fp32 only, a shorter bench.")] = False,
) -> None:
    """The whole pipeline on the bundled real digits, no download: train, evaluate, export,
    verify, invert, bench.

    Example: `irevnet demo --out demo-out`
    """
    from .demo import DemoOptions, run_demo

    def report(step: str, result: Any) -> None:
        console.rule(f"[bold]{step}")
        if step == "train":
            console.print(f"trained irevnet-tiny on digits: best held-out top-1 {result['best_top1']:.2f}%")
        elif step.startswith("export"):
            _print_export(*result)
        elif step == "evaluate":
            console.print(f"test split ({result['images']} images): top-1 PyTorch {result['top1_pytorch']:.2f}%, "
                          f"ONNX Runtime fp32 {result['top1_onnx']:.2f}%")
        elif step == "verify":
            _print_verify(result)
        elif step == "invert":
            console.print(f"originals (top) and reconstructions from z by the exported graphs (bottom): {result}")
        elif step == "bench":
            _print_bench(result)

    summary = run_demo(DemoOptions(out=str(out), fast=fast), report, _ProgressBar())
    console.rule("[bold]summary")
    acc = summary["accuracy"]
    t = Table("", "PyTorch", "ONNX Runtime", title="irevnet demo: irevnet-tiny on the scikit-learn digits")
    t.add_row("test top-1", f"{acc['top1_pytorch']:.2f}%", f"{acc['top1_onnx']:.2f}% (fp32)")
    for row in summary["round_trip"]:
        cells = [f"{row[side]['rel_l2']:.1e}, {_db(row[side]['psnr_db'])} dB" if side in row else ""
                 for side in ("pytorch", "onnxruntime")]
        t.add_row(f"round trip {row['precision']} (rel. L2, PSNR)", *cells)
    speed = summary["speedup_vs_pytorch"]
    t.add_row("speed, batch 32", "1.00x", f"forward {speed.get('forward', 0):.2f}x, inverse {speed.get('inverse', 0):.2f}x")
    console.print(t)
    for what, where in summary["files"].items():
        console.print(f"{what}: {', '.join(where) if isinstance(where, list) else where}")
    if not summary["verify_passed"]:
        from .errors import CheckFailed

        raise CheckFailed("the demo's verification failed; see the tables above")


def _verdict(passed: bool) -> str:
    return "[green]pass[/]" if passed else "[red]FAIL[/]"


def _db(value: float | None) -> str:
    return "exact" if value is None else f"{value:.1f}"


# click's base exception class, whether typer vendors click (0.2x) or depends on it.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    """Console-script entry point. Usage errors (unknown option, bad choice) are one line too,
    like the library's errors, instead of typer's framed panel."""
    try:
        code = typer.main.get_command(app).main(prog_name="irevnet", standalone_mode=False)
    except _UsageError as e:
        message = e.format_message().strip().rstrip(".")
        if message:  # empty after `irevnet` alone: the help was printed
            ctx = getattr(e, "ctx", None)
            hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
            typer.echo(f"error: {message}{hint}", err=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
