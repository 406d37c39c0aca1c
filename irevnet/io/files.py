"""Atomic writes and hashing. Nothing already on disk is lost when a write fails halfway."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import IRevNetError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, replace_special: bool = False) -> Iterator[Path]:
    """Yields a temporary path and puts what was written there at `path` once the block succeeds.

    A regular file is replaced by a rename: on any exception (KeyboardInterrupt and SIGTERM
    included) the temporary file is removed and `path` keeps its previous contents, and the
    replaced file's permissions carry over. A link is followed: what it points to is written, the
    link stays. A device, FIFO or socket (`/dev/stdout`, a pipe) is written into, never replaced.
    Temporaries left by a process that was killed are removed by the next write to the same path.
    `replace_special`: a folder irevnet owns (the machine cache) replaces whatever non-regular
    file or link stands at `path` instead.
    """
    path = Path(path)
    if not replace_special and path.exists() and not (path.is_file() or path.is_dir()):
        # behind it (links followed) a device, FIFO, socket or pipe
        with tempfile.TemporaryDirectory(prefix="irevnet.") as scratch:
            tmp = Path(scratch) / "output"
            yield tmp
            with open(tmp, "rb") as source, open(path, "wb") as sink:  # written into, never replaced
                shutil.copyfileobj(source, sink)
        return
    target = Path(os.path.realpath(path)) if path.is_symlink() and not replace_special else path
    check_writable(target)
    mode = stat.S_IMODE(target.stat().st_mode) if target.is_file() and not target.is_symlink() else 0o666 & ~_umask()
    with _naming(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(target)
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, mode)  # mkstemp makes 0600: the replaced file's permissions, else the usual ones
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
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


def check_replaceable(path: str | os.PathLike, owned: Callable[[Path], bool], what: str) -> None:
    """Refuses an output folder that irevnet may not replace, before any work is done.

    `path` may be absent, an empty folder, or a folder that `owned` recognises as an earlier
    output of the same command (e.g. a bundle whose every file its manifest accounts for).
    Anything else (a file, `.`, a project folder that happens to hold a manifest.json) is
    refused: replacing is whole-folder, and nothing of the user's may be deleted.
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or not path.is_dir():
        raise IRevNetError(f"{path} exists and is not a folder; choose a new output path")
    if any(path.iterdir()) and not owned(path):
        raise IRevNetError(
            f"{path} is a folder that is not an irevnet {what} (it holds files irevnet did not write); writing "
            f"replaces the folder whole, so choose a new path or empty it"
        )


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, owned: Callable[[Path], bool], what: str) -> Iterator[Path]:
    """Yields an empty temporary folder beside `path`; on success it replaces `path` whole.

    The replacement is one atomic exchange of the two folders (Linux renameat2 RENAME_EXCHANGE),
    so `path` is never absent: at every instant it is the old folder or the new one. Where the
    exchange is not available, the old folder is first renamed aside; a crash between the two
    renames leaves it in `.NAME.PID.*.old`, and the next write to `path` puts it back. Temporary
    folders of processes that died are removed by the next write to the same path.

    Args:
        owned: recognises an earlier output of this writer; see `check_replaceable`.
        what: what the folder is, for the refusal message ("bundle", "run folder").
    """
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(path)
    check_replaceable(path, owned, what)
    with _naming(path):
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        else:
            old = path.parent / (tmp.name.removesuffix(".tmp") + ".old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def work_folder(parent: str | os.PathLike, name: str) -> Iterator[Path]:
    """A scratch folder `.NAME.PID.RANDOM.tmp` in `parent`, removed afterwards. Scratch folders
    of the same name left by processes that died (killed mid-work) are removed first."""
    anchor = Path(parent) / name
    anchor.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(anchor)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(anchor), suffix=".tmp", dir=anchor.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def open_regular(path: str | os.PathLike) -> Iterator[tuple[BinaryIO, int]]:
    """(the open file, its size) of a regular file, opened without following a link and without
    blocking: a FIFO or device in its place is refused, not waited on.

    Raises:
        FileNotFoundError: nothing is there.
        ValueError: a link, or not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:  # ELOOP: a link
        raise ValueError(f"{path} cannot be opened as a plain file ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        yield f, info.st_size


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, opened as `open_regular` does.

    Raises:
        FileNotFoundError: nothing is there.
        ValueError: a link, not a regular file, over `limit`, or changed while read.
    """
    with open_regular(path) as (f, size):
        if size > limit:
            raise ValueError(f"{path} holds {size} bytes, more than the {limit} expected")
        data = f.read(size + 1)
    if len(data) != size:
        raise ValueError(f"{path} changed while it was read")
    return data


# The temporaries of the writers here: `.NAME.PID.RANDOM.tmp`, and `.NAME.PID.RANDOM.old` for a
# folder moved aside. The writer's pid lets a later run tell a dead writer's leftovers from a live one's.
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.(?P<kind>tmp|old)$")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _remove_leftovers(path: Path) -> None:
    """Removes temporaries of `path` left by dead processes; restores a folder renamed aside
    (`.old`) by a writer that died before it put the new one in place."""
    for entry in path.parent.iterdir():
        m = TEMPORARY.match(entry.name)
        if not m or m["name"] != path.name or _alive(int(m["pid"])):
            continue
        if m["kind"] == "old" and not (path.exists() or path.is_symlink()):
            os.replace(entry, path)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or not a pid we can judge): leave its files alone
    return True


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two existing paths atomically (renameat2 RENAME_EXCHANGE); False where the C library
    or the file system does not offer it."""
    if sys.platform != "linux":
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # glibc < 2.28, musl
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


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


def machine_cache() -> Path:
    """This machine's cache folder for what irevnet derives from bundles (optimized graphs,
    engines): $XDG_CACHE_HOME/irevnet or ~/.cache/irevnet. Never inside a bundle. A relative
    XDG_CACHE_HOME is ignored, as the XDG Base Directory spec says (it would put the cache in
    whatever folder the command runs from, a bundle's included)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "irevnet"


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
