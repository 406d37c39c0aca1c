"""The package's shape: rooms without import cycles, a torch-free runtime, a thin CLI."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import irevnet

PACKAGE = Path(irevnet.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path], *, external: bool = False) -> set[str]:
    """Every irevnet module `name` imports, at module level or inside functions (lazy imports
    form cycles too), by statement or by a call of `__import__` or `importlib.import_module` on
    a name written out, except under `if TYPE_CHECKING:`; with `external`, the top-level names of
    the other packages it imports instead."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = _tree(path)
    found = set()
    for node in _nodes(tree):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + [node.module or ""]) if node.level else node.module
            base = base.rstrip(".")
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif _imports_by_call(node) and node.args:
            target = node.args[0]
            if isinstance(target, ast.Constant) and isinstance(target.value, str) and not target.value.startswith("."):
                found.add(target.value)
    if external:
        return {m.split(".")[0] for m in found if m and not m.startswith("irevnet")}
    return {m for m in found if m in mods and m != name}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _nodes(tree: ast.Module) -> list[ast.AST]:
    """The tree's nodes, less those under `if TYPE_CHECKING:` (imported for annotations only)."""
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for n in ast.walk(node)}
    return [node for node in ast.walk(tree) if id(node) not in skip]


def _imports_by_call(node: ast.AST) -> bool:
    """`__import__(...)`, `import_module(...)` or `importlib.import_module(...)`."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Name) and func.id in ("__import__", "import_module")) or \
        (isinstance(func, ast.Attribute) and func.attr == "import_module")


def _unnamed_imports(path: Path) -> list[int]:
    """The lines of `__import__` / `import_module` calls on a name computed at run time, which no
    scan can follow."""
    return [node.lineno for node in _nodes(_tree(path)) if _imports_by_call(node) and not (
        node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))]


def test_no_import_cycles_among_irevnets_modules():
    mods = _modules()
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on_stack.discard(w)
                component.append(w)
            on_stack.discard(v)
            if component:
                cycles.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    assert len(graph) > 30, "the scan found the package's modules"
    assert cycles == [], f"import cycles: {cycles}"


# room -> rooms it never imports (directly or lazily): the runtime runs on deployment boxes with
# numpy and ONNX Runtime, TensorRT or OpenVINO; the model is code only, no files, no training
NEVER = {
    "irevnet.runtime": ("irevnet.export", "irevnet.training", "irevnet.cli", "irevnet.demo"),
    "irevnet.model": ("irevnet.io", "irevnet.training", "irevnet.cli", "irevnet.export", "irevnet.runtime"),
    "irevnet.io": ("irevnet.training", "irevnet.cli", "irevnet.export", "irevnet.runtime"),
    "irevnet.export": ("irevnet.training.loop", "irevnet.cli"),
    "irevnet.training": ("irevnet.export", "irevnet.runtime", "irevnet.cli"),
    # whole-dataset evaluation runs on the runtime's backends, on deployment boxes too
    "irevnet.evaluation": ("irevnet.export", "irevnet.training", "irevnet.cli", "irevnet.demo", "irevnet.serving"),
}
# The runtime modules that may import torch, and why: the PyTorch backend runs the checkpoint
# (with the model it is exported from), and CUDA memory goes through torch where cuda-python is absent.
TORCH_IN_RUNTIME = {"irevnet.runtime.backends.torch_backend": ("irevnet.model", "irevnet.io.checkpoint"),
                    "irevnet.runtime.gpu": ()}
# The one module of the runtime and of evaluation that imports TensorRT (import_tensorrt, which the
# TensorRT backend and the engine builder call): one place says what to install when it is absent.
TENSORRT_IN_RUNTIME = {"irevnet.runtime.engines"}
# The modules of the runtime and of evaluation that may import a module named at run time: the
# backend registry imports its own backends' modules, by their rows.
UNNAMED_IMPORTS = {"irevnet.runtime.backends"}


def test_the_never_arrows_hold_lazy_imports_included():
    assert _broken(_modules()) == []


def _broken(mods: dict[str, Path], names: set[str] | None = None) -> list[str]:
    """The arrows that the modules `names` (default: all of `mods`) break."""
    broken = []
    for name, path in mods.items():
        if names is not None and name not in names:
            continue
        imported = _imports(name, path, mods)
        if name.startswith(("irevnet.runtime", "irevnet.evaluation")):
            if "tensorrt" in _imports(name, path, mods, external=True) and name not in TENSORRT_IN_RUNTIME:
                broken.append(f"{name} -> tensorrt")
            if name not in UNNAMED_IMPORTS:
                broken += [f"{name}:{line} imports a module named at run time" for line in _unnamed_imports(path)]
        for room, never in NEVER.items():
            if name == room or name.startswith(room + "."):
                broken += [f"{name} -> {m}" for m in imported if m.startswith(never)]
        if name.startswith("irevnet.evaluation"):  # torch only to run a checkpoint, where its target is made
            heavy = {m for m in imported if m.startswith(("irevnet.model", "irevnet.io.checkpoint", "irevnet.runtime.backends.torch"))}
            if name != "irevnet.evaluation.engine":
                broken += [f"{name} -> {m}" for m in heavy]
                if "torch" in _imports(name, path, mods, external=True):
                    broken.append(f"{name} -> torch")
        if name.startswith("irevnet.runtime"):
            allowed = TORCH_IN_RUNTIME.get(name)
            if "torch" in _imports(name, path, mods, external=True) and allowed is None:
                broken.append(f"{name} -> torch")
            model = {m for m in imported if m.startswith(("irevnet.model", "irevnet.io.checkpoint"))}
            broken += [f"{name} -> {m}" for m in model - {"irevnet.model.config"}
                       if not (allowed and m.startswith(allowed))]
    return broken


def test_the_arrow_check_sees_a_lazy_import(tmp_path):
    """The scan above can fail: an import inside a function counts."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    import torch\n    from irevnet.export import bundle\n")
    mods = {"irevnet.export.bundle": module, "irevnet.runtime.lazy": module}
    assert _imports("irevnet.runtime.lazy", module, mods) == {"irevnet.export.bundle"}
    assert _imports("irevnet.runtime.lazy", module, mods, external=True) == {"torch"}


