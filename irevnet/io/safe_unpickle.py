"""Reads pickled PyTorch files without running code from them, in bounded time and memory.

Every checkpoint irevnet opens goes through `loads`, never through `torch.load` or `pickle.load`:

- the opcodes are restricted as irevnet.io.restricted_pickle describes (no code runs, no object of
  the process changes, keys are scalars, `_codecs.encode` is latin-1 only);
- globals resolve only to an allowlist: inert stand-ins for the reference code's and torch.nn's
  module classes (`Pickled`), storage types, dtypes, OrderedDict/Counter/set, and this module's
  own tensor-rebuild functions;
- BUILD (an object's pickled state) is applied only to stand-in instances that this load created,
  through their `__dict__`;
- ("module", class, file, source) records, which pre-1.6 PyTorch wrote beside each pickled
  nn.Module, return the stand-in; their source is never compared, loaded or written anywhere;
- a storage's bytes are read only after its size was checked against what the file holds, and a
  tensor is a view of them (no copy), so a small file cannot make the loader allocate much more
  than its own size.

Both of torch.save's layouts are read: the zip archive (ARCHIVE/data.pkl, ARCHIVE/data/KEY) and
the legacy stream of PyTorch < 1.6 (magic number, protocol, system info, the object pickle,
the storage keys, then each storage as an int64 element count and its little-endian bytes).
"""

from __future__ import annotations

import collections
import io
import struct
import zipfile
from typing import Any, BinaryIO

import torch

from ..errors import shown
from .restricted_pickle import COLLECTIONS, Refused, RestrictedUnpickler, latin1

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001
MAX_DIMS = 64  # tensors of more dimensions are refused (PyTorch allows 64)
MAX_ZIP_ENTRIES = 1_000_000


class Pickled:
    """Inert stand-in for a class named in a pickle; holds the pickled attributes and nothing else."""

    qualified_name = ""

    def module(self, name: str) -> Pickled | None:
        """The child module `name` (from nn.Module's `_modules`), if the pickle has one."""
        children = self.__dict__.get("_modules")
        child = children.get(name) if isinstance(children, dict) else None
        return child if isinstance(child, Pickled) else None


# Classes the reference CIFAR script pickles whole (CIFAR_main.py saves the DataParallel model).
REFERENCE_CLASSES = (
    "models.iRevNet.iRevNet",
    "models.iRevNet.irevnet_block",
    "models.model_utils.psi",
    "models.model_utils.injective_pad",
    "torch.nn.parallel.data_parallel.DataParallel",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.padding.ZeroPad2d",
)
STAND_INS: dict[str, type[Pickled]] = {
    name: type(name.rsplit(".", 1)[1], (Pickled,), {"qualified_name": name}) for name in REFERENCE_CLASSES
}

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}


class _StorageType:
    """What a pickled `torch.FloatStorage` (etc.) resolves to: only its dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _Storage:
    """One storage of the file: its dtype and element count, then its bytes once read."""

    def __init__(self, dtype: torch.dtype, numel: int):
        self.dtype, self.numel = dtype, numel
        self.flat: torch.Tensor | None = None  # 1-D tensor over the bytes

    @property
    def nbytes(self) -> int:
        return self.numel * _element_size(self.dtype)

    def attach(self, data: bytearray) -> None:
        if len(data) != self.nbytes:
            raise Refused(f"a storage holds {len(data)} bytes, its record says {self.nbytes}")
        self.flat = torch.frombuffer(data, dtype=self.dtype) if data else torch.empty(0, dtype=self.dtype)


class _StorageView:
    """A legacy view record: elements [offset, offset + numel) of a root storage."""

    def __init__(self, root: _Storage, offset: int, numel: int):
        if offset + numel > root.numel:
            raise Refused(f"a storage view [{offset}, {offset + numel}) lies outside its {root.numel}-element storage")
        self.root, self.offset, self.numel, self.dtype = root, offset, numel, root.dtype


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise Refused(f"{what} must be a non-negative integer, got {type(value).__name__}")
    return value


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    """A view of the storage's bytes with the pickled size and stride, checked to lie inside it.

    Stands in for torch._utils._rebuild_tensor(_v2); requires_grad, hooks and metadata are
    dropped (checkpoints hold plain weights).
    """
    if isinstance(storage, _StorageView):
        base_offset, storage = storage.offset, storage.root
    else:
        base_offset = 0
    if not isinstance(storage, _Storage) or storage.flat is None:
        raise Refused("a tensor does not refer to a storage of the file")
    offset = base_offset + _int(offset, "a tensor's storage offset")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride) or len(size) > MAX_DIMS:
        raise Refused("a tensor's size and stride are not tuples of the same length")
    size = tuple(_int(s, "a tensor size") for s in size)
    stride = tuple(_int(s, "a tensor stride") for s in stride)
    elements = 1
    for s in size:
        elements *= s
    last = offset + sum((s - 1) * st for s, st in zip(size, stride)) if elements else offset - 1
    if elements > storage.numel or last >= storage.numel:
        raise Refused(f"a tensor of size {list(size)} reaches beyond its {storage.numel}-element storage")
    return torch.as_strided(storage.flat, size, stride, offset)


def _rebuild_parameter(data: Any, *_: Any) -> torch.Tensor:
    """Stands in for torch._utils._rebuild_parameter(_with_state): the tensor, without state."""
    if not isinstance(data, torch.Tensor):
        raise Refused("a parameter does not hold a tensor")
    return data


def _reconstructor(cls: Any, base: Any, state: Any) -> Pickled:
    """Stands in for copyreg._reconstructor (protocols 0 and 1): only stand-ins are made."""
    if not (isinstance(cls, type) and issubclass(cls, Pickled)) or base is not object or state is not None:
        raise Refused("the file reconstructs an object that is not a known module class")
    return cls()


def _no_backend() -> None:
    """Stand-in for torch<=0.4's `_get_thnn_function_backend`, pickled into old nn.Modules."""


