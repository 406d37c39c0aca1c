"""The `irevnet` command: one thin typer command per stage over the library.

Each command builds the library's options dataclass (which validates itself), calls one library
function and renders the result (render.py). Modules by room: model (presets, info), train
(train), evaluation (evaluate, invert), export (export, build), runtime (verify, bench), serve
(triton, serve, serve-env), demo (memory, demo).
"""

from . import model, train, evaluation, export, runtime, serve, demo  # noqa: F401, I001 - registers the commands, in this order
from .app import app, main

__all__ = ["app", "main"]
