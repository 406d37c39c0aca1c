"""A run's folder: run.json (the options it was started with), last.pt's resume state, metrics.jsonl,
and the rules for resuming it: the same model and dataset, a state checked before any of it is used."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from .. import validation as check
from ..errors import IRevNetError, shown
from ..io.files import atomic_output
from .options import TrainOptions

# Options that define what a run learns; resuming with others would mix two runs in one folder.
RUN_IDENTITY = ("model", "dataset")


def recorded_options(out: Path) -> dict[str, Any] | None:
    """The options in OUT/run.json, or None when the folder has no run record."""
    path = out / "run.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested without end
        record = None
    options = record.get("options") if isinstance(record, dict) else None
    if not isinstance(options, dict):
        raise IRevNetError(f"{path} is not a run record of `irevnet train`; start a new run in another --out")
    return options


def _option_type(name: str) -> tuple[type, bool]:
    """The type of a TrainOptions field and whether it may be None, from its annotation."""
    hint = typing.get_type_hints(TrainOptions)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0], type(None) in typing.get_args(hint)


def _fits(value: Any, kind: type, optional: bool) -> bool:
    """A value from run.json has the field's type (JSON has no float/int distinction for floats)."""
    if value is None:
        return optional
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if kind is float else kind)


def check_training_state(path: Path, state: dict[str, Any]) -> None:
    """The resume state of last.pt, checked before any of it is applied."""
    kinds = {"epoch": int, "optimizer": dict, "scheduler": dict, "history": list, "best_top1": (int, float)}
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise IRevNetError(f"{path}: resume state {key!r} is missing or malformed; start a new run in another --out")
    if state["epoch"] < 0 or not all(isinstance(m, dict) for m in state["history"]):
        raise IRevNetError(f"{path}: resume state 'epoch' or 'history' is malformed; start a new run in another --out")
    # the history is written to metrics.jsonl as strict JSON after every epoch: a NaN in it would
    # fail there, after an epoch of training, and best.pt would never be written
    for number, metrics in enumerate(state["history"], 1):
        bad = [k for k, v in metrics.items() if not isinstance(k, str) or not check.finite_number(v)]
        if bad:
            raise IRevNetError(f"{path}: resume history entry {number} holds {shown(bad[0])} = {shown(metrics[bad[0]])}, "
                               f"not a finite number; start a new run in another --out")
    if not check.finite_number(state["best_top1"]):
        raise IRevNetError(f"{path}: resume state 'best_top1' is not a finite number; start a new run in another --out")


RUN_FILES = {"run.json", "last.pt", "best.pt", "metrics.jsonl"}


def is_run_folder(path: Path) -> bool:
    """True when `path` holds a training run of irevnet's and nothing else (what `irevnet demo`
    may replace): a run.json record of `irevnet train` and its checkpoints and metrics."""
    try:
        record = json.loads((path / "run.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    if not (isinstance(record, dict) and isinstance(record.get("options"), dict) and isinstance(record.get("command"), str)):
        return False
    return all(entry.name in RUN_FILES or entry.name.startswith(".") for entry in path.iterdir())


def resume_options(out: str | Path, **changes: Any) -> TrainOptions:
    """The options the run in `out` was started with (its run.json), with `changes` applied.

    `irevnet train -o OUT --resume` continues a run as it was started: an interrupted CIFAR run
    does not resume on the default dataset or learning rate. Flags given with --resume change
    only themselves (e.g. `--epochs 300` to train longer, `--workers 8` on another machine).
    """
    recorded = recorded_options(Path(out))
    if recorded is None:
        raise IRevNetError(f"--resume but {Path(out) / 'run.json'} does not exist; start the run without --resume")
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    merged = {k: v for k, v in recorded.items() if k in fields}
    for key, value in merged.items():
        kind, optional = _option_type(key)
        if not _fits(value, kind, optional):
            raise IRevNetError(
                f"{Path(out) / 'run.json'}: option {key!r} is {str(value)[:40]!r}, not a {kind.__name__}"
                f"{'?' if optional else ''}; the run record is corrupt, so start a new run in another --out"
            )
    merged.update(changes, out=str(out), resume=True)
    return TrainOptions(**merged)


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text("".join(json.dumps(m, allow_nan=False) + "\n" for m in history))  # strict JSON, always