def test_the_arrow_check_sees_imports_by_call(tmp_path):
    """`__import__` and `importlib.import_module` import as surely as a statement (bench once imported
    torch and tensorrt by `__import__`, only to print their versions); a module named at run time is
    refused, since no scan can follow it."""
    module = tmp_path / "sneaky.py"
    module.write_text(textwrap.dedent("""
        import importlib
        from importlib import import_module

        def versions():
            __import__("torch")
            importlib.import_module("tensorrt")
            import_module("irevnet.training.loop")
            for name in ("onnxruntime",):
                __import__(name)
    """))
    mods = _modules() | {"irevnet.runtime.sneaky": module}
    assert sorted(_broken(mods, {"irevnet.runtime.sneaky"})) == [
        "irevnet.runtime.sneaky -> irevnet.training.loop", "irevnet.runtime.sneaky -> tensorrt",
        "irevnet.runtime.sneaky -> torch", "irevnet.runtime.sneaky:10 imports a module named at run time"]
    # where the policy lets them, the same calls pass: torch in the PyTorch backend, TensorRT in engines.py
    allowed = tmp_path / "allowed.py"
    allowed.write_text('def f():\n    __import__("torch")\n')
    torch_backend = "irevnet.runtime.backends.torch_backend"
    assert _broken(mods | {torch_backend: allowed}, {torch_backend}) == []
    allowed.write_text('import importlib\n\ndef f():\n    importlib.import_module("tensorrt")\n')
    assert _broken(mods | {"irevnet.runtime.engines": allowed}, {"irevnet.runtime.engines"}) == []


def test_runtime_and_cli_import_neither_torch_nor_export():
    """A deployment box has numpy and ONNX Runtime, not torch: importing the runtime (and the CLI
    that verifies and benches on it) must not pull in torch or the export room, except the export's
    options (torch-free), whose fields are the defaults of `irevnet export`."""
    code = textwrap.dedent("""
        import sys
        def heavy():
            return sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "irevnet.export")))
        import irevnet.runtime, irevnet.runtime.verify, irevnet.runtime.bench, irevnet.evaluation.run
        import irevnet.evaluation.invert, irevnet.evaluation.ray_runner
        print(heavy())
        import irevnet.cli
        print(heavy())
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines() == ["[]", "['irevnet.export', 'irevnet.export.options']"], out.stdout


# What `irevnet --help` never imports: the frameworks and runtimes that a command loads when it runs.
# The CLI reads its defaults from the options classes at start-up, so their modules stay free of them.
NOT_AT_START_UP = ("torch", "onnx", "onnxruntime", "openvino", "tensorrt", "pyarrow", "ray")


def test_the_cli_starts_without_the_heavy_packages():
    code = textwrap.dedent(f"""
        import sys
        from irevnet.cli import main
        sys.argv = ["irevnet", "--help"]
        try:
            main()
        except SystemExit:
            pass
        print(sorted({{m.split(".")[0] for m in sys.modules}} & set({NOT_AT_START_UP!r})))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert "Usage: irevnet" in out.stdout and out.stdout.splitlines()[-1] == "[]", out.stdout[-2000:]


def test_cli_commands_are_a_few_lines_over_the_library():
    from irevnet.cli import app

    for info in app.registered_commands:
        fn = inspect.unwrap(info.callback)
        body = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0].body
        statements = body[1:] if isinstance(body[0], ast.Expr) else body  # after the docstring
        lines = sum(s.end_lineno - s.lineno + 1 for s in statements)
        # build options, call the library, render: the longest (bench: parse --batch-sizes, a
        # progress bar) takes 17 lines
        assert lines <= 20, f"`irevnet {fn.__name__}` has {lines} lines of body; move logic into the library"


def test_the_public_names_stay_importable():
    """What users import: the package's names (the model API loaded on first use) and the runtime's."""
    import irevnet.runtime

    assert sorted(irevnet.__all__) == ["ConfigError", "IRevNet", "IRevNetConfig", "__version__", "create_model",
                                       "get_config", "list_presets"]
    assert sorted(irevnet.runtime.__all__) == [
        "BACKENDS", "Backend", "Bundle", "Comparison", "InputError", "Invertible", "Parity", "RoundTrip", "TOLERANCES",
        "Tolerance", "compare", "open_backend", "tolerance_for"]
    for module in (irevnet, irevnet.runtime):
        assert all(getattr(module, name) is not None for name in module.__all__)
    assert irevnet.create_model("irevnet-tiny").config == irevnet.get_config("irevnet-tiny")
