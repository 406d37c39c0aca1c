import functools
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from irevnet.errors import DatasetError
from irevnet.io.datasets import DIGITS_TEST_SIZE, parse_spec
from irevnet.training.data import load_datasets
from tests.conftest import PEAK_RSS, side_by_side


def test_digits_split_is_fixed_and_real():
    a = load_datasets("digits", (1, 16, 16))
    b = load_datasets("digits", (1, 16, 16))
    assert len(a.train) == 1797 - DIGITS_TEST_SIZE and len(a.test) == DIGITS_TEST_SIZE == 360
    x0, y0 = a.test[0]
    assert torch.equal(x0, b.test[0][0]) and y0 == b.test[0][1], "the split must not change between runs"
    assert x0.shape == (1, 16, 16) and a.num_classes == 10
    # normalised with the train split's statistics: the train images have mean ~0, std ~1
    train = torch.stack([a.train[i][0] for i in range(len(a.train))])
    assert abs(float(train.mean())) < 0.05 and abs(float(train.std()) - 1) < 0.1
    # grayscale is replicated for 3-channel models
    assert load_datasets("digits", (3, 32, 32)).test[0][0].shape == (3, 32, 32)


def _write_cifar_py(root, n_train=20, n_test=10, fine=False):
    folder = root / ("cifar-100-python" if fine else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    key = b"fine_labels" if fine else b"labels"
    names = ["train"] if fine else [f"data_batch_{i}" for i in range(1, 6)]
    per = n_train // len(names)
    for name in names:
        batch = {b"data": rng.randint(0, 256, (per, 3072)).astype(np.uint8), key: rng.randint(0, 10, per).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    test = {b"data": rng.randint(0, 256, (n_test, 3072)).astype(np.uint8), key: list(range(n_test))}
    (folder / ("test" if fine else "test_batch")).write_bytes(pickle.dumps(test, protocol=2))
    return test


@pytest.mark.parametrize("fine", [False, True], ids=["cifar10", "cifar100"])
def test_cifar_reader_on_the_real_pickle_layout(tmp_path, fine):
    test = _write_cifar_py(tmp_path, fine=fine)
    kind = "cifar100" if fine else "cifar10"
    data = load_datasets(f"{kind}:{tmp_path}", (3, 32, 32), augment=False)
    assert (len(data.train), len(data.test), data.num_classes) == (20, 10, 100 if fine else 10)
    x, y = data.test[3]
    assert y == 3
    # pixel (c=0, 0, 0) of test image 3, normalised with the paper's statistics
    expected = (test[b"data"][3, 0] / 255.0 - data.mean[0]) / data.std[0]
    assert abs(float(x[0, 0, 0]) - expected) < 1e-5


def test_cifar_reader_on_the_binary_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.RandomState(1)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = np.concatenate([np.arange(4, dtype=np.uint8)[:, None], rng.randint(0, 256, (4, 3072)).astype(np.uint8)], 1)
        records.tofile(folder / name)
    data = load_datasets(f"cifar10:{tmp_path}", (3, 32, 32), augment=False)
    assert len(data.train) == 20 and [data.test[i][1] for i in range(4)] == [0, 1, 2, 3]


def test_cifar_batch_with_code_is_refused(tmp_path):
    _write_cifar_py(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DatasetError, match=r"names (posix|os)\.system"):
        load_datasets(f"cifar10:{tmp_path}", (3, 32, 32))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mnist", "unknown dataset 'mnist'"),
        ("cifar10", "needs a folder"),
        ("digits:/x", "takes no path"),
    ],
)
def test_bad_specs_name_the_expected_form(spec, message):
    with pytest.raises(DatasetError, match=message):
        parse_spec(spec)


