"""The CLI writes no option twice: every parameter of a command is a field of the library's
options dataclass (or on that command's CLI-only list), with the field's own default."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

from irevnet.cli import app

# command -> (its options dataclass, the parameters that are the CLI's own and why)
COMMANDS = {
    "export": ("irevnet.export.bundle:ExportOptions", {"engine": "builds engines after the export (`irevnet build`)",
                                                       "json": "where the result is written"}),
    "build": ("irevnet.runtime.trt_build:BuildOptions", {}),
    "verify": ("irevnet.runtime.verify:VerifyOptions", {"json": "an output of the command"}),
    "bench": ("irevnet.runtime.bench:BenchOptions", {"json": "an output of the command"}),
    "train": ("irevnet.training.options:TrainOptions", {"ctx": "typer's context (which flags were given)",
                                                        "quiet": "console output only"}),
    "evaluate": ("irevnet.evaluation.run:EvaluateOptions", {"json": "an output of the command",
                                                          "quiet": "console output only"}),
    "invert": ("irevnet.evaluation.invert:InvertOptions", {"json": "an output of the command",
                                                          "quiet": "console output only"}),
    "memory": ("irevnet.training.memory:MemoryOptions", {"json": "an output of the command"}),
    "demo": ("irevnet.demo:DemoOptions", {}),
    "info": (None, {"checkpoint": "reads a file, no options", "image_size": "passed to load_checkpoint",
                    "json": "an output of the command"}),
    "presets": (None, {}),
    "triton": ("irevnet.serving.repository:TritonOptions", {"ctx": "typer's context (which flags were given)"}),
    "serve": ("irevnet.serving.server:ServeOptions", {}),
    "serve-env": (None, {"folder": "the environment's folder, no options"}),
}
# what a CLI string spells as a list in the options (comma-separated on the command line)
PARSED = {("bench", "batch_sizes"), ("bench", "concurrency")}


def _commands():
    return {info.name or info.callback.__name__.replace("_", "-"): inspect.unwrap(info.callback)
            for info in app.registered_commands}


def test_every_command_is_listed():
    assert set(_commands()) == set(COMMANDS)


def _problems(name: str, fn, cls: type | None, cli_only: dict[str, str]) -> list[str]:
    """What is wrong with one command's parameters: unmapped, or a default of its own."""
    params = inspect.signature(fn).parameters
    problems = [f"CLI-only {p} is no parameter" for p in cli_only if p not in params]
    if cls is None:
        return problems + [f"--{p} has no options class" for p in params if p not in cli_only]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for param in params.values():
        if param.name in cli_only:
            continue
        if param.name not in fields:
            problems.append(f"`irevnet {name}` --{param.name} maps to no field of {cls.__name__}")
            continue
        field = fields[param.name]
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None if field.default is dataclasses.MISSING else field.default
        cli_default = None if param.default is inspect.Parameter.empty else param.default
        # None on the command line means "the field's default" (cli.app.options)
        if (cli_default is not None or (name, param.name) in PARSED) and cli_default != default:
            problems.append(f"`irevnet {name}` --{param.name} defaults to {cli_default!r}, {cls.__name__} to {default!r}")
    return problems


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_parameter_is_an_options_field_with_its_default(name):
    target, cli_only = COMMANDS[name]
    cls = None
    if target is not None:
        module, cls_name = target.split(":")
        cls = getattr(importlib.import_module(module), cls_name)
    assert _problems(name, _commands()[name], cls, cli_only) == []


def test_the_check_sees_an_unmapped_parameter_and_a_copied_default():
    """The test above can fail: a parameter no field takes, and a default that drifted."""
    from irevnet.runtime.verify import VerifyOptions

    def verify(bundles: list[str], samples: int = 16, strictness: int = 3) -> None:
        pass

    assert _problems("verify", verify, VerifyOptions, {}) == [
        "`irevnet verify` --samples defaults to 16, VerifyOptions to 8",
        "`irevnet verify` --strictness maps to no field of VerifyOptions",
    ]
