"""A pickle reader that runs no code from the file, changes no object of the process, and is
bounded in time and memory by the file's size. Torch-free: the checkpoint reader
(irevnet.io.safe_unpickle) and the CIFAR batch reader (irevnet.io.datasets) subclass it.

What the base class enforces, whatever the subclass allows:

- a global resolves only through the subclass's `GLOBALS` table; anything else is refused before
  it is called. REDUCE calls only what `CALLABLES` lists, NEWOBJ creates only `NEW_OK` classes;
  INST and OBJ (protocols 0 and 1 object creation) are refused;
- BUILD goes to the subclass's `build`, which by default refuses: state is applied only to
  objects this load created, never to a class, a function or anything the process already had;
- APPEND(S), SETITEM(S) and ADDITEMS fill only plain lists, dicts and sets; DICT and FROZENSET
  check their keys like the others;
- dict keys and set items are scalars or flat tuples of scalars, so hashing one is bounded (a
  tuple holding itself twice, 40 levels deep, is 1 KB of pickle and hashes for hours);
- `_codecs.encode` (how protocol 2 writes bytes) is text to latin-1 only: no codec can grow a
  string (a chain of `hex` encodings doubles it per link);
- the input is bytes in memory (io.BytesIO), so a declared length reads at most what is there,
  and BYTEARRAY8, which pickle allocates at its declared length before reading, is bounded by them.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import struct
from typing import Any, ClassVar

MAX_KEY_TUPLE = 64  # items of a tuple used as a key


class Refused(pickle.UnpicklingError):
    """The file asks for something the loader does not do; the message says what."""


def latin1(text: Any, encoding: Any, *rest: Any) -> bytes:
    """Stands in for _codecs.encode, which protocol 2 uses for bytes: encode(text, "latin1")."""
    if type(text) is not str or encoding not in ("latin1", "latin-1") or rest:
        raise Refused("the file calls _codecs.encode with something other than text and latin-1")
    return text.encode("latin-1")


_ATOMS = (str, bytes, int, float, bool, type(None))


def key(value: Any) -> Any:
    """A dict key or set item of the file: a scalar or a flat tuple of scalars."""
    if type(value) in _ATOMS:
        return value
    if type(value) is tuple and len(value) <= MAX_KEY_TUPLE and all(type(v) in _ATOMS for v in value):
        return value
    raise Refused(f"a key or set item is a {type(value).__name__}, not a scalar")


def keys(items: Any) -> list:
    """The items a set or Counter is built from, each checked by `key`."""
    if type(items) not in (list, tuple, set, frozenset, dict):
        raise Refused(f"a collection is built from a {type(items).__name__}")
    return [key(item) for item in items]


COLLECTIONS = (collections.OrderedDict, collections.Counter, set, frozenset)


def _collection_args(cls: type, args: tuple) -> tuple:
    """The arguments of a collection the file builds, with every key checked."""
    if not args:
        return args
    if len(args) != 1 or type(args[0]) not in (list, tuple, dict):
        raise Refused(f"the file builds a {cls.__name__} from something other than a list")
    if type(args[0]) is dict:  # Counter({30: 1, 60: 1}), as a scheduler's milestones pickle
        return ({key(k): v for k, v in args[0].items()},)
    if cls is collections.OrderedDict:
        if not all(type(pair) in (list, tuple) and len(pair) == 2 for pair in args[0]):
            raise Refused("an OrderedDict is built from something other than pairs")
        return ([(key(k), v) for k, v in args[0]],)
    return (keys(args[0]),)


class RestrictedUnpickler(pickle._Unpickler):
    """pickle's pure-Python unpickler with every opcode that calls or changes objects restricted.

    The C unpickler cannot be restricted per opcode, so this one replaces the handlers of
    REDUCE, BUILD, NEWOBJ, NEWOBJ_EX, INST, OBJ, APPEND(S), SETITEM(S), ADDITEMS, DICT and FROZENSET.

    Subclasses set:
        GLOBALS: "module.name" -> the object the name resolves to.
        CALLABLES: the objects REDUCE may call (by identity).
        NEW_OK: the classes NEWOBJ may instantiate (without arguments, or a set's items).
        MAPPINGS: the exact types SETITEM(S) may fill.
    """

    GLOBALS: ClassVar[dict[str, Any]] = {}
    CALLABLES: ClassVar[tuple] = ()
    NEW_OK: ClassVar[tuple[type, ...]] = ()
    MAPPINGS: ClassVar[tuple[type, ...]] = (dict,)
    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)  # this class's own copy, edited below

    def __init__(self, file: io.BytesIO):
        super().__init__(file, encoding="latin1")
        self.size = len(file.getbuffer())  # no declared length may exceed the bytes present
        self.created: set[int] = set()  # ids of the objects this load made (kept alive by the memo)

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise Refused("a global's name is not a string")
        # Python 2 names (protocol-2 pickles say __builtin__.set), renamed as pickle's own
        # find_class does; no Python 3 module has these names.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full not in self.GLOBALS:
            raise Refused(f"Unsupported global: GLOBAL {full}")
        return self.GLOBALS[full]

    def call(self, func: Any, args: tuple) -> Any:
        """REDUCE of an allowed callable; subclasses may intercept (the default calls it)."""
        return func(*args)

    def build(self, inst: Any, state: Any) -> None:
        """BUILD: applies `state` to `inst`; the default refuses every object."""
        raise Refused(f"the file sets the state of a {type(inst).__name__}, which is not allowed")

    def new(self, cls: type) -> Any:
        """NEWOBJ of an allowed class without arguments; subclasses may record what they made."""
        return cls()

    # -- the restricted opcodes --------------------------------------------------------------

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not isinstance(args, tuple):
            raise Refused("REDUCE arguments are not a tuple")
        if not any(func is allowed for allowed in self.CALLABLES):
            name = f"the class {func.__name__}" if isinstance(func, type) else "something that is not an allowed function"
            raise Refused(f"the file calls {name}, which is not allowed")
        if func in COLLECTIONS:
            args = _collection_args(func, args)
        self.stack[-1] = self.call(func, args)

    def _new(self, cls: Any, args: Any) -> Any:
        if not (isinstance(cls, type) and cls in self.NEW_OK) or not isinstance(args, tuple):
            raise Refused(f"the file creates a {getattr(cls, '__name__', type(cls).__name__)}, which is not allowed")
        if cls in (set, frozenset):
            return cls(*_collection_args(cls, args))
        if args:
            raise Refused(f"a {cls.__name__} is created with arguments, which is not allowed")
        return self.new(cls)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._new(self.stack[-1], args)

    def load_newobj_ex(self) -> None:
        kwargs, args = self.stack.pop(), self.stack.pop()
        if kwargs:
            raise Refused("keyword arguments in object creation are not allowed")
        self.stack[-1] = self._new(self.stack[-1], args)

    def load_inst(self) -> None:
        raise Refused("the INST opcode (protocol 0 object creation) is not allowed")

    def load_obj(self) -> None:
        raise Refused("the OBJ opcode (protocol 1 object creation) is not allowed")

    def load_build(self) -> None:
        state = self.stack.pop()
        self.build(self.stack[-1], state)

    def _target(self, kinds: tuple[type, ...]) -> Any:
        """The object under the items, if it is exactly one of `kinds` (never a subclass, a
        class or anything the process already had)."""
        target = self.stack[-1]
        if type(target) not in kinds:
            raise Refused(f"the file adds items to a {type(target).__name__}, which is not allowed")
        return target

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target((list,)).append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target((list,)).extend(items)

    def load_setitem(self) -> None:
        value, name = self.stack.pop(), self.stack.pop()
        self._target(self.MAPPINGS)[key(name)] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target(self.MAPPINGS)
        for i in range(0, len(items) - 1, 2):
            target[key(items[i])] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._target((set,)).update(keys(items))

    def load_bytearray8(self) -> None:  # pickle allocates the declared length before reading
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self.size:
            raise Refused(f"a bytearray declares {length} bytes, the file holds {self.size}")
        data = bytearray(length)
        self.readinto(data)
        self.append(data)

    def load_dict(self) -> None:  # DICT: keys hashed as the dict is made
        items = self.pop_mark()
        self.append({key(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)})

    def load_frozenset(self) -> None:  # FROZENSET (protocol 4)
        self.append(frozenset(keys(self.pop_mark())))


for _opcode, _handler in (
    (pickle.REDUCE, RestrictedUnpickler.load_reduce), (pickle.NEWOBJ, RestrictedUnpickler.load_newobj),
    (pickle.NEWOBJ_EX, RestrictedUnpickler.load_newobj_ex), (pickle.INST, RestrictedUnpickler.load_inst),
    (pickle.OBJ, RestrictedUnpickler.load_obj), (pickle.BUILD, RestrictedUnpickler.load_build),
    (pickle.APPEND, RestrictedUnpickler.load_append), (pickle.APPENDS, RestrictedUnpickler.load_appends),
    (pickle.SETITEM, RestrictedUnpickler.load_setitem), (pickle.SETITEMS, RestrictedUnpickler.load_setitems),
    (pickle.ADDITEMS, RestrictedUnpickler.load_additems), (pickle.DICT, RestrictedUnpickler.load_dict),
    (pickle.FROZENSET, RestrictedUnpickler.load_frozenset), (pickle.BYTEARRAY8, RestrictedUnpickler.load_bytearray8),
):
    RestrictedUnpickler.dispatch[_opcode[0]] = _handler