def test_missing_folders_say_what_was_expected(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py.*--download"):
        load_datasets(f"cifar10:{tmp_path}", (3, 32, 32))
    with pytest.raises(DatasetError, match="needs .*train/ with one sub-folder per class"):
        load_datasets(f"imagefolder:{tmp_path}", (3, 224, 224))


def test_imagefolder_reads_real_image_files(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.randint(0, 256, (40, 48, 3)).astype(np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    data = load_datasets(f"imagefolder:{tmp_path}", (3, 32, 32))
    assert data.num_classes == 2 and len(data.train) == 4 and len(data.test) == 4
    assert data.test[0][0].shape == (3, 32, 32) and data.train[0][0].shape == (3, 32, 32)


def test_corrupt_cifar_batches_give_one_line_errors(tmp_path):
    _write_cifar_py(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    corrupt = [
        pickle.dumps([1, 2, 3]),  # not a dict
        pickle.dumps({b"data": np.zeros(7, np.uint8), b"labels": [1]}),  # 7 bytes is no 3x32x32 image
        pickle.dumps({b"labels": [1]}),  # no data
        *[random.Random(seed).randbytes(2048) for seed in range(40)],  # arbitrary opcode streams
    ]
    for data in corrupt:
        batch.write_bytes(data)
        with pytest.raises(DatasetError, match=r"cifar-10-batches-py.*re-download it$") as err:
            load_datasets(f"cifar10:{tmp_path}", (3, 32, 32))
        assert "\n" not in str(err.value)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds a few bytes: what a decompression bomb looks like."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _image_tree(root):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / split / cls / "0.png")


def test_imagefolder_symlink_loop_is_one_line_not_a_hang(tmp_path):
    _image_tree(tmp_path)
    (tmp_path / "val" / "cat" / "up").symlink_to("..")  # val/cat/up/cat/up/... forever under os.walk
    with pytest.raises(DatasetError, match=r"val/cat/up/cat: a symbolic link loop") as err:
        load_datasets(f"imagefolder:{tmp_path}", (3, 32, 32))
    assert "\n" not in str(err.value)


def test_decompression_bomb_and_broken_images_name_the_file(tmp_path):
    _image_tree(tmp_path)
    bomb = tmp_path / "val" / "dog" / "bomb.png"
    bomb.write_bytes(_png_header(50_000, 50_000))  # 2.5e9 pixels declared in 70 bytes
    data = load_datasets(f"imagefolder:{tmp_path}", (3, 32, 32), augment=False)
    index = [path for path, _ in data.test.samples].index(str(bomb))
    with pytest.raises(DatasetError, match=r"bomb.png: Image size \(2500000000 pixels\) exceeds limit") as err:
        data.test[index]
    assert "\n" not in str(err.value)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match="bomb.png: not a readable image"):
        data.test[index]


@pytest.mark.parametrize(
    "batch, message",
    [
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, "label 10 of image 3 is outside 0..9"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, -1, 2, 3]}, "label -1 of image 1 is outside 0..9"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1]}, "2 labels for 4 images"),
        ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, "no images in this batch file"),
    ],
)
def test_cifar_labels_must_fit_the_images_and_the_classes(tmp_path, batch, message):
    _write_cifar_py(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match=rf"test_batch: {message}"):
        load_datasets(f"cifar10:{tmp_path}", (3, 32, 32))


def test_empty_cifar_binary_file_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        np.zeros((2, 3073), np.uint8).tofile(folder / name)
    (folder / "test_batch.bin").write_bytes(b"")
    with pytest.raises(DatasetError, match="test_batch.bin: no images in this batch file"):
        load_datasets(f"cifar10:{tmp_path}", (3, 32, 32))


def _tower(leaf, levels: int) -> list:
    """[t, t] `levels` times over `leaf`: pickled once per level (linear), 2^levels leaves when
    numpy or str() walks it."""
    for _ in range(levels):
        leaf = [leaf, leaf]
    return leaf


