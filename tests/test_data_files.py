"""kdlib.datafiles: image folders and .npz files of one's own, checked against the pixels written."""
import numpy as np
import pytest
import torch
from PIL import Image

from kdlib import data
from kdlib.datafiles import channel_stats, load_data, load_image_folder, load_npz


def write_folder(root, classes=("a", "b", "c", "d"), n=10, size=(32, 32), mode="RGB", seed=0):
    """n images per class, each filled with its own random pixels; returns {path: uint8 array}."""
    rng = np.random.default_rng(seed)
    written = {}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            a = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(a, mode).save(root / c / f"{i}.png")
            written[root / c / f"{i}.png"] = a
    return written


def raw(ds, split):
    X, y = data.as_tensors(getattr(ds, split))
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in ds.normalisation)
    return X * std + mean, y


def test_one_folder_split_stratified_and_standardised_on_train(tmp_path):
    written = write_folder(tmp_path / "photos")
    ds = load_image_folder(tmp_path / "photos")
    assert (ds.num_classes, ds.input_shape, ds.classes) == (4, (3, 32, 32), ["a", "b", "c", "d"])
    assert (len(ds.train), len(ds.val), len(ds.test)) == (28, 4, 8)  # 7 / 1 / 2 of each class's 10
    for split in ("train", "val", "test"):
        assert torch.bincount(data.as_tensors(getattr(ds, split))[1]).tolist() == [len(getattr(ds, split)) // 4] * 4
    X_train, y_train = raw(ds, "train")
    # the statistics are the training images', computed by hand from the files
    originals = {a[0].tobytes(): a for a in written.values()}  # an image by its first row of uint8 pixels
    first_rows = (X_train[:, :, 0].permute(0, 2, 1) * 255).round().to(torch.uint8).numpy()  # (N, W, C)
    picked = np.stack([originals[row.tobytes()] for row in first_rows]) / 255.0  # (N, H, W, C)
    mean = picked.transpose(3, 0, 1, 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(ds.normalisation[0], mean, atol=1e-5)
    np.testing.assert_allclose(X_train.numpy(), picked.transpose(0, 3, 1, 2), atol=1e-5)
    Xs, _ = data.as_tensors(ds.train)
    assert abs(Xs.mean().item()) < 1e-4 and abs(Xs.std().item() - 1) < 0.01


def test_train_val_test_folders_and_a_missing_split(tmp_path):
    for split, n in (("train", 10), ("test", 3)):
        write_folder(tmp_path / "d" / split, n=n, mode="L", size=(16, 12))
    ds = load_image_folder(tmp_path / "d")
    assert ds.input_shape == (1, 12, 16)
    assert len(ds.test) == 12 and len(ds.train) + len(ds.val) == 40 and len(ds.val) > 0  # val carved from train


def test_mixed_modes_and_sizes(tmp_path):
    write_folder(tmp_path / "m", classes=("x", "y"), n=6, mode="L", size=(20, 20))
    write_folder(tmp_path / "m", classes=("y",), n=1, mode="RGB", size=(10, 30), seed=1)  # overwrites y/0.png
    ds = load_image_folder(tmp_path / "m")
    assert ds.input_shape == (3, 20, 20)  # one colour image makes all RGB; the commonest size wins
    assert load_image_folder(tmp_path / "m", image_size=8).input_shape == (3, 8, 8)
    assert load_image_folder(tmp_path / "m", image_size=(8, 6)).input_shape == (3, 8, 6)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        load_image_folder(tmp_path / "f.txt")
    write_folder(tmp_path / "one", classes=("a",), n=3)
    with pytest.raises(ValueError, match="at least 2"):
        load_image_folder(tmp_path / "one")
    write_folder(tmp_path / "empty", classes=("a", "b"), n=10)
    (tmp_path / "empty" / "c").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_image_folder(tmp_path / "empty")
    write_folder(tmp_path / "bad", classes=("a", "b"), n=10)
    (tmp_path / "bad" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_image_folder(tmp_path / "bad")
    write_folder(tmp_path / "s" / "train", classes=("a", "b"), n=10)
    write_folder(tmp_path / "s" / "val", classes=("a", "c"), n=2)
    with pytest.raises(ValueError, match="same class folders"):
        load_image_folder(tmp_path / "s")
    write_folder(tmp_path / "few", classes=("a", "b"), n=2)
    with pytest.raises(ValueError, match="holds no images; give more images"):
        load_image_folder(tmp_path / "few")
    with pytest.raises(TypeError, match="image_size"):
        load_image_folder(tmp_path / "few", image_size="big")


def test_npz_channels_last_uint8_and_labels_of_any_values(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    y = np.repeat([3, 7], 20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_npz(tmp_path / "d.npz")
    assert (ds.input_shape, ds.classes, ds.num_classes) == ((3, 16, 16), ["3", "7"], 2)
    X, labels = raw(ds, "train")
    assert set(labels.tolist()) == {0, 1}
    train_x = x[data.stratified_split(y, (0.7, 0.1, 0.2))[0]]
    np.testing.assert_allclose(X.numpy(), train_x.transpose(0, 3, 1, 2) / 255.0, atol=1e-5)
    mean, std = channel_stats(torch.as_tensor(train_x.transpose(0, 3, 1, 2) / 255.0, dtype=torch.float32))
    np.testing.assert_allclose(ds.normalisation[0], mean, atol=1e-6)
    np.testing.assert_allclose(ds.normalisation[1], std, atol=1e-6)


def test_npz_given_splits_and_names(tmp_path):
    rng = np.random.default_rng(1)
    parts = {f"x_{k}": rng.random((n, 8, 8), dtype=np.float32) for k, n in (("train", 30), ("test", 10))}
    labels = {f"y_{k}": np.arange(n) % 3 for k, n in (("train", 30), ("test", 10))}
    np.savez(tmp_path / "s.npz", **parts, **labels, classes=np.array(["r", "g", "b"]))
    ds = load_npz(tmp_path / "s.npz")
    assert ds.classes == ["r", "g", "b"] and ds.input_shape == (1, 8, 8) and len(ds.test) == 10
    assert len(ds.train) + len(ds.val) == 30 and len(ds.val) == 3


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "k.npz", images=np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="must hold arrays x and y"):
        load_npz(tmp_path / "k.npz")
    np.savez(tmp_path / "p.npz", x=np.array([object()] * 4, dtype=object), y=np.zeros(4, int))
    with pytest.raises(ValueError, match="without pickle"):  # object arrays need pickle: refused
        load_npz(tmp_path / "p.npz")
    np.savez(tmp_path / "n.npz", x=np.full((20, 8, 8), np.nan), y=np.arange(20) % 2)
    with pytest.raises(ValueError, match="NaN"):
        load_npz(tmp_path / "n.npz")
    np.savez(tmp_path / "l.npz", x=np.zeros((20, 8, 8)), y=np.zeros(19, int))
    with pytest.raises(ValueError, match="one per image"):
        load_npz(tmp_path / "l.npz")
    np.savez(tmp_path / "f.npz", x=np.zeros((20, 8)), y=np.arange(20) % 2)
    with pytest.raises(ValueError, match="must be images"):
        load_npz(tmp_path / "f.npz")
    np.savez(tmp_path / "c.npz", x=np.zeros((20, 8, 8)), y=np.zeros(20, int))
    with pytest.raises(ValueError, match="at least 2 classes"):
        load_npz(tmp_path / "c.npz")


def test_load_data_dispatches(tmp_path):
    ds = data.load_dataset("digits")
    assert load_data(ds) is ds and load_data("digits").input_shape == (1, 8, 8)
    assert ds.normalisation == ((0.3,), (0.37,))
    write_folder(tmp_path / "imgs", classes=("a", "b"), n=10)
    assert load_data(str(tmp_path / "imgs")).num_classes == 2
    with pytest.raises(FileNotFoundError, match="neither a data set name"):
        load_data(str(tmp_path / "missing"))
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match="not a data set kdlib reads"):
        load_data(tmp_path / "x.csv")
    with pytest.raises(TypeError, match="data must be"):
        load_data(3)
