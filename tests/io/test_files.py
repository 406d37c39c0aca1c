"""Outputs never destroy what is not ours, and a replaced folder is never absent."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from irevnet.contract import MANIFEST, Precision
from irevnet.errors import IRevNetError
from irevnet.io import files


def _owned(path):
    return (path / "ours.txt").is_file()


def _make(path, text):
    path.mkdir(parents=True, exist_ok=True)
    (path / "ours.txt").write_text(text)
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_replacement_is_one_exchange_and_the_path_is_never_absent(tmp_path, monkeypatch):
    out = _make(tmp_path / "out", "old")
    seen = []
    real = files._exchange

    def spy(a, b):
        ok = real(a, b)
        seen.append((ok, (b / "ours.txt").read_text()))  # right after the swap: the new folder is in place
        return ok

    monkeypatch.setattr(files, "_exchange", spy)
    with files.atomic_directory(out, owned=_owned, what="test") as tmp:
        (tmp / "ours.txt").write_text("new")
        assert (out / "ours.txt").read_text() == "old", "the old folder stays until the new one is complete"
    assert seen == [(True, "new")], "Linux renameat2(RENAME_EXCHANGE): one atomic step"
    assert (out / "ours.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "the old folder is removed afterwards"


def test_without_exchange_a_crash_between_renames_is_recovered_by_the_next_write(tmp_path, monkeypatch):
    out = _make(tmp_path / "out", "old")
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real_replace = os.replace

    def crash_on_second_rename(src, dst):
        if str(src).endswith(".tmp"):
            raise KeyboardInterrupt  # the process dies after moving the old folder aside
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt), files.atomic_directory(out, owned=_owned, what="test") as tmp:
        (tmp / "ours.txt").write_text("new")
    monkeypatch.setattr(files.os, "replace", real_replace)
    (old,) = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
    assert not out.exists() and (old / "ours.txt").read_text() == "old"
    # as if the writer had been killed: its pid is dead now
    dead = tmp_path / old.name.replace(f".{os.getpid()}.", f".{_dead_pid()}.")
    old.rename(dead)
    (tmp_path / f".out.{_dead_pid()}.abcdefgh.tmp").mkdir()  # a dead writer's half-written folder

    with pytest.raises(RuntimeError), files.atomic_directory(out, owned=_owned, what="test"):
        assert (out / "ours.txt").read_text() == "old", "the next write first puts the old folder back"
        raise RuntimeError("this write fails too")
    assert (out / "ours.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "dead writers' temporaries are gone"


def test_live_writers_temporaries_are_left_alone(tmp_path):
    live = tmp_path / f".out.{os.getppid()}.abcdefgh.tmp"
    live.mkdir()
    with files.atomic_directory(tmp_path / "out", owned=_owned, what="test") as tmp:
        (tmp / "ours.txt").write_text("new")
    assert live.is_dir(), "another running process's folder is not ours to delete"


def test_a_folder_that_is_not_ours_is_refused_before_the_block_runs(tmp_path):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    ran = []
    with pytest.raises(IRevNetError, match="is a folder that is not an irevnet test"), \
            files.atomic_directory(mine, owned=_owned, what="test"):
        ran.append(True)
    assert not ran and (mine / "notes.txt").read_text() == "keep"


def test_sigterm_during_export_exits_143_in_one_line_and_leaves_the_old_bundle(tmp_path, trained_tiny, bundles):
    """SIGTERM is handled like Ctrl-C: the temporary bundle is removed, the previous one stays."""
    out = shutil.copytree(bundles[Precision.fp32], tmp_path / "bundle")  # an export of this checkpoint
    args = [sys.executable, "-m", "irevnet", "export", "-c", str(trained_tiny / "best.pt"), "-o", str(out), "--max-batch", "2",
            "--no-debug"]
    before = (out / MANIFEST).read_bytes()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):  # the export has started writing
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    expected = "error: terminated (SIGTERM); temporary files removed, files already written are complete"
    assert stderr.strip().splitlines() == [expected], stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"], "no temporary folder left"
    assert (out / MANIFEST).read_bytes() == before


def test_outputs_follow_links_keep_modes_and_write_into_pipes(tmp_path):
    """--json and every other single-file output: a link stays a link (its target is written), a
    replaced file keeps its permissions, and a FIFO or device (`--json /dev/stdout`) is written
    into, never replaced by a regular file."""
    import stat
    import threading

    from irevnet.io.files import write_json

    private = tmp_path / "private.json"
    private.write_text("{}")
    private.chmod(0o600)
    write_json(private, {"a": 1})
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and json.loads(private.read_text()) == {"a": 1}

    link = tmp_path / "link.json"
    link.symlink_to(private)
    write_json(link, {"b": 2})
    assert link.is_symlink() and json.loads(private.read_text()) == {"b": 2}

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    write_json(fifo, {"c": 3})
    reader.join(timeout=30)
    assert json.loads(received[0]) == {"c": 3} and stat.S_ISFIFO(fifo.stat().st_mode)

    stdout_link = tmp_path / "stdout"
    stdout_link.symlink_to(fifo)  # as /dev/stdout -> /proc/self/fd/1 -> a pipe
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    write_json(stdout_link, {"d": 4})
    reader.join(timeout=30)
    assert json.loads(received[1]) == {"d": 4} and stdout_link.is_symlink() and stat.S_ISFIFO(fifo.stat().st_mode)


def test_an_exact_error_is_drawn_at_zero_on_the_depth_plot(tmp_path, monkeypatch):
    """A mixed bundle's inverse is exact at some blocks (error 0): the plot keeps those points, on
    a linear stretch below the smallest error measured, instead of dropping them from a log axis."""
    import matplotlib.axes

    from irevnet.io.images import plot_error_vs_depth

    drawn = []
    plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda ax, x, y, **kw: drawn.append((ax, list(x), list(y)))
                        or plot(ax, x, y, **kw))
    panels = {"one direction": {"exact at some blocks": [0.0, 3e-8, 0.0, None, 2e-7], "never exact": [1e-7] * 5}}
    path = plot_error_vs_depth(panels, tmp_path / "blocks.png", "error per block")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ax, xs, ys), _ = drawn
    assert (xs, ys) == ([0, 1, 2, 4], [0.0, 3e-8, 0.0, 2e-7]), "every measured block, the exact ones at 0"
    assert ax.get_yscale() == "symlog" and ax.get_ylim()[0] == 0
    assert ax.yaxis.get_transform().linthresh == pytest.approx(3e-9), "linear below a tenth of the smallest error"
