"""CliRunner tests: each command's happy path and a bad input of each (one line, exit code 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from irevnet import __version__
from irevnet.cli import app
from irevnet.contract import FORWARD, MANIFEST, Precision, graph_file
from irevnet.io.checkpoint import save_checkpoint
from tests.conftest import edit_manifest, small_model

runner = CliRunner()


def _one_line_error(result, code=2):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_version_and_presets():
    assert runner.invoke(app, ["--version"]).output.strip() == f"irevnet {__version__}"
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0 and "irevnet-301" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--recipe", "foo"], "Invalid value for '--recipe'"),
        (["export", "-o", "x"], "Missing option '--checkpoint'"),
        (["bench", "b", "--bogus"], "No such option: --bogus"),
        (["nosuch"], "No such command 'nosuch'"),
    ],
)
def test_usage_errors_of_the_installed_command_are_one_line(args, message):
    """The console script (not CliRunner, which bypasses `main`) prints click's usage errors as one
    line with a pointer to --help, instead of typer's framed panel."""
    proc = subprocess.run([sys.executable, "-m", "irevnet", *args], check=False, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}") and "--help`" in lines[0], proc.stderr


def test_installed_command_exits_0_on_version():
    """`main` runs click outside standalone mode, so typer.Exit codes pass through it."""
    version = subprocess.run([sys.executable, "-m", "irevnet", "--version"], check=False, capture_output=True,
                             text=True, timeout=60)
    assert (version.returncode, version.stdout.strip()) == (0, f"irevnet {__version__}")

def test_commands_name_the_extra_a_runtime_only_install_lacks(tmp_path):
    """`pip install irevnet` (no extras) is the torch-free runtime; training and export then say
    which extra to install instead of an ImportError traceback."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # what `import torch` meets where PyTorch is not installed
        sys.argv = ["irevnet", "export", "-c", "model.pt", "-o", "bundle"]
        from irevnet.cli import main
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: `irevnet export` needs torch, which is not installed; pip install 'irevnet[torch]'"

def test_info_describes_a_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", small_model("irevnet-tiny"))
    result = runner.invoke(app, ["info", "-c", str(path), "--json", str(tmp_path / "info.json")])
    assert result.exit_code == 0, result.output
    assert "injective" in result.output and "151362" in result.output
    data = json.loads((tmp_path / "info.json").read_text())
    assert data["z shape"] == [256, 4, 4] and data["parameters"] == 151362


def test_info_on_a_corrupt_file_is_one_line(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x80\x02not really")
    line = _one_line_error(runner.invoke(app, ["info", "-c", str(path)]))
    assert "bad.pt" in line
    line = _one_line_error(runner.invoke(app, ["info", "-c", str(tmp_path)]))
    assert "is a folder; give the checkpoint file in it" in line


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_cause_behind_a_one_line_error(tmp_path, how, monkeypatch):
    """`--debug` or IREVNET_DEBUG=1 prints the traceback of the one-line error and of the exception
    it replaced (hidden by `from None`), so a bug in a reader is not mistaken for a corrupt file."""
    path = tmp_path / "bad.pt"
    path.write_bytes(b"garbage")
    monkeypatch.delenv("IREVNET_DEBUG", raising=False)
    if how == "environment":
        monkeypatch.setenv("IREVNET_DEBUG", "1")
    args = ["--debug", "info", "-c", str(path)] if how == "flag" else ["info", "-c", str(path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.output.count("Traceback") == 2, result.output  # the unpickler's error, then the one-line one
    assert "safe_unpickle.py" in result.output and result.output.strip().splitlines()[-1].startswith("error: ")
    if how == "flag":  # the flag holds for its own invocation only
        assert "Traceback" not in runner.invoke(app, ["info", "-c", str(path)]).output


def test_train_evaluate_invert_happy_paths(tmp_path, trained_tiny):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "-d", "digits", "-o", str(out), "--epochs", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (out / "last.pt").is_file() and "best test top-1" in result.output

    result = runner.invoke(app, ["evaluate", "-c", str(trained_tiny / "best.pt"), "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e.json").read_text())["top1"] >= 90.0

    png = tmp_path / "inv.png"
    result = runner.invoke(app, ["invert", "-c", str(trained_tiny / "best.pt"), "-o", str(png), "--samples", "4"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_evaluate_invert_bad_inputs(tmp_path, trained_tiny):
    line = _one_line_error(runner.invoke(app, ["train", "-d", "mnist", "-o", str(tmp_path / "r")]))
    assert "unknown dataset 'mnist'" in line
    line = _one_line_error(runner.invoke(app, ["evaluate", "-c", str(trained_tiny / "best.pt"), "-d", "cifar10:/nowhere"]))
    assert "cifar10" in line
    line = _one_line_error(runner.invoke(app, ["invert", "-c", str(trained_tiny / "best.pt"), "--samples", "0"]))
    assert "--samples" in line
    line = _one_line_error(runner.invoke(app, ["train", "-o", str(tmp_path / "r"), "--epochs", "0"]))
    assert "--epochs must be at least 1, got 0" in line



def test_train_resume_takes_the_run_options_and_the_flags_given(tmp_path):
    out = str(tmp_path / "r")
    assert runner.invoke(app, ["train", "-d", "synthetic", "-o", out, "--epochs", "1", "--lr", "0.05", "-q"]).exit_code == 0
    result = runner.invoke(app, ["train", "-o", out, "--resume", "--epochs", "2", "-q"])
    assert result.exit_code == 0, result.output
    options = json.loads((tmp_path / "r" / "run.json").read_text())["options"]
    assert (options["dataset"], options["lr"], options["epochs"]) == ("synthetic", 0.05, 2)
    line = _one_line_error(runner.invoke(app, ["train", "-o", out, "--resume", "-d", "digits", "--epochs", "3"]))
    assert "trains dataset 'synthetic', not 'digits'" in line

def test_export_verify_bench_happy_paths(tmp_path, trained_tiny, bundles):
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["export", "-c", str(trained_tiny / "best.pt"), "-o", str(out), "--max-batch", "8",
                                 "--no-debug", "--precision", Precision.fp16])
    assert result.exit_code == 0, result.output
    assert (out / MANIFEST).is_file() and "bundle written to" in result.output

    result = runner.invoke(app, ["verify", str(bundles[Precision.fp32]), "--json", str(tmp_path / "v.json"), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert "verify passed" in result.output and json.loads((tmp_path / "v.json").read_text())["passed"]
    assert "onnxruntime[cpu]" in result.output, "backend names are printed, not eaten as markup"

    result = runner.invoke(app, ["bench", str(bundles[Precision.fp32]), "--batch-sizes", "1,2", "--iterations", "3",
                                 "--warmup-s", "0", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "b.json").read_text())["results"]) == 4


def test_verify_failure_exits_1_with_the_table(tmp_path, bundles):
    strict = shutil.copytree(bundles[Precision.fp16], tmp_path / "strict")
    edit_manifest(strict, lambda m: m["tolerances"].update(round_trip=1e-9))
    result = runner.invoke(app, ["verify", str(strict), "--no-blocks"])
    assert result.exit_code == 1
    assert "FAIL" in result.output and result.output.rstrip().endswith("error: verify failed: see the FAIL rows above")


def test_export_verify_bench_bad_inputs(tmp_path, trained_tiny, bundles):
    line = _one_line_error(runner.invoke(app, ["export", "-c", str(tmp_path / "none.pt"), "-o", str(tmp_path / "b")]))
    assert "checkpoint not found" in line
    assert not (tmp_path / "b").exists()
    line = _one_line_error(runner.invoke(app, ["verify", str(tmp_path)]))
    assert "manifest.json is missing" in line
    line = _one_line_error(runner.invoke(app, ["bench", str(bundles[Precision.fp32]), "--batch-sizes", "1,x"]))
    assert "--batch-sizes" in line
    line = _one_line_error(runner.invoke(app, ["bench", str(bundles[Precision.fp32]), "-b", "tflite"]))
    assert "unknown backend 'tflite'" in line

    moved = shutil.copytree(bundles[Precision.fp32], tmp_path / "moved")  # as on another machine
    edit_manifest(moved, lambda m: m["checkpoint"].update(path=str(tmp_path / "elsewhere" / "best.pt")))
    line = _one_line_error(runner.invoke(app, ["bench", str(moved), "-b", "torch", "--iterations", "1"]))
    assert "which is not there" in line and "pass --checkpoint PATH" in line
    result = runner.invoke(app, ["bench", str(moved), "-b", "torch", "--iterations", "1", "--warmup-s", "0",
                                 "--batch-sizes", "1", "-c", str(trained_tiny / "best.pt")])
    assert result.exit_code == 0, result.output



def test_outputs_never_replace_what_this_tool_did_not_write(tmp_path, trained_tiny):
    """An export replaces its --out folder whole (atomically), so a folder or file that is not an
    earlier bundle must be refused before any work, and kept byte for byte."""
    ckpt = str(trained_tiny / "best.pt")
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("a week of work")
    line = _one_line_error(runner.invoke(app, ["export", "-c", ckpt, "-o", str(project), "--no-debug"]))
    assert "is not an irevnet bundle" in line and (project / "notes.txt").read_text() == "a week of work"

    # a web app's folder has a manifest.json too: it is still not a bundle, and nothing is deleted
    webapp = tmp_path / "webapp"
    (webapp / "src").mkdir(parents=True)
    files = {MANIFEST: '{"name": "app", "schema_version": 1}', "index.html": "<html></html>", "src/app.js": "x"}
    for name, text in files.items():
        (webapp / name).write_text(text)
    line = _one_line_error(runner.invoke(app, ["export", "-c", ckpt, "-o", str(webapp), "--no-debug"]))
    assert "is not an irevnet bundle" in line
    assert {p.relative_to(webapp).as_posix(): p.read_text() for p in webapp.rglob("*") if p.is_file()} == files
    # a bundle with a user's file added to it is not replaced either
    bundle = tmp_path / "bundle"
    assert runner.invoke(app, ["export", "-c", ckpt, "-o", str(bundle), "--no-debug", "--max-batch", "2"]).exit_code == 0
    (bundle / "my_notes.txt").write_text("mine")
    line = _one_line_error(runner.invoke(app, ["export", "-c", ckpt, "-o", str(bundle), "--no-debug", "--max-batch", "2"]))
    assert "is not an irevnet bundle" in line and (bundle / "my_notes.txt").read_text() == "mine"

    target = tmp_path / "model.onnx"
    target.write_bytes(b"keep")
    line = _one_line_error(runner.invoke(app, ["export", "-c", ckpt, "-o", str(target), "--no-debug"]))
    assert "is not a folder" in line and target.read_bytes() == b"keep"
    line = _one_line_error(runner.invoke(app, ["train", "-o", str(target), "--epochs", "1"]))
    assert "is a file" in line and target.read_bytes() == b"keep"


def test_unwritable_outputs_are_one_line_errors(tmp_path, trained_tiny, bundles):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is needed")
    line = _one_line_error(runner.invoke(app, ["verify", str(bundles[Precision.fp32]), "--no-blocks",
                                               "--json", str(blocker / "v.json")]))
    assert f"cannot write {blocker / 'v.json'}" in line
    line = _one_line_error(runner.invoke(app, ["verify", str(bundles[Precision.fp32]), "--no-blocks", "--json", str(tmp_path)]))
    assert "is a folder; give a file path" in line
    line = _one_line_error(runner.invoke(app, ["export", "-c", str(trained_tiny / "best.pt"), "--no-debug",
                                               "-o", str(blocker / "bundle")]))
    assert f"cannot write {blocker / 'bundle'}" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "{b}", "--threads", "-3", "--iterations", "1"], "--threads must be at least 1, got -3"),
        (["verify", "{b}", "--threads", "0"], "--threads must be at least 1, got 0"),
        (["bench", "{b}", "--duration-s", "0"], "--duration-s must be positive"),  # was a ZeroDivisionError
        (["bench", "{b}", "--warmup-s", "-1", "--iterations", "1"], "--warmup-s must be 0 or more"),
        (["train", "-d", "synthetic", "--workers", "-1", "-o", "{tmp}/r"], "--workers must be 0"),  # was a ValueError
        (["memory", "-m", "irevnet-tiny", "--batch-size", "0"], "--batch-size must be at least 1"),  # ran batch 0
    ],
    ids=["threads-negative", "threads-zero", "duration-zero", "warmup-negative", "workers-negative", "memory-batch-0"],
)
def test_out_of_range_numbers_are_one_line_errors(tmp_path, bundles, args, message):
    args = [a.format(b=bundles[Precision.fp32], tmp=tmp_path) for a in args]
    assert message in _one_line_error(runner.invoke(app, args))


@pytest.mark.parametrize("command", ["verify", "bench", "evaluate"])
def test_an_option_the_backend_does_not_take_is_one_line(bundles, command):
    """`-b openvino --provider cuda` ran OpenVINO and ignored the provider: the option and the
    backend are named, exit 2, before anything runs."""
    line = _one_line_error(runner.invoke(app, [command, str(bundles[Precision.fp32]), "-b", "openvino",
                                               "--provider", "cuda"]))
    assert line == "error: -b openvino does not take --provider (an option of -b onnxruntime); leave it out"

def test_demo_fast_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--fast", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("run/best.pt", "bundle-fp32/manifest.json", "inversion.png", "error_vs_depth.png"):
        assert (out / name).is_file(), name
    assert "summary" in result.output and "test top-1" in result.output
    # a rerun replaces the previous demo's outputs instead of refusing them: the checks it makes
    # before any work take the folders this run left for its own (the replacement itself is
    # atomic_directory's, tested in tests/io/test_files.py)
    from irevnet.io.files import check_replaceable
    from irevnet.runtime.bundle import is_bundle_folder
    from irevnet.training.records import is_run_folder

    check_replaceable(out / "bundle-fp32", is_bundle_folder, "bundle")
    check_replaceable(out / "run", is_run_folder, "run folder")


def test_demo_refuses_a_file_as_out(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    line = _one_line_error(runner.invoke(app, ["demo", "--fast", "--out", str(target)]))
    assert "is a file" in line and target.read_text() == "keep me"


def test_memory_happy_path_and_bad_preset(tmp_path):
    result = runner.invoke(app, ["memory", "-m", "irevnet-tiny", "--batch-size", "8", "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "m.json").read_text())["results"]
    std = row["standard"]
    # zero_grad() frees the gradients and backward allocates them again, so a step's resident
    # growth holds at least the gradients (151,362 parameters: 0.6 MB); less would mean the
    # measurement missed memory the step really allocated
    assert std["step_bytes"] >= std["gradient_bytes"] == 151_362 * 4
    assert row["memory_efficient"]["memory_efficient"] is True
    line = _one_line_error(runner.invoke(app, ["memory", "-m", "resnet50"]))
    assert "unknown preset 'resnet50'" in line


def test_export_with_engine_keeps_the_onnx_bundle_without_tensorrt(tmp_path, trained_tiny):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here; this checks the machines without it")
    out = tmp_path / "b"
    result = runner.invoke(app, ["export", "-c", str(trained_tiny / "best.pt"), "-o", str(out), "--no-debug",
                                 "--max-batch", "2", "--engine"])
    assert result.exit_code == 2
    assert result.output.rstrip().splitlines()[-1].startswith("error: TensorRT is not installed")
    assert (out / graph_file(FORWARD)).is_file() and (out / MANIFEST).is_file(), "the ONNX export still happened"


@pytest.mark.parametrize("workers", [0, 1])
def test_a_decompression_bomb_in_an_image_folder_is_one_line(tmp_path, workers):
    """Counted as unreadable, named in one warning line, and the run goes on; with --strict it
    is the one-line error (also from a decoding thread)."""
    import irevnet
    from tests.io.test_data import _image_tree, _png_header

    _image_tree(tmp_path / "data")
    (tmp_path / "data" / "val" / "cat" / "bomb.png").write_bytes(_png_header(50_000, 50_000))
    ckpt = save_checkpoint(tmp_path / "m.pt", irevnet.create_model("irevnet-cifar", blocks=(1, 1, 1), num_classes=2))
    args = ["evaluate", "-c", str(ckpt), "-d", f"imagefolder:{tmp_path / 'data'}", "--workers", str(workers), "-q"]
    line = _one_line_error(runner.invoke(app, [*args, "--strict"]))
    assert "bomb.png: Image size (2500000000 pixels) exceeds limit" in line and "a decompression bomb" in line
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: unreadable")]
    assert len(warnings) == 1 and "bomb.png: Image size (2500000000 pixels) exceeds limit" in warnings[0]


@pytest.mark.parametrize("command", ["info", "evaluate", "export", "invert", "train --resume", "verify"])
def test_a_checkpoint_that_would_write_a_file_is_refused_by_every_command(tmp_path, monkeypatch, bundles, command):
    """The legacy file of issue #12 (BUILD onto an allowlisted function, then a module record):
    through every command that loads a checkpoint, one line, exit 2, no file written."""
    import hashlib

    from tests.io.test_safe_unpickle import patching_file

    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.t7"
    evil.write_bytes(patching_file(str(tmp_path / "written")))
    if command == "train --resume":
        run = tmp_path / "run"
        run.mkdir()
        shutil.copy(evil, run / "last.pt")
        (run / "run.json").write_text(json.dumps({"command": "irevnet train", "options": {"dataset": "digits"}}))
        args = ["train", "-o", str(run), "--resume"]
    elif command == "verify":
        bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "bundle")
        digest = hashlib.sha256(evil.read_bytes()).hexdigest()
        edit_manifest(bundle, lambda m: m.update(checkpoint={"path": str(evil), "sha256": digest}))
        args = ["verify", str(bundle)]
    else:
        args = [command, "-c", str(evil)] + (["-o", str(tmp_path / "out")] if command == "export" else [])
    line = _one_line_error(runner.invoke(app, args))
    assert "refused to load" in line
    assert not list(tmp_path.rglob("*.patch")), "a file chose a path and irevnet wrote it"


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "-c", "{ckpt}", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["evaluate", "-c", "{ckpt}", "--batch-size", "-5"], "--batch-size must be at least 1, got -5"),
        (["evaluate", "-c", "{ckpt}", "--workers", "-1"], "--workers must be 0 or more, got -1"),
        (["train", "-o", "{tmp}/r", "--seed", str(10**20)], f"--seed must be at most {2**32 - 1}"),
        (["train", "-o", "{tmp}/r", "--lr", "nan"], "--lr must be a finite number, got nan"),
        (["train", "-o", "{tmp}/r", "--lr", "inf"], "--lr must be a finite number, got inf"),
        (["train", "-o", "{tmp}/r", "--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
        (["train", "-o", ""], "--out is empty; give a path"),
        (["verify", "{b}", "--threads", "99999999999"], "--threads must be at most 1024"),
        (["export", "-c", "{ckpt}", "-o", "{tmp}/e", "--max-batch", str(10**20)], "--max-batch must be at most 65536"),
        (["bench", "{b}", "--duration-s", "inf"], "--duration-s must be a finite number, got inf"),
        (["bench", "{b}", "--warmup-s", "inf", "--iterations", "1"], "--warmup-s must be a finite number, got inf"),
        (["memory", "-m", "irevnet-tiny", "--image-size", "0"], "--image-size must be at least 1, got 0"),
        (["memory", "-m", "irevnet-tiny", "--image-size", "15"], "not divisible by the total downsampling 4"),
        (["train", "-d", "synthetic", "-o", "{tmp}/big", "--batch-size", "1000", "--epochs", "1"],
         "--batch-size 1000 is larger than the 512 training images of synthetic"),
    ],
)
def test_values_that_slipped_through_are_one_line_errors(tmp_path, trained_tiny, bundles, args, message):
    """Each was a traceback, a hang or a silent wrong result before the options validated themselves."""
    args = [a.format(tmp=tmp_path, ckpt=trained_tiny / "best.pt", b=bundles[Precision.fp32]) for a in args]
    line = _one_line_error(runner.invoke(app, args))
    assert message in line, line
    # refused before any work: no run folder, checkpoint or bundle was started
    assert not any(p.name in ("last.pt", "best.pt", MANIFEST) for p in tmp_path.rglob("*")), sorted(tmp_path.rglob("*"))


def test_paths_are_printed_as_text_not_markup(tmp_path, trained_tiny):
    out = tmp_path / "run [/] [bold]x"
    result = runner.invoke(app, ["invert", "-c", str(trained_tiny / "best.pt"), "-o", str(out / "grid.png")])
    assert result.exit_code == 0, result.output
    assert f"grid {out / 'grid.png'}" in result.output.replace("\n", "")


def test_training_that_diverges_stops_at_once_without_nan_checkpoints(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "-d", "synthetic", "-o", str(out), "--lr", "1e30", "--epochs", "3", "-q"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip() and not line[:4].isdigit()]
    assert lines == [lines[-1]] and lines[-1].startswith("error: training diverged in epoch 1: the loss is"), lines
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists(), "no NaN weights written"
    assert not (out / "metrics.jsonl").exists()


def test_resume_with_fewer_epochs_than_done_rewrites_nothing(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", "-d", "synthetic", "-o", str(out), "--epochs", "2", "-q"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = _one_line_error(runner.invoke(app, ["train", "-o", str(out), "--resume", "--epochs", "1"]))
    assert "has trained 2 epochs already; --epochs 1 leaves nothing to resume" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "run.json and the history untouched"


def test_a_system_error_names_the_file_and_the_fix(tmp_path, trained_tiny):
    """An OSError is one line with the file and what to do about that errno, not "check the path,
    its permissions and free space" for every one of them: a full disk (/dev/full) and a file size
    limit (RLIMIT_FSIZE of 200 bytes, in a fresh process)."""
    import resource

    ckpt = str(trained_tiny / "best.pt")
    result = runner.invoke(app, ["info", "-c", ckpt, "--json", "/dev/full"])  # full only when written: after the table
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == "error: /dev/full: No space left on device; free space on its device"

    out = tmp_path / "info.json"
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
    proc = subprocess.run([sys.executable, "-m", "irevnet", "info", "-c", ckpt, "--json", str(out)], check=False,
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("File too large; the file size limit (ulimit -f) is too small for it")
    assert not out.exists(), "the atomic write left nothing behind"


def test_every_help_reads_in_80_columns():
    """Each command's --help fits an 80-column terminal with its help texts at least 40 columns
    wide (rich's panels squeezed them into 17 beside the long option names)."""
    import typer.main

    commands = sorted(typer.main.get_command(app).commands)
    assert len(commands) >= 12, commands
    narrowest = {}
    for name in commands:
        result = CliRunner(env={"COLUMNS": "80", "TERM": "dumb"}).invoke(app, [name, "--help"])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert max(len(line) for line in lines) <= 80, (name, max(lines, key=len))
        options = lines[next(i for i, line in enumerate(lines) if line.startswith("Options:")):]
        # the help column: where an option's help text continues on the lines under it
        indents = [len(line) - len(line.lstrip()) for line in options[1:] if line.startswith(" " * 8) and line.strip()]
        narrowest[name] = 80 - max(indents, default=0)
    assert min(narrowest.values()) >= 40, narrowest


def test_a_sigterm_that_a_library_turns_into_its_own_error_still_exits_143(bundles, monkeypatch):
    """ONNX Runtime's import turns any exception raised inside it into ImportError('import numpy
    failed'), the Terminated of a SIGTERM included: a SIGTERM during an export's first `import
    onnxruntime` exited 2 with "onnxruntime is not installed". Whatever a library makes of the
    termination, the command exits 143 with the termination's line."""
    import os
    import signal
    import time

    from irevnet.runtime import verify as verify_module

    def a_library_that_converts(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(2000):  # the handler raises Terminated between these bytecodes
                time.sleep(0.001)
        except BaseException:  # noqa: BLE001 - as the library does
            raise ImportError("import numpy failed") from None
        raise AssertionError("the SIGTERM was not delivered")

    monkeypatch.setattr(verify_module, "verify", a_library_that_converts)
    result = runner.invoke(app, ["verify", str(bundles[Precision.fp32]), "--no-blocks"])
    assert result.exit_code == 143, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: terminated (SIGTERM)"), result.output
