"""A parameter can be followed, and no default is written twice: every parameter of a command is a
field of the library's options dataclass (or on that command's CLI-only list), its default is the
field's own, read from the class (`= ExportOptions.max_batch`), and the command builds the options
with one keyword per parameter, passing the variable of that name (`precision=precision`)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import textwrap

import pytest

from irevnet.cli import app

# command -> (its options dataclass, the parameters that are the CLI's own and why)
COMMANDS = {
    "export": ("irevnet.export.options:ExportOptions", {"engine": "builds engines after the export (`irevnet build`)",
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
    "memory": ("irevnet.training.options:MemoryOptions", {"json": "an output of the command"}),
    "demo": ("irevnet.demo:DemoOptions", {}),
    "info": (None, {"checkpoint": "reads a file, no options", "image_size": "passed to load_checkpoint",
                    "json": "an output of the command"}),
    "presets": (None, {}),
    "triton": ("irevnet.serving.repository:TritonOptions", {"ctx": "typer's context (which flags were given)"}),
    "serve": ("irevnet.serving.server:ServeOptions", {}),
    "serve-env": (None, {"folder": "the environment's folder, no options"}),
}
# what a CLI string spells as a list in the options (comma-separated on the command line): passed
# through the CLI's parser, as `batch_sizes=integers("--batch-sizes", batch_sizes)`
PARSED = {("bench", "batch_sizes"), ("bench", "concurrency")}
_REQUIRED = object()  # neither the parameter nor the field has a default


def _commands():
    return {info.name or info.callback.__name__.replace("_", "-"): inspect.unwrap(info.callback)
            for info in app.registered_commands}


def test_every_command_is_listed():
    assert set(_commands()) == set(COMMANDS)


def _definition(fn) -> ast.FunctionDef:
    return ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]


def _field_default(field: dataclasses.Field):
    return _REQUIRED if field.default is dataclasses.MISSING else field.default


def _default_sources(definition: ast.FunctionDef) -> dict[str, ast.expr]:
    """Each parameter's default as the source writes it."""
    args = definition.args
    positional = args.posonlyargs + args.args
    written = dict(zip([a.arg for a in positional[len(positional) - len(args.defaults):]], args.defaults, strict=True))
    return written | {a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None}


def _problems(name: str, fn, cls: type | None, cli_only: dict[str, str]) -> list[str]:
    """What is wrong with one command: a parameter no field takes, a default of its own, or an
    options object built otherwise than with `field=field` for every parameter."""
    params = inspect.signature(fn).parameters
    problems = [f"CLI-only {p} is no parameter" for p in cli_only if p not in params]
    if cls is None:
        return problems + [f"--{p} has no options class" for p in params if p not in cli_only]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    definition = _definition(fn)
    written = _default_sources(definition)
    mapped = []
    for param in params.values():
        if param.name in cli_only:
            continue
        if param.name not in fields:
            problems.append(f"`irevnet {name}` --{param.name} maps to no field of {cls.__name__}")
            continue
        mapped.append(param.name)
        field = fields[param.name]
        if field.default_factory is not dataclasses.MISSING:
            problems.append(f"{cls.__name__}.{param.name} has a default_factory: no default for the CLI to read")
            continue
        default = _REQUIRED if param.default is inspect.Parameter.empty else param.default
        if default is not _field_default(field):
            problems.append(f"`irevnet {name}` --{param.name} defaults to {_shown(default)}, {cls.__name__} to "
                            f"{_shown(_field_default(field))}")
        source = written.get(param.name)
        if source is not None and ast.unparse(source) != f"{cls.__name__}.{param.name}":
            problems.append(f"`irevnet {name}` --{param.name} writes its default as {ast.unparse(source)}, not "
                            f"{cls.__name__}.{param.name}")
    return problems + _call_problems(name, definition, cls, mapped, set(params))


def _shown(default) -> str:
    return "nothing (required)" if default is _REQUIRED else repr(default)


