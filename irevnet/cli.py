"""The `irevnet` command: one thin typer command per stage over the library.

Exit codes: 0 success, 1 a check that ran and failed, 2 bad usage or bad input (one line on
stderr, no traceback), 130 interrupted.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
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


def _fail(message: str, code: int) -> None:
    # plain, unwrapped line: one line however narrow the terminal
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Registers a CLI command whose library errors become one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except IRevNetError as e:
            _fail(str(e), 2)
        except CheckFailed as e:
            _fail(str(e), 1)
        except KeyboardInterrupt:
            _fail("interrupted; files already written are complete (writes are atomic)", 130)

    return app.command()(wrapper)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"irevnet {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """i-RevNets (Jacobsen, Smeulders, Oyallon, ICLR 2018): deep networks invertible up to the
    final linear classifier. `irevnet demo` runs the whole pipeline on bundled digits."""


# -- shared option types -----------------------------------------------------------------------

CheckpointOpt = Annotated[
    Path, typer.Option("--checkpoint", "-c", help="Checkpoint: irevnet .pt, reference ImageNet .pth.tar or CIFAR .t7.")
]
ImageSizeOpt = Annotated[
    Optional[int],
    typer.Option("--image-size", help="Input height = width (reference ImageNet files do not store it; default 224)."),
]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the results to this JSON file.")]


def _write_json(path: Path | None, data: Any) -> None:
    if path is not None:
        from .files import write_json

        write_json(path, data)
        console.print(f"wrote {path}")


def _shape(shape: Any) -> str:
    return "x".join(map(str, shape))


def _key_value_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


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
    console.print(_key_value_table(str(checkpoint), summary))
    _write_json(json, {"checkpoint": str(checkpoint), **summary, "config": cfg.to_dict()})


def main() -> None:
    """Console-script entry point."""
    app(prog_name="irevnet")


if __name__ == "__main__":
    sys.exit(main())