_GLOBALS: dict[str, Any] = {
    **STAND_INS,
    "collections.OrderedDict": collections.OrderedDict,
    "collections.Counter": collections.Counter,  # MultiStepLR's milestones in a scheduler state
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "_codecs.encode": latin1,  # bytes objects under protocol 2
    "copyreg._reconstructor": _reconstructor,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.nn.backends.thnn._get_thnn_function_backend": _no_backend,
    **{f"torch.{name}": _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{f"torch.cuda.{name}": _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{f"torch.{name}": value for name, value in vars(torch).items() if isinstance(value, torch.dtype)},
}


class _Unpickler(RestrictedUnpickler):
    """The restricted unpickler (irevnet.io.restricted_pickle) with torch's storages and tensors,
    and BUILD applied only to module stand-ins this load made."""

    GLOBALS = _GLOBALS
    CALLABLES = (*COLLECTIONS, latin1, _reconstructor, _rebuild_tensor, _rebuild_parameter, _no_backend)
    NEW_OK = (*STAND_INS.values(), *COLLECTIONS)
    MAPPINGS = (dict, collections.OrderedDict, collections.Counter)

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None, read_storage=None):
        super().__init__(file)
        self.storages = storages if storages is not None else {}
        self.read_storage = read_storage  # zip: key -> bytes of the record
        self.dry_run = False  # legacy first pass: storages have no bytes yet, tensors are None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise Refused("a persistent id is not a record")
        kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":  # (class, source file, source): the source is ignored
            cls = pid[1] if len(pid) > 1 else None
            if not (isinstance(cls, type) and issubclass(cls, Pickled)):
                raise Refused("a module record names a class that is not a known module class")
            return cls
        if kind != "storage" or len(pid) not in (5, 6):
            raise Refused(f"unknown persistent record {shown(kind)}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise Refused("a storage record names no storage type")
        key = key.decode("ascii", "replace") if isinstance(key, bytes) else key
        if not isinstance(key, (str, int)):
            raise Refused("a storage key is not a string")
        key = str(key)
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(storage_type.dtype, _int(numel, "a storage's element count"))
            if self.read_storage is not None:
                storage.attach(self.read_storage(key, storage.nbytes))
        elif storage.dtype != storage_type.dtype:
            raise Refused(f"storage {key} is used with two dtypes")
        if view is None:
            return storage
        if not isinstance(view, tuple) or len(view) != 3:
            raise Refused("a storage view record is malformed")
        return _StorageView(storage, _int(view[1], "a view offset"), _int(view[2], "a view size"))

    def new(self, cls: type) -> Any:
        obj = cls()
        if issubclass(cls, Pickled):
            self.created.add(id(obj))
        return obj

    def call(self, func: Any, args: tuple) -> Any:
        if self.dry_run and func in (_rebuild_tensor, _rebuild_parameter):
            return None
        return func(*args)

    def build(self, inst: Any, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
            state = state[0]
        if type(inst) in (collections.OrderedDict, collections.Counter):
            return  # a state dict's `_metadata` (BatchNorm versions): not needed, not applied
        if not (isinstance(inst, Pickled) and id(inst) in self.created):
            raise Refused(f"the file sets the state of a {type(inst).__name__}, which is not allowed")
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise Refused("a module's state is not a dict of names")
        inst.__dict__.update(state)


class _Plain(_Unpickler):
    """Plain values only (the legacy header and key list): no global at all."""

    def find_class(self, module: str, name: str) -> Any:
        raise Refused(f"Unsupported global: GLOBAL {module}.{name}")


def _primitive(f: BinaryIO) -> Any:
    return _Plain(f).load()


# -- the two layouts ------------------------------------------------------------------------


def loads(data: bytes) -> Any:
    """Reads the bytes of a torch.save file (zip or legacy layout) with the restricted unpickler.

    Raises:
        Refused: the file names something outside the allowlist or is inconsistent.
        Any exception of a corrupt stream (the caller turns them into one line).
    """
    f = io.BytesIO(data)
    if data[:4] == b"PK\x03\x04":
        return _load_zip(f, len(data))
    return _load_legacy(f, len(data))


def _load_zip(f: BinaryIO, size: int) -> Any:
    with zipfile.ZipFile(f) as archive:
        entries = archive.infolist()
        if len(entries) > MAX_ZIP_ENTRIES:
            raise Refused(f"the archive lists {len(entries)} entries")
        for e in entries:  # torch.save stores records uncompressed: anything else could be a zip bomb
            if e.compress_type != zipfile.ZIP_STORED or e.file_size > size:
                raise Refused(f"archive entry {e.filename[:80]!r} is compressed or larger than the file")
        pickles = [e.filename for e in entries if e.filename.count("/") == 1 and e.filename.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise Refused("not a torch.save archive (no single ARCHIVE/data.pkl)")
        prefix = pickles[0].removesuffix("data.pkl")
        names = {e.filename for e in entries}
        order = prefix + "byteorder"
        if order in names and archive.read(order).strip() not in (b"little", b""):
            raise Refused("big-endian archives are not supported")

        def read_record(key: str, nbytes: int) -> bytearray:
            name = f"{prefix}data/{key}"
            if name not in names:
                raise Refused(f"storage record {key!r} is missing")
            info = archive.getinfo(name)
            if info.file_size < nbytes:
                raise Refused(f"storage record {key!r} holds {info.file_size} bytes, a tensor needs {nbytes}")
            return bytearray(archive.read(name)[:nbytes])

        with archive.open(pickles[0]) as data:
            return _Unpickler(io.BytesIO(data.read()), read_storage=read_record).load()


def _load_legacy(f: BinaryIO, size: int) -> Any:
    if _primitive(f) != LEGACY_MAGIC:
        raise Refused("not a PyTorch file (no torch.save magic number)")
    if _primitive(f) != LEGACY_PROTOCOL:
        raise Refused("unknown legacy protocol version")
    _primitive(f)  # system info: byte order and type sizes of the saving machine
    start = f.tell()
    # First pass: learn the storages (dtype, element count) without reading any bytes of them.
    storages: dict[str, _Storage] = {}
    first = _Unpickler(f, storages)
    first.dry_run = True
    first.load()
    keys = _primitive(f)
    if not isinstance(keys, list) or not all(isinstance(k, (str, int)) for k in keys):
        raise Refused("the legacy storage key list is malformed")
    for key in map(str, keys):
        storage = storages.get(key)
        if storage is None:
            raise Refused(f"storage {key} is stored but never used")
        (count,) = struct.unpack("<q", _read_exactly(f, 8))
        if count != storage.numel:
            raise Refused(f"storage {key} holds {count} elements, its record says {storage.numel}")
        if storage.nbytes > size - f.tell():
            raise Refused(f"storage {key} needs {storage.nbytes} bytes, the file has {size - f.tell()} left")
        storage.attach(bytearray(_read_exactly(f, storage.nbytes)))
    if any(s.flat is None for s in storages.values()):
        raise Refused("a storage the pickle uses has no data in the file")
    # Second pass: the same pickle again, now with every storage's bytes in hand.
    f.seek(start)
    return _Unpickler(f, storages).load()


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise Refused("the file ends early (truncated)")
    return data
