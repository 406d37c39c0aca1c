"""A repository's record (irevnet.json) and what it proves: every file of the repository with its
sha256, so that `irevnet serve` runs only what `irevnet triton` wrote.

A repository is code: Triton runs each model's model.py, which imports the irevnet package copied
beside it. So the record is checked whole before anything runs: a file added, missing or changed
(links and special files included) is refused with its name; the copy that is served is made by
`stage` from the checked bytes into a private folder, so nothing can change between the check and
the load; and a python-flavour repository's code must be this irevnet's own (`code_files`), so a
record rewritten to match a changed file does not make that file run either.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..contract import FORWARD, INVERSE, ROUNDTRIP
from ..errors import IRevNetError
from ..io.files import open_regular, sha256_file

MARKER = "irevnet.json"  # at the repository's root: Triton reads folders only
RECORD_FORMAT = "irevnet-triton-repository"
SHARED = "shared"  # inside NAME_forward: the bundles and the vendored package (python flavour)
MAX_RECORD_BYTES = 4 << 20
MAX_FILES = 100_000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a model name prefix
_VERSION = re.compile(r"^[1-9][0-9]{0,6}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Record:
    """irevnet.json: what wrote the repository, and the sha256 of each of its other files."""

    format: str
    irevnet: str  # the irevnet version that wrote it
    name: str  # the models' prefix
    models: dict[str, str]  # forward / inverse / roundtrip -> model name
    options: dict[str, Any]  # TritonOptions.config_options(): what the configs are made of
    max_batch: int
    versions: dict[str, dict[str, str]]  # version -> bundle (where it came from), precision, manifest_sha256
    files: dict[str, str]  # '/'-separated path relative to the repository -> sha256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def flavour(self) -> str:
        return self.options["flavour"]

    def _unvouched(self, root: Path) -> Iterator[tuple[str, str]]:
        """(path, what is wrong) for every entry under `root` the record's listing does not
        account for (a link or special file, a file added) and every listed file that is missing;
        nothing is read, so nothing is hashed."""
        listed = set(self.files)
        for name, kind in walk(root):
            if kind != "file":
                yield name, f"is a {kind}, which `irevnet triton` never writes"
            elif name not in listed:
                yield name, "was added after `irevnet triton` wrote the repository"
            listed.discard(name)
        for name in sorted(listed):
            yield name, "is missing"

    def foreign(self, root: Path) -> Iterator[tuple[str, str]]:
        """(path, what is wrong) for every file under `root` that the record does not vouch for:
        added, missing, a link or special file, or changed (its bytes hashed)."""
        problems = dict(self._unvouched(root))
        yield from problems.items()
        for name, digest in self.files.items():
            if name not in problems:
                with _opened(root, name) as (f, _):
                    if _digest(f) != digest:
                        yield name, f"does not match its sha256 in {MARKER}: it was changed after `irevnet triton` wrote it"

    def check_files(self, root: Path) -> None:
        """Raises a one-line error naming the first file of `root` the record does not vouch for."""
        for name, why in self.foreign(root):
            raise IRevNetError(f"{root / name} {why}; write the repository again with `irevnet triton`")

    def stage(self, root: Path, target: Path) -> None:
        """Copies the repository into `target` (a new private folder) from bytes checked against
        the record as they are read: the copy is exactly what was recorded, whatever happens to
        `root` afterwards. Refuses, naming the file, anything the record does not vouch for."""
        for name, why in self._unvouched(root):
            raise IRevNetError(f"{root / name} {why}; serve only what `irevnet triton` wrote (write the repository "
                               f"again)")
        for name, digest in self.files.items():
            out = target / name
            out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with _opened(root, name) as (f, _), open(out, "xb") as sink:
                os.fchmod(sink.fileno(), 0o600)
                h = hashlib.sha256()
                while block := f.read(_CHUNK):
                    h.update(block)
                    sink.write(block)
            if h.hexdigest() != digest:
                raise IRevNetError(f"{root / name} does not match its sha256 in {MARKER}: it was changed after "
                                   f"`irevnet triton` wrote it; write the repository again")
        (target / MARKER).write_text(json.dumps(self.to_dict(), indent=2) + "\n")  # the record as checked

    def check_code(self, root: Path) -> None:
        """A python-flavour repository holds only what `irevnet triton` writes there (configs, each
        version's model.py and bundle, the vendored package), and its code is this irevnet's own,
        byte for byte: a record rewritten to match other code does not make that code run.
        Messages name the files under `root` (the repository as the user gave it)."""
        ours = {name: sha256_file(path) for name, path in code_files().items()}
        forward = self.models[FORWARD]
        package = f"{forward}/{SHARED}/irevnet/"
        bundles = f"{forward}/{SHARED}/bundles/"
        for name, digest in self.files.items():
            parts = name.split("/")
            if len(parts) == 3 and parts[0] in self.models.values() and parts[1] in self.versions and parts[2] == "model.py":
                if digest != ours["model.py"]:
                    raise IRevNetError(f"{root / name} is not this irevnet's model code (written by irevnet "
                                       f"{self.irevnet}, or edited); write the repository again with this irevnet's "
                                       f"`irevnet triton`")
            elif not ((len(parts) == 2 and parts[0] in self.models.values() and parts[1] == "config.pbtxt")
                      or name.startswith(package)
                      or (name.startswith(bundles) and name[len(bundles):].split("/")[0] in self.versions)):
                raise IRevNetError(f"{root / name} is not a file `irevnet triton` writes; serve only what it wrote "
                                   f"(write the repository again)")
        vendored = {name[len(package):]: d for name, d in self.files.items() if name.startswith(package)}
        expected = {name.removeprefix("irevnet/"): d for name, d in ours.items() if name.startswith("irevnet/")}
        if vendored != expected:
            differs = sorted(set(vendored) ^ set(expected)) or sorted(k for k in vendored if vendored[k] != expected[k])
            raise IRevNetError(f"{root / (package + differs[0])} differs from this irevnet's package (written by irevnet "
                               f"{self.irevnet}); write the repository again with this irevnet's `irevnet triton`")


@contextlib.contextmanager
def _opened(root: Path, name: str):
    """open_regular for a file of the repository, its refusals as one line naming the file."""
    try:
        with open_regular(root / name) as opened:
            yield opened
    except (ValueError, OSError) as e:  # a link or special file put in place since the walk, no permission
        raise IRevNetError(f"{root / name} cannot be read as a plain file ({getattr(e, 'strerror', None) or e}); "
                           f"serve only what `irevnet triton` wrote") from None


def walk(root: Path) -> Iterator[tuple[str, str]]:
    """(relative '/'-separated path, kind) of every entry under `root` except the record itself,
    without following links: kind is file, link or the special kind (fifo, socket, device).
    Folders are descended into, not listed; at most MAX_FILES entries."""
    count = 0
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                count += 1
                if count > MAX_FILES:
                    raise IRevNetError(f"{root} holds more than {MAX_FILES} entries; it is not a repository of irevnet's")
                path = Path(entry.path)
                name = path.relative_to(root).as_posix()
                if name == MARKER:
                    continue
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    stack.append(path)
                elif stat.S_ISREG(mode):
                    yield name, "file"
                else:
                    yield name, _kind(mode)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


def _digest(f) -> str:
    h = hashlib.sha256()
    while block := f.read(_CHUNK):
        h.update(block)
    return h.hexdigest()


def code_files() -> dict[str, Path]:
    """The code a repository carries, from this irevnet: model.py (triton_model.py) and every
    file of the irevnet package as `irevnet triton` copies it (no __pycache__), by the name it
    has in the repository's vendored copy ('irevnet/...')."""
    package = Path(__file__).resolve().parents[1]
    files = {"model.py": package / "serving" / "triton_model.py"}
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[f"irevnet/{path.relative_to(package).as_posix()}"] = path
    return files


def read_record(path: Path) -> Record:
    """The repository's record, checked field by field, or a one-line error."""
    try:
        with open_regular(path / MARKER) as (f, size):
            if size > MAX_RECORD_BYTES:
                raise IRevNetError(f"{path / MARKER} holds {size} bytes; a record is far smaller: it is not irevnet's")
            raw = json.loads(f.read(MAX_RECORD_BYTES + 1))
    except FileNotFoundError:
        raise IRevNetError(f"{path} is not a Triton repository written by `irevnet triton` (no {MARKER}); "
                           f"write one with `irevnet triton BUNDLE -o {path}`") from None
    except (ValueError, RecursionError, UnicodeDecodeError, OSError) as e:
        raise IRevNetError(f"{path / MARKER} is not a record of `irevnet triton` ({str(e)[:100]}); write the "
                           f"repository again") from None
    problem = _record_problem(raw)
    if problem:
        raise IRevNetError(f"{path / MARKER} is malformed ({problem}); write the repository again with `irevnet triton`")
    return Record(**{k: raw[k] for k in Record.__dataclass_fields__})


def _record_problem(raw: Any) -> str | None:
    """What is wrong with a parsed irevnet.json, or None."""
    if not isinstance(raw, dict) or raw.get("format") != RECORD_FORMAT:
        return f"format is not {RECORD_FORMAT!r}"
    fields = set(Record.__dataclass_fields__)
    if set(raw) != fields:
        return f"fields {sorted(set(raw) ^ fields)[:3]} (written by another irevnet?)"
    if not isinstance(raw["irevnet"], str) or not isinstance(raw["name"], str) or not NAME.match(raw["name"]):
        return "name"
    models = raw["models"]
    if not isinstance(models, dict) or set(models) != {FORWARD, INVERSE, ROUNDTRIP} or any(
            models[g] != f"{raw['name']}_{g}" for g in models):
        return "models"
    options = raw["options"]
    if not isinstance(options, dict) or options.get("flavour") not in ("python", "onnxruntime", "openvino", "tensorrt"):
        return "options"
    if not isinstance(raw["max_batch"], int) or isinstance(raw["max_batch"], bool) or not 1 <= raw["max_batch"] <= 65536:
        return "max_batch"
    versions = raw["versions"]
    if not isinstance(versions, dict) or not versions or not all(
            isinstance(v, str) and _VERSION.match(v) and isinstance(info, dict)
            and all(isinstance(info.get(k), str) for k in ("bundle", "precision", "manifest_sha256"))
            for v, info in versions.items()):
        return "versions"
    files = raw["files"]
    if not isinstance(files, dict) or len(files) > MAX_FILES or not all(
            isinstance(name, str) and _relative(name) and isinstance(d, str) and _SHA256.match(d)
            for name, d in files.items()):
        return "files"
    return None


def _relative(name: str) -> bool:
    """A plain relative path inside the repository: no '..', '.', empty part, backslash or NUL."""
    return bool(name) and name != MARKER and "\\" not in name and "\0" not in name and not name.startswith("/") and all(
        part not in ("", ".", "..") for part in name.split("/"))


def owned_repository(path: Path) -> bool:
    """True when `path` is a repository irevnet wrote and holds nothing irevnet did not write
    (each file listed and unchanged; missing ones are no loss): what `irevnet triton -o` may replace."""
    try:
        record = read_record(path)
    except IRevNetError:
        return False
    return not any(why != "is missing" for _, why in record.foreign(path))


def refuse_foreign(path: Path) -> None:
    """Before a write replaces `path` whole: a one-line error naming the first file in it that
    irevnet did not write (added, changed, a link), so that nothing of the user's is deleted."""
    if not (path / MARKER).exists():
        return  # not a repository: check_replaceable judges the folder
    try:
        record = read_record(path)
    except IRevNetError:
        raise IRevNetError(f"{path / MARKER} is not a record irevnet can read, so {path} may hold what irevnet did not "
                           f"write; writing replaces it whole: remove it yourself, or choose another --out") from None
    for name, why in record.foreign(path):
        if why != "is missing":
            raise IRevNetError(f"{path / name} {why}; writing replaces {path} whole and would delete it: move it out, "
                               f"or choose another --out")
