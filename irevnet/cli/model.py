"""`irevnet presets` and `irevnet info`: what architectures there are and what a checkpoint holds."""

from __future__ import annotations

from . import render
from .app import CheckpointOpt, ImageSizeOpt, JsonOpt, check_outputs, command, write_json


@command
def presets() -> None:
    """List the model presets (paper configurations and tiny test models)."""
    from ..model.config import PRESETS

    render.presets([(name, *PRESETS[name]) for name in sorted(PRESETS)])


@command
def info(checkpoint: CheckpointOpt, image_size: ImageSizeOpt = None, json: JsonOpt = None) -> None:
    """Describe a checkpoint: format, architecture, parameters, input and z shapes.

    Example: `irevnet info -c runs/digits/best.pt`
    """
    check_outputs(json)
    from ..io.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, image_size=image_size)
    summary = ckpt.summary()
    render.key_values(checkpoint, summary)
    write_json(json, {"checkpoint": checkpoint, **summary, "config": ckpt.config.to_dict()})
