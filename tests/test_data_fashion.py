import functools
import gzip
import hashlib
import http.server
import os
import struct
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyro_decomp.data import FashionMNIST32, fashion_mnist
from pyro_decomp.data.fashion_mnist import FASHION_MNIST_FILES


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


def _gzip(data):
    return gzip.compress(data)


def _train_images_gz(tmp_path, train):
    return tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz", _gzip(_idx_images(train))


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "bad crc"])
def test_damaged_gz_is_one_value_error_and_not_sticky(tmp_path, damage):
    train, _ = _write_raw(tmp_path)
    gz, good = _train_images_gz(tmp_path, train)
    if damage == "truncated":
        gz.write_bytes(good[: len(good) // 2])
    elif damage == "not gzip":
        gz.write_bytes(_idx_images(train))  # the plain IDX bytes under a .gz name
    else:
        gz.write_bytes(good[:-8] + bytes(4) + good[-4:])
    with pytest.raises(ValueError) as e:
        fashion_mnist(tmp_path)
    message = str(e.value)
    assert str(gz) in message and "damaged" in message and "\n" not in message
    assert "/usr/share/datasets/fashion-mnist" in message and "download=True" in message
    raw = gz.parent
    assert not (raw / "train-images-idx3-ubyte").exists()  # nothing partial left to be reused
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]
    gz.write_bytes(good)
    ds = fashion_mnist(tmp_path)
    assert torch.equal(ds.images, torch.from_numpy(train).to(torch.uint8))


def test_partial_unzipped_file_is_not_reused(tmp_path):
    train, _ = _write_raw(tmp_path)
    raw = tmp_path / "FashionMNIST" / "raw"
    target = raw / "train-images-idx3-ubyte"
    for partial in (b"", _idx_images(train)[:1000]):
        target.write_bytes(partial)  # newer than the .gz, but not of the size its header announces
        ds = fashion_mnist(tmp_path)
        assert torch.equal(ds.images, torch.from_numpy(train).to(torch.uint8))


def test_unzipped_file_older_than_its_gz_is_replaced(tmp_path):
    train, _ = _write_raw(tmp_path)
    ds = fashion_mnist(tmp_path)
    assert torch.equal(ds.images, torch.from_numpy(train).to(torch.uint8))
    gz, _ = _train_images_gz(tmp_path, train)
    replaced = 255 - train  # same size, other images
    gz.write_bytes(_gzip(_idx_images(replaced)))
    target = gz.with_suffix("")
    os.utime(target, ns=(gz.stat().st_mtime_ns - 10**9,) * 2)
    ds = fashion_mnist(tmp_path)
    assert torch.equal(ds.images, torch.from_numpy(replaced).to(torch.uint8))


def test_plain_file_of_the_wrong_size_is_named(tmp_path):
    train, _ = _write_raw(tmp_path, gzipped_train=False)
    target = tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    target.write_bytes(_idx_images(train)[:-5])
    with pytest.raises(ValueError) as e:
        fashion_mnist(tmp_path)
    message = str(e.value)
    assert str(target) in message and "\n" not in message and "download=True" in message


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_replaces_a_damaged_gz(tmp_path, monkeypatch):
    import torchvision

    train, _ = _write_raw(tmp_path)
    raw = tmp_path / "FashionMNIST" / "raw"
    server = tmp_path / "server"
    server.mkdir()
    resources = []
    for name in FASHION_MNIST_FILES:
        gz = raw / (name + ".gz")
        data = gz.read_bytes() if gz.exists() else _gzip((raw / name).read_bytes())
        (server / gz.name).write_bytes(data)
        resources.append((gz.name, hashlib.md5(data).hexdigest()))
    handler = functools.partial(_QuietHandler, directory=str(server))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        mirror = f"http://127.0.0.1:{httpd.server_address[1]}/"
        monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [mirror])
        monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", resources)
        gz = raw / "train-images-idx3-ubyte.gz"
        good = gz.read_bytes()
        assert good == (server / gz.name).read_bytes()
        gz.write_bytes(good[:-20])
        with pytest.warns(RuntimeWarning, match="damaged") as record:
            ds = fashion_mnist(tmp_path, download=True)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert str(gz) in str(record[0].message)
    assert gz.read_bytes() == good and torch.equal(ds.images, torch.from_numpy(train).to(torch.uint8))


def test_missing_torchvision_is_one_line_that_names_it(tmp_path, monkeypatch):
    import sys

    _write_raw(tmp_path)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError) as info:
        fashion_mnist(tmp_path)
    message = str(info.value)
    assert "torchvision" in message and "pip install torchvision" in message and "\n" not in message
    # the images already in memory still resize without it
    ds = FashionMNIST32(torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(2))
    assert ds[1][0].shape == (1, 32, 32)
