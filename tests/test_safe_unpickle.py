"""Hostile pickles, built byte by byte: the loader refuses them and the process stays as it was."""

import collections
import io
import pickle
import struct

import pytest
import torch

from irevnet import safe_unpickle
from irevnet.checkpoint import load_checkpoint
from irevnet.errors import CheckpointError


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

    from irevnet.checkpoint import save_checkpoint
    from tests.conftest import small_model

    good = save_checkpoint(tmp_path / "good.pt", small_model("irevnet-tiny"))
    bomb = tmp_path / "deflated.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with pytest.raises(CheckpointError, match="compressed or larger than the file"):
        load_checkpoint(bomb)
