"""Hostile pickles, built byte by byte: the loader refuses them and the process stays as it was."""

import collections
import io
import pickle
import struct

import pytest
import torch

from irevnet.errors import CheckpointError
from irevnet.io import safe_unpickle
from irevnet.io.checkpoint import load_checkpoint
from tests.conftest import peaks_of_cli


def text(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def glob(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()  # GLOBAL


def legacy_stream(main: bytes) -> bytes:
    """A pre-1.6 torch.save stream around a hand-written object pickle (no storages)."""
    header = [safe_unpickle.LEGACY_MAGIC, safe_unpickle.LEGACY_PROTOCOL, {"protocol_version": 1001, "little_endian": True}]
    return b"".join(pickle.dumps(h, protocol=2) for h in header) + main + pickle.dumps([], protocol=2)


# A benign module record first: it is what made the old loader leave torch's weights-only path.
BENIGN_MODULE = b"(" + text("module") + glob("models.iRevNet", "iRevNet") + text("") + text("") + b"tQ"


def patching_file(target: str) -> bytes:
    """BUILDs dump_patches=True and __name__=target onto an allowlisted function, then hands that
    function to torch's container-source check as a module record: torch would write target.patch."""
    state = b"}" + text("dump_patches") + b"\x88s" + b"}" + text("__name__") + text(target) + b"s\x86"
    fn = glob("torch._utils", "_rebuild_tensor_v2") + state + b"bq\x00"
    record = b"(" + text("module") + b"h\x00" + text("evil.py") + text("def evil(): pass\n") + b"tQ"
    main = b"\x80\x02}(" + text("benign") + BENIGN_MODULE + text("model") + fn + text("acc") + record + b"u."
    return legacy_stream(main)


def counter_patching_file() -> bytes:
    state = b"N}" + text("__missing__") + b"Ns\x86"
    main = b"\x80\x02}(" + text("benign") + BENIGN_MODULE + text("model") + glob("collections", "Counter") + state + b"bu."
    return legacy_stream(main)


def self_wrapping_data_parallel() -> bytes:
    """{"model": dp} where dp._modules["module"] is dp itself."""
    dp = glob("torch.nn.parallel.data_parallel", "DataParallel") + b")\x81q\x00"
    state = b"}(" + text("_modules") + b"}(" + text("module") + b"h\x00uu"
    main = b"\x80\x02}(" + text("model") + dp + state + b"bu."
    return legacy_stream(main)


def test_build_cannot_patch_a_function_and_no_patch_file_is_written(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    name_before = torch._utils._rebuild_tensor_v2.__name__
    cases = {"absolute.t7": str(tmp_path / "outside" / "evil"), "relative.t7": "evil_relative", "parent.t7": "../up"}
    (tmp_path / "outside").mkdir()
    for file, target in cases.items():
        (tmp_path / file).write_bytes(patching_file(target))
        with pytest.raises(CheckpointError, match="refused to load") as err:
            load_checkpoint(tmp_path / file)
        assert "\n" not in str(err.value)
    written = [p for p in tmp_path.rglob("*.patch")]
    assert written == [], f"the file chose a path and irevnet wrote {written}"
    assert torch._utils._rebuild_tensor_v2.__name__ == name_before
    assert not hasattr(torch._utils._rebuild_tensor_v2, "dump_patches")


def test_a_refused_file_leaves_counter_unpatched(tmp_path):
    original = collections.Counter.__dict__["__missing__"]
    path = tmp_path / "counter.t7"
    path.write_bytes(counter_patching_file())
    try:
        with pytest.raises(CheckpointError, match="refused to load"):
            load_checkpoint(path)
        assert collections.Counter()["x"] == 0, "the process was changed by a refused file"
    finally:
        collections.Counter.__missing__ = original  # so that a failure here does not break other tests


def test_a_data_parallel_wrapping_itself_is_one_line_not_a_hang(tmp_path):
    path = tmp_path / "loop.t7"
    path.write_bytes(self_wrapping_data_parallel())
    with pytest.raises(CheckpointError, match="not a reference iRevNet"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "main, refusal",
    [
        (b"\x80\x02" + glob("builtins", "eval") + text("1") + b"\x85R.", "names builtins.eval"),
        (b"\x80\x02" + glob("models.iRevNet", "iRevNet") + b"(" + text("x") + b"tR.", "calls the class iRevNet"),
        (b"\x80\x02" + glob("torch", "FloatStorage") + b")\x81.", "creates a _StorageType"),
        (b"\x80\x02" + glob("models.iRevNet", "iRevNet") + b"}(" + text("x") + b"K\x01u" + b"b.", "sets the state of a type"),
        (b"\x80\x02" + glob("torch", "float32") + b"(K\x01e.", "adds items to a dtype"),
    ],
    ids=["eval", "class-call", "new-non-class", "build-on-a-class", "append-to-a-dtype"],
)
def test_other_hostile_opcodes_are_refused(tmp_path, main, refusal):
    path = tmp_path / "hostile.t7"
    path.write_bytes(legacy_stream(main))
    with pytest.raises(CheckpointError, match=refusal):
        load_checkpoint(path)


def test_a_legacy_storage_larger_than_the_file_is_refused_before_allocating(tmp_path):
    storage = object()

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (storage, 0, (1,), (1,), False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):  # 2^40 float32 elements declared: 4 TiB
            return ("storage", torch.FloatStorage, "0", "cpu", 1 << 40, None) if obj is storage else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"w": Tensor()})
    stream = legacy_stream(buffer.getvalue())[: -len(pickle.dumps([], protocol=2))]
    stream += pickle.dumps(["0"], protocol=2) + struct.pack("<q", 1 << 40) + b"\x00" * 16
    path = tmp_path / "big.t7"
    path.write_bytes(stream)
    with pytest.raises(CheckpointError, match="refused to load.*needs 4398046511104 bytes, the file has 16 left"):
        load_checkpoint(path)


def test_compressed_zip_records_are_refused(tmp_path):
    import zipfile

    from irevnet.io.checkpoint import save_checkpoint
    from tests.conftest import small_model

    good = save_checkpoint(tmp_path / "good.pt", small_model("irevnet-tiny"))
    bomb = tmp_path / "deflated.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with pytest.raises(CheckpointError, match="compressed or larger than the file"):
        load_checkpoint(bomb)


# -- a few hundred bytes must not grow into gigabytes ---------------------------------------------


def codec_chain(links: int) -> bytes:
    """state_dict = encode(...encode(encode("a", "latin1"), "hex")..., "hex"): each link doubles it."""
    expr = b"h\x00" + text("a") + text("latin1") + b"\x86R"
    for _ in range(links):
        expr = b"h\x00" + expr + text("hex") + b"\x86R"
    return legacy_stream(b"\x80\x02}" + text("state_dict") + glob("_codecs", "encode") + b"q\x000" + expr + b"s.")


def shared_tuples(levels: int, as_key: bool) -> bytes:
    """t = (t, t) `levels` times: linear in the file, exponential when printed or hashed. As a
    reference-ImageNet file's "arch" (shown by `info`), or as a dict key (hashed when set)."""
    tower = b")q\x000" + b"h\x00h\x00\x86q\x000" * levels
    if as_key:
        main = b"\x80\x02" + tower + b"}" + text("state_dict") + b"}h\x00K\x01ss."
    else:
        main = b"\x80\x02" + tower + b"}(" + text("state_dict") + b"}" + text("arch") + b"h\x00u."
    return legacy_stream(main)


# name -> (the file, what load_checkpoint says of it)
SMALL_FILES = {
    # 28 doublings: a 268 MB string from 1 KB of file (the 258-byte file reached 2 GB)
    "codec-chain": (lambda: codec_chain(28), "_codecs.encode with something other than text and latin-1"),
    # str() of 2^24 shared tuples: 100 MB+ for `info`'s meta line (2^40: hours and terabytes)
    "shared-tuples-shown": (lambda: shared_tuples(24, as_key=False), "no i-RevNet blocks found"),
    "shared-tuples-hashed": (lambda: shared_tuples(40, as_key=True), "a key or set item is a tuple, not a scalar"),
}


@pytest.fixture(scope="module")
def info_peaks(tmp_path_factory) -> dict[str, int]:
    """Peak memory of `irevnet info` in fresh processes (this one's earlier peaks would hide an
    allocation), side by side: on an intact file, what the process costs without an attack, and
    on each of SMALL_FILES."""
    root = tmp_path_factory.mktemp("small")
    torch.save({"state_dict": {}}, root / "intact.pt", _use_new_zipfile_serialization=False)
    for name, (build, _) in SMALL_FILES.items():
        (root / f"{name}.pt").write_bytes(build())
    return peaks_of_cli({name: (["info", "-c", str(root / f"{name}.pt")], 2) for name in ["intact", *SMALL_FILES]},
                        timeout=60)


@pytest.mark.parametrize("name", list(SMALL_FILES))
def test_small_files_cannot_allocate_or_loop_without_bound(tmp_path, info_peaks, name):
    build, refusal = SMALL_FILES[name]
    path = tmp_path / "small.pt"
    path.write_bytes(build())
    assert path.stat().st_size < 2048
    with pytest.raises(CheckpointError, match=refusal):
        load_checkpoint(path)
    # the file costs `info` no more than 64 MiB beyond an intact file's run (the attacks above need
    # 100 MB to terabytes), and the run ends within its 60 s
    assert info_peaks[name] < info_peaks["intact"] + (64 << 20), info_peaks


@pytest.mark.parametrize("opcodes", [b"(h\x00K\x01d.", b"\x80\x04(h\x00\x91."], ids=["DICT", "FROZENSET"])
def test_dict_and_frozenset_opcodes_check_their_keys(opcodes):
    tower = b")q\x000" + b"h\x00h\x00\x86q\x000" * 40
    with pytest.raises(safe_unpickle.Refused, match="key or set item is a tuple"):
        safe_unpickle.loads(legacy_stream(b"\x80\x02" + tower + opcodes.removeprefix(b"\x80\x04")))


def test_a_declared_bytearray_length_is_bounded_by_the_file():
    """BYTEARRAY8 makes pickle allocate its declared length before reading (found by tools/fuzz.py:
    a one-byte change declared 2^62 bytes): refused unless the file holds that many."""
    main = b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b"abc."
    with pytest.raises(safe_unpickle.Refused, match="declares 1099511627776 bytes"):
        safe_unpickle.loads(legacy_stream(main))
    assert safe_unpickle.loads(legacy_stream(b"\x80\x05\x96" + struct.pack("<Q", 3) + b"abc.")) == bytearray(b"abc")


def test_collections_are_built_from_scalars_only():
    """set/frozenset/Counter/OrderedDict arguments are checked like keys: a tuple tower as a set
    item would be hashed as it is added."""
    tower = b")q\x000" + b"h\x00h\x00\x86q\x000" * 40
    for builder in (glob("builtins", "set"), glob("collections", "Counter"), glob("builtins", "frozenset")):
        main = b"\x80\x02" + tower + builder + b"]h\x00a\x85R."
        with pytest.raises(safe_unpickle.Refused, match="key or set item is a tuple"):
            safe_unpickle.loads(legacy_stream(main))
