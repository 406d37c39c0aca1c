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

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..contract import FORWARD, INVERSE, ROUNDTRIP
from ..errors import IRevNetError
from ..io.files import TEMPORARY, open_regular

MARKER = "irevnet.json"  # at the repository's root: Triton reads folders only
RECORD_FORMAT = "irevnet-triton-repository"
SHARED = "shared"  # inside NAME_forward: the bundles and the vendored package (python flavour)
MAX_RECORD_BYTES = 4 << 20
MAX_FILES = 100_000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
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

    @property
    def latest(self) -> dict[str, str]:
        return self.versions[max(self.versions, key=int)]

    def foreign(self, root: Path) -> Iterator[tuple[str, str]]:
        """(path, what is wrong) for every file under `root` that the record does not vouch for:
        added, missing, a link or special file, or changed (its bytes hashed)."""
        listed = set(self.files)
        for name, kind in walk(root):
            if kind != "file":
                yield name, f"is a {kind}, which `irevnet triton` never writes"
            elif name not in listed:
                yield name, "was added after `irevnet triton` wrote the repository"
            else:
                listed.discard(name)
                with open_regular(root / name) as (f, _):
                    if _digest(f) != self.files[name]:
                        yield name, f"does not match its sha256 in {MARKER}: it was changed after `irevnet triton` wrote it"
        for name in sorted(listed):
            yield name, "is missing"

    def check_files(self, root: Path) -> None:
        """Raises a one-line error naming the first file of `root` the record does not vouch for."""
        for name, why in self.foreign(root):
            raise IRevNetError(f"{root / name} {why}; write the repository again with `irevnet triton`")

    def stage(self, root: Path, target: Path) -> None:
        """Copies the repository into `target` (a new private folder) from bytes checked against
        the record as they are read: the copy is exactly what was recorded, whatever happens to
        `root` afterwards. Refuses, naming the file, anything the record does not vouch for."""
        listed = set(self.files)
        for name, kind in walk(root):
            if kind != "file" or name not in listed:
                why = (f"is a {kind}, which `irevnet triton` never writes" if kind != "file"
                       else "was added after `irevnet triton` wrote the repository")
                raise IRevNetError(f"{root / name} {why}; serve only what `irevnet triton` wrote (write the "
                                   f"repository again)")
            listed.discard(name)
        for name in sorted(listed):
            raise IRevNetError(f"{root / name} is missing; write the repository again with `irevnet triton`")
        for name, digest in self.files.items():
            out = target / name
            out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open_regular(root / name) as (f, _), open(out, "xb") as sink:
                os.fchmod(sink.fileno(), 0o600)
                h = hashlib.sha256()
                while block := f.read(_CHUNK):
                    h.update(block)
                    sink.write(block)
            if h.hexdigest() != digest:
                raise IRevNetError(f"{root / name} does not match its sha256 in {MARKER}: it was changed after "
                                   f"`irevnet triton` wrote it; write the repository again")
        out = target / MARKER
        out.write_bytes((root / MARKER).read_bytes())

    def check_code(self, root: Path) -> None:
        """A python-flavour repository's model.py files and vendored package must be this
        irevnet's own files, byte for byte (the native flavours' model.py too, for the round trip)."""
        ours = {name: _file_digest(path) for name, path in code_files().items()}
        package = f"{self.models[FORWARD]}/{SHARED}/irevnet/"
        vendored = {name[len(package):]: d for name, d in self.files.items() if name.startswith(package)}
        expected_vendored = {name.removeprefix("irevnet/"): d for name, d in ours.items() if name.startswith("irevnet/")}
        for name, digest in self.files.items():
            parts = name.split("/")
            if len(parts) == 3 and parts[1].isdigit() and parts[2] == "model.py" and digest != ours["model.py"]:
                raise IRevNetError(f"{root / name} is not this irevnet's model code (written by irevnet {self.irevnet}, "
                                   f"or edited); write the repository again with this irevnet's `irevnet triton`")
        if self.flavour == "python" and vendored != expected_vendored:
            differs = sorted(set(vendored) ^ set(expected_vendored)) or sorted(
                k for k in vendored if vendored[k] != expected_vendored[k])
            raise IRevNetError(f"{root / (package + differs[0])} differs from this irevnet's package (written by irevnet "
                               f"{self.irevnet}); write the repository again with this irevnet's `irevnet triton`")


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


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return _digest(f)


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
    import json

    try:
        with open_regular(path / MARKER) as (f, size):
            if size > MAX_RECORD_BYTES:
                raise IRevNetError(f"{path / MARKER} holds {size} bytes; a record is far smaller: it is not irevnet's")
            raw = json.loads(f.read(MAX_RECORD_BYTES + 1))
    except FileNotFoundError:
        raise IRevNetError(f"{path} is not a Triton repository written by `irevnet triton` (no {MARKER}); "
                           f"write one with `irevnet triton BUNDLE -o {path}`") from None
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
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
    if not isinstance(raw["irevnet"], str) or not isinstance(raw["name"], str) or not _NAME.match(raw["name"]):
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
    record = read_record(path)
    for name, why in record.foreign(path):
        if why != "is missing":
            raise IRevNetError(f"{path / name} {why}; writing replaces {path} whole and would delete it: move it out, "
                               f"or choose another --out")
