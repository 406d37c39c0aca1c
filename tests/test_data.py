import pickle
import random

import numpy as np
import pytest
import torch

from irevnet.data import DIGITS_TEST_SIZE, load_datasets, parse_spec
from irevnet.errors import DatasetError


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
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DatasetError, match="names builtins.print"):
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
        with pytest.raises(DatasetError, match="unreadable cifar10 batch file") as err:
            load_datasets(f"cifar10:{tmp_path}", (3, 32, 32))
        assert "\n" not in str(err.value)