def _call_problems(name: str, definition: ast.FunctionDef, cls: type, mapped: list[str], params: set[str]) -> list[str]:
    """The command's call of `cls`: a keyword for every mapped parameter, passing its own variable."""
    calls = [node for node in ast.walk(definition)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == cls.__name__]
    if len(calls) != 1:
        return [f"`irevnet {name}` calls {cls.__name__} {len(calls)} times, not once"]
    call = calls[0]
    problems = [f"`irevnet {name}` passes {cls.__name__} a positional argument" for _ in call.args]
    keywords = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            problems.append(f"`irevnet {name}` passes {cls.__name__} a dict (**{ast.unparse(keyword.value)})")
        else:
            keywords[keyword.arg] = keyword.value
    for param in mapped:
        value = keywords.get(param)
        if value is None:
            problems.append(f"`irevnet {name}` passes {cls.__name__} no {param}=")
        elif (name, param) in PARSED:
            if not (isinstance(value, ast.Call) and any(isinstance(a, ast.Name) and a.id == param for a in value.args)):
                problems.append(f"`irevnet {name}` passes {param}={ast.unparse(value)}, not a parse of {param}")
        elif not (isinstance(value, ast.Name) and value.id == param):
            problems.append(f"`irevnet {name}` passes {param}={ast.unparse(value)}, not {param}={param}")
    for keyword, value in keywords.items():  # the other keywords: fields the CLI works out (triton's inherit)
        if keyword not in mapped and isinstance(value, ast.Name) and value.id in params:
            problems.append(f"`irevnet {name}` passes its parameter {value.id} as {keyword}=")
    return problems


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_parameter_is_an_options_field_with_its_default_passed_by_name(name):
    target, cli_only = COMMANDS[name]
    cls = None
    if target is not None:
        module, cls_name = target.split(":")
        cls = getattr(importlib.import_module(module), cls_name)
    assert _problems(name, _commands()[name], cls, cli_only) == []


def test_the_options_classes_are_where_they_were_too():
    """Moved to torch-free modules for the CLI, and imported where they were, as users import them."""
    from irevnet.export import bundle
    from irevnet.export import options as export_options
    from irevnet.training import memory
    from irevnet.training import options as training_options

    assert bundle.ExportOptions is export_options.ExportOptions
    assert memory.MemoryOptions is training_options.MemoryOptions


def test_the_check_sees_a_copied_default_an_unmapped_parameter_and_a_dict():
    """The test above can fail: a default written again (and one that drifted), a parameter no field
    takes, and options built from a dict."""
    from irevnet.runtime.verify import VerifyOptions

    def verify(bundles: list[str], samples: int = 16, server_timeout_s: float = 60.0, strictness: int = 3,
               plot: str | None = VerifyOptions.plot) -> None:
        VerifyOptions(**locals())

    assert _problems("verify", verify, VerifyOptions, {}) == [
        "`irevnet verify` --samples defaults to 16, VerifyOptions to 8",
        "`irevnet verify` --samples writes its default as 16, not VerifyOptions.samples",
        "`irevnet verify` --server_timeout_s defaults to 60.0, VerifyOptions to 60.0",
        "`irevnet verify` --server_timeout_s writes its default as 60.0, not VerifyOptions.server_timeout_s",
        "`irevnet verify` --strictness maps to no field of VerifyOptions",
        "`irevnet verify` passes VerifyOptions a dict (**locals())",
        "`irevnet verify` passes VerifyOptions no bundles=",
        "`irevnet verify` passes VerifyOptions no samples=",
        "`irevnet verify` passes VerifyOptions no server_timeout_s=",
        "`irevnet verify` passes VerifyOptions no plot=",
    ]


def test_the_check_sees_a_wrong_variable_and_a_factory():
    """... and a keyword that passes another variable than its own, and a field whose default no
    class attribute holds."""
    from irevnet.runtime.bench import BenchOptions
    from irevnet.runtime.verify import VerifyOptions

    def verify(bundles: list[str], plot: str | None = VerifyOptions.plot,
               checkpoint: str | None = VerifyOptions.checkpoint) -> None:
        VerifyOptions(bundles=bundles, plot=checkpoint, checkpoint=checkpoint)

    assert _problems("verify", verify, VerifyOptions, {}) == [
        "`irevnet verify` passes plot=checkpoint, not plot=plot"]

    def bench(bundles: list[str], batch_sizes: str | None = BenchOptions.batch_sizes) -> None:
        BenchOptions(bundles=bundles, batch_sizes=[1, 8])

    assert _problems("bench", bench, BenchOptions, {}) == [
        "`irevnet bench` passes batch_sizes=[1, 8], not a parse of batch_sizes"]

    @dataclasses.dataclass(frozen=True)
    class Listed:
        names: list[str] = dataclasses.field(default_factory=list)

    def listed(names: list[str] | None = None) -> None:
        Listed(names=names)

    assert _problems("listed", listed, Listed, {}) == [
        "Listed.names has a default_factory: no default for the CLI to read"]
