import gzip
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyro_decomp.data import FashionMNIST32, fashion_mnist


def _idx_images(images):
    # IDX: magic 2051 (0x0803: ubyte, 3 dims), then the dims as big-endian uint32, then the bytes
    n, h, w = images.shape
    return struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()


def _idx_labels(labels):
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def _write_raw(root, gzipped_train=True):
    """Tiny train (7 images) and test (3 images) splits in torchvision's raw folder; train gzipped."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(7, 28, 28))
    train[0] = 0
    train[1] = 255
    train[2] = 128
    test = rng.integers(0, 256, size=(3, 28, 28))
    files = {
        "train-images-idx3-ubyte": _idx_images(train),
        "train-labels-idx1-ubyte": _idx_labels(np.arange(7) % 10),
        "t10k-images-idx3-ubyte": _idx_images(test),
        "t10k-labels-idx1-ubyte": _idx_labels(np.array([9, 0, 4])),
    }
    for name, data in files.items():
        if gzipped_train and name.startswith("train"):
            with gzip.open(raw / (name + ".gz"), "wb") as f:
                f.write(data)
        else:
            (raw / name).write_bytes(data)
    return train, test


def test_idx_files_load_resized_to_32(tmp_path):
    train, test = _write_raw(tmp_path)
    ds = fashion_mnist(tmp_path, train=True)
    assert isinstance(ds, FashionMNIST32) and len(ds) == 7
    image, label = ds[3]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and int(label) == 3
    assert ds.classes[9] == "Ankle boot"
    # bilinear resize with half-pixel centres (what torchvision's resize does when enlarging), then clamp
    x = torch.from_numpy(train[3]).float()[None, None] / 255
    expected = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)[0].clamp(1e-6, 1 - 1e-6)
    assert torch.allclose(image, expected, atol=1e-6)
    # constant images stay constant; 0 and 1 are clamped into (0, 1) as the paper does
    assert torch.all(ds[0][0] == torch.tensor(1e-6))
    assert torch.all(ds[1][0] == torch.tensor(1 - 1e-6))
    assert torch.allclose(ds[2][0], torch.full((1, 32, 32), 128 / 255))
    assert ds[4][0].min() > 0 and ds[4][0].max() < 1
    test_ds = fashion_mnist(tmp_path, train=False)
    assert len(test_ds) == 3 and test_ds.targets.tolist() == [9, 0, 4]
    x = torch.from_numpy(test[1]).float()[None, None] / 255
    expected = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)[0].clamp(1e-6, 1 - 1e-6)
    assert torch.allclose(test_ds[1][0], expected, atol=1e-6)


def test_dataloader_batches(tmp_path):
    _write_raw(tmp_path, gzipped_train=False)
    ds = fashion_mnist(tmp_path)
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=7, num_workers=2)))
    assert images.shape == (7, 1, 32, 32) and labels.tolist() == list(range(7))
    assert torch.equal(images, ds.transform(ds.images))


def test_missing_files_say_where_they_go(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        fashion_mnist(tmp_path)
    message = str(e.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "download=True" in message
    assert "train-images-idx3-ubyte" in message


def test_failed_download_is_reported(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [(tmp_path / "nowhere").as_uri() + "/"])
    with pytest.raises(RuntimeError, match="could not download") as e:
        fashion_mnist(tmp_path, download=True)
    assert str(tmp_path / "FashionMNIST" / "raw") in str(e.value)


def test_corrupt_idx_file(tmp_path):
    _write_raw(tmp_path, gzipped_train=False)
    raw = tmp_path / "FashionMNIST" / "raw"
    (raw / "train-images-idx3-ubyte").write_bytes(struct.pack(">I", 2049) + bytes(10))
    with pytest.raises(RuntimeError, match="corrupt"):
        fashion_mnist(tmp_path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="uint8"):
        FashionMNIST32(torch.zeros(2, 28, 28), torch.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        FashionMNIST32(torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(3))
