"""Atomic writes and hashing. Nothing already on disk is lost when a write fails halfway."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import IRevNetError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` and renames it over `path` once the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary file is removed and `path` keeps
    its previous contents.
    """
    path = Path(path)
    check_writable(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(path: str | os.PathLike) -> None:
    """Raises a one-line error when `path` cannot become a file: it is a folder, or the nearest
    existing folder above it is a file or read-only. Commands call it before their work."""
    path = Path(path)
    if path.is_dir():
        raise IRevNetError(f"{path} is a folder; give a file path")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise IRevNetError(f"cannot write {path}: {parent} is not a writable folder; check the path and its permissions")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, marker: str) -> Iterator[Path]:
    """Yields an empty temporary folder beside `path`; on success it replaces `path` whole.

    A previous folder at `path` is moved aside and deleted only after the new one is in place, so
    a failure at any point leaves either the old folder or the new one, never a mix.

    Args:
        marker: a file that every folder this writer makes contains (e.g. "manifest.json"). An
            existing `path` is replaced only when it is empty or holds `marker`: `--out .` or a
            file given by mistake is refused before any work, never deleted.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise IRevNetError(f"{path} exists and is not a folder; choose a new output path")
        if not (path / marker).is_file() and any(path.iterdir()):
            raise IRevNetError(
                f"{path} is a folder without {marker}, so not an earlier output of this command; writing "
                f"replaces the folder whole, so choose a new path or empty it"
            )
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old / path.name, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Reports a failure to create `path`'s folder or its temporary sibling under `path` itself."""
    try:
        yield
    except OSError as e:
        raise IRevNetError(f"cannot write {path}: {e.strerror or e}; check the path and its permissions") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Writes `data` as indented JSON, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
