"""CliRunner tests: each command's happy path and a bad input of each (one line, exit code 2)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from irevnet import __version__
from irevnet.checkpoint import save_checkpoint
from irevnet.cli import app
from tests.conftest import small_model

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
