"""Dataset sources and the shared split."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data import (DataError, load_fashion_mnist, load_folder, load_mnist, load_npz, load_source, load_split,
                         split_indices, to_model_range, to_uint8)


def test_bundled_mnist_and_split_are_deterministic():
    data = load_mnist()
    assert data.images.shape == (5000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.bincount().tolist() == [500] * 10
    train, heldout = load_split("mnist", "train"), load_split("mnist", "heldout")
    assert len(train) == 4000 and len(heldout) == 1000
    assert heldout.labels.bincount().tolist() == [100] * 10
    again = load_split("mnist", "heldout")
    assert torch.equal(again.images, heldout.images)
    tr, ho = split_indices(data.labels, heldout_per_class=100)
    assert len(set(tr.tolist()) & set(ho.tolist())) == 0 and len(tr) + len(ho) == 5000
    x, y = heldout[0]
    assert x.min() >= -1 and x.max() <= 1 and 0 <= y < 10
    torch.testing.assert_close(to_model_range(to_uint8(to_model_range(data.images[:5]))), to_model_range(data.images[:5]))


def _png(path, value, size=(10, 12), mode="L"):
    Image.new(mode, size, color=value).save(path)


def test_folder_layouts_resize_and_bad_images(tmp_path):
    sub = tmp_path / "sub"
    for cls in ("cat", "dog"):
        (sub / cls).mkdir(parents=True)
        for i in range(2):
            _png(sub / cls / f"{i}.png", 40 * i, size=(20, 30), mode="RGB")
    data = load_folder(sub, image_size=16, channels=3)
    assert data.images.shape == (4, 3, 16, 16) and data.class_names == ["cat", "dog"]
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("3_a.png", "3_b.png", "10_c.png"):
        _png(flat / name, 100)
    (flat / "7_broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="7_broken.png"):
        load_folder(flat, image_size=8, channels=1)
    with pytest.warns(UserWarning, match="7_broken.png"):
        data = load_folder(flat, image_size=8, channels=1, on_error="skip")
    assert data.class_names == ["3", "10"] and data.labels.tolist() == [1, 0, 0]
    single = tmp_path / "single"
    (single / "only").mkdir(parents=True)
    _png(single / "only" / "a.png", 1)
    with pytest.raises(DataError, match="single class"):
        load_source(str(single), image_size=8, channels=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        load_source(str(empty))
    with pytest.raises(DataError, match="not found"):
        load_source(str(tmp_path / "missing"))


def test_npz_source(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=images, arr_1=np.array([0, 1, 0, 1, 2, 2]))
    data = load_npz(tmp_path / "s.npz", image_size=None, channels=3)
    assert data.images.shape == (6, 3, 8, 8) and torch.equal(data.images[0], torch.from_numpy(images[0]).permute(2, 0, 1))
    grey = load_npz(tmp_path / "s.npz", image_size=None, channels=1)
    assert grey.images.shape == (6, 1, 8, 8)
    np.savez(tmp_path / "nolabels.npz", arr_0=images)
    with pytest.raises(DataError, match="no arr_1"):
        load_npz(tmp_path / "nolabels.npz", None, None)
    train, heldout = load_split(str(tmp_path / "s.npz"), "train"), load_split(str(tmp_path / "s.npz"), "heldout")
    assert len(train) + len(heldout) == 6 and len(heldout) == 3  # at least one per class


def _idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reader(tmp_path):
    rng = np.random.default_rng(0)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 28, 28)))
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4]))
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (2, 28, 28)))
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 8]))
    data = load_fashion_mnist(tmp_path)
    assert data.images.shape == (7, 1, 28, 28) and data.labels.tolist() == [0, 1, 2, 3, 4, 9, 8]
    assert data.class_names[9] == "Ankle boot"
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")