def _peak_loading(root) -> tuple[int, str]:
    """Peak resident bytes of a fresh process loading cifar10:ROOT, and its error line."""
    code = ("import sys\nfrom irevnet.training.data import load_datasets\nfrom irevnet.errors import DatasetError\n"
            f"try:\n    load_datasets('cifar10:{root}', (3, 32, 32))\n    line = 'loaded'\n"
            "except DatasetError as e:\n    line = str(e)\n"
            f"print({PEAK_RSS}, line)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120).stdout
    peak, line = out.strip().splitlines()[-1].split(" ", 1)
    return int(peak), line


HOSTILE_BATCHES = {
    "label-tower": {b"data": np.zeros((1, 3072), np.uint8), b"labels": _tower(0, 26)},  # 2^26 labels: 512 MB as int64
    "image-tower": {b"data": _tower([0] * 3072, 17), b"labels": [0]},  # 2^17 images of nested lists: 400 MB+
    "object-array": {b"data": np.zeros((1, 3072), np.uint8), b"labels": np.zeros(1, dtype=object)},  # run pickles
}


@pytest.fixture(scope="module")
def cifar_peaks(tmp_path_factory) -> dict[str, tuple[int, str]]:
    """Peak resident bytes and error line of fresh processes loading a 6-image CIFAR folder: an
    intact one, and one per HOSTILE_BATCHES test batch, side by side."""
    roots = {}
    for name in ["intact", *HOSTILE_BATCHES]:
        root = roots[name] = tmp_path_factory.mktemp(name)
        _write_cifar_py(root, n_train=5, n_test=1)
        if name in HOSTILE_BATCHES:
            (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(HOSTILE_BATCHES[name], protocol=2))
            assert sum(f.stat().st_size for f in (root / "cifar-10-batches-py").iterdir()) < 40_000
    return side_by_side({name: functools.partial(_peak_loading, root) for name, root in roots.items()})


@pytest.mark.parametrize("name", list(HOSTILE_BATCHES))
def test_a_few_kilobytes_of_cifar_cannot_allocate_gigabytes(name, cifar_peaks):
    """The issue's 3.6 KB CIFAR folder made `evaluate` use 2.4 GB: batch files are read by a
    restricted unpickler and only arrays whose bytes are in the file become images."""
    intact_peak, intact_line = cifar_peaks["intact"]
    peak, line = cifar_peaks[name]
    assert intact_line == "loaded"
    assert "test_batch" in line and "re-download it" in line, line
    assert peak < intact_peak + (64 << 20), (peak, intact_peak)


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 32, 32)])
def test_torch_free_reader_gives_the_training_pipelines_held_out_images(shape):
    """irevnet.io.datasets (numpy) and the torch datasets read the same files, split and
    normalisation: same labels, images equal within float32 rounding of a few operations on
    values of magnitude ~3 (bilinear weights, mean/std), far below 1e-5."""
    from irevnet.io.splits import open_split

    split = open_split("digits", "val", shape)
    data = load_datasets("digits", shape, augment=False)
    assert len(split) == len(data.test)
    for item in split.items[::15]:  # every 15th of the 360: both pipelines, image by image
        x = split.decode(item)
        expected, label = data.test[item.index]
        assert x.dtype == np.float32 and x.shape == shape and item.label == int(label)
        assert np.abs(x - expected.numpy()).max() < 1e-5


def test_a_sample_of_a_split_is_stratified_over_the_whole_split(tmp_path):
    """`verify --dataset ... --samples 1000` took the first 1,000 files of the class folders in
    sorted order: classes 0-19 of ImageNet. A sample is now drawn over the whole split: every
    prefix holds each class's share within one image, and it is the same for the same seed."""
    from irevnet.io.splits import open_split, stratified

    split = open_split("digits", "val", (1, 8, 8))
    counts = np.bincount([it.label for it in split.items], minlength=10)
    for n in (10, 37, 100, 360):
        got = np.bincount([it.label for it in stratified(split)[:n]], minlength=10)
        assert np.all(np.abs(got - counts * n / len(split)) <= 1.0 + 1e-9), (n, got, counts * n / len(split))
    assert [it.index for it in stratified(split)[:20]] == [it.index for it in stratified(split)[:20]]
    assert [it.index for it in stratified(split, seed=1)[:20]] != [it.index for it in stratified(split)[:20]]
    first = stratified(split)[:10]
    assert len({it.label for it in first}) == 10, "ten images: one of each class"
