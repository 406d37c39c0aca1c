"""The `irevnet` command: one thin typer command per stage over the library.

Each command builds the library's options dataclass (which validates itself) with one keyword per
parameter, calls one library function and renders the result (render.py). A parameter's default is
the field's own, read from the class (`= ExportOptions.max_batch`), so each default is written once:
the options classes are imported at start-up (their modules import no torch), the library's work
inside the command. Modules by room: model (presets, info), train (train), evaluation (evaluate,
invert), export (export, build), runtime (verify, bench), serve (triton, serve, serve-env), demo
(memory, demo).
"""

from . import model, train, evaluation, export, runtime, serve, demo  # noqa: F401, I001 - registers the commands, in this order
from .app import app, main

__all__ = ["app", "main"]
