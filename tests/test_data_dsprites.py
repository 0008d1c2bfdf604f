import contextlib
import hashlib
import math
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch

import pyro_decomp.data.dsprites as dsprites_module
from pyro_decomp.data import DSPRITES_FILENAME, DSprites

SIZES = (3, 2, 2, 2, 2)  # a complete small grid: shape, scale, orientation, x, y


def _write_npz(path, object_key=None, order=None, compressed=True, invert=False):
    """A small file with the real layout: imgs, latents_classes, latents_values and a pickled metadata."""
    n = math.prod(SIZES)
    classes = np.concatenate([np.zeros((n, 1), np.int64), np.indices(SIZES).reshape(5, -1).T], axis=1)
    levels = [
        np.ones(1),
        np.array([1.0, 2.0, 3.0]),
        np.array([0.5, 1.0]),
        np.array([0.0, np.pi]),
        np.array([0.0, 1.0]),
    ]
    levels.append(np.array([0.0, 1.0]))
    values = np.stack([levels[k][classes[:, k]] for k in range(6)], axis=1)
    imgs = (np.random.default_rng(0).random((n, 64, 64)) < 0.3).astype(np.uint8)
    if invert:
        imgs = 1 - imgs
    if order is not None:
        classes, values, imgs = classes[order], values[order], imgs[order]
    arrays = {
        "imgs": imgs,
        "latents_classes": classes,
        "latents_values": values,
        "metadata": np.array({"latents_sizes": np.array((1,) + SIZES)}, dtype=object),
    }
    if object_key is not None:
        arrays[object_key] = arrays[object_key].astype(object)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return imgs, classes, values


def _sha256(path):
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def small(tmp_path):
    path = tmp_path / DSPRITES_FILENAME
    imgs, classes, values = _write_npz(path)
    return path, imgs, classes, values


def test_small_file_loads(small):
    path, imgs, classes, values = small
    ds = DSprites(path.parent, verify=False, progress=False)
    assert ds.factor_names == ("shape", "scale", "orientation", "position_x", "position_y")
    assert ds.factor_sizes == SIZES and len(ds) == 48
    assert torch.allclose(ds.factor_values[2], torch.tensor([0.0, math.pi]))
    assert torch.allclose(ds.factor_values[0], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(ds.all_factors(), torch.from_numpy(classes[:, 1:]))
    assert torch.equal(ds.images_at(torch.arange(48), dtype=torch.uint8)[:, 0], torch.from_numpy(imgs))
    image, factors = ds[17]
    assert image.shape == (1, 64, 64) and image.dtype == torch.float32 and factors.dtype == torch.int64
    assert torch.equal(image[0], torch.from_numpy(imgs[17]).float()) and torch.equal(
        factors, ds.all_factors()[17]
    )
    assert torch.equal(ds.images(factors), image)
    # the images are unpacked once into a memory-mapped bit cache next to the file, reused later
    assert ds.cache_path.exists() and ds.cache_path.stat().st_size == 48 * 512 + 128
    mtime = ds.cache_path.stat().st_mtime_ns
    again = DSprites(path.parent, verify=False, progress=False)
    assert again.cache_path.stat().st_mtime_ns == mtime and isinstance(again._storage.array, np.memmap)


def test_uncompressed_file_loads(tmp_path):
    imgs, _, _ = _write_npz(tmp_path / DSPRITES_FILENAME, compressed=False)
    ds = DSprites(tmp_path, verify=False, progress=False)
    assert torch.equal(ds.images_at(torch.arange(48), dtype=torch.uint8)[:, 0], torch.from_numpy(imgs))


def test_checksum_is_verified_by_default(small):
    path = small[0]
    with pytest.raises(RuntimeError, match="md5") as e:
        DSprites(path.parent, progress=False)
    assert str(path) in str(e.value) and "download" in str(e.value)
    ds = DSprites(path.parent, checksum=_sha256(path), progress=False)
    assert len(ds) == 48
    with pytest.raises(ValueError, match="checksum must look like"):
        DSprites(path.parent, checksum="0123abcd", progress=False)


@pytest.mark.parametrize("key", ["latents_values", "latents_classes", "imgs"])
def test_object_arrays_are_refused(tmp_path, key):
    _write_npz(tmp_path / DSPRITES_FILENAME, object_key=key)
    with pytest.raises(ValueError, match="object array") as e:
        DSprites(tmp_path, verify=False, progress=False)
    assert key in str(e.value) and "unpickled" in str(e.value)


def test_truncated_file(small):
    path = small[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="truncated or corrupt") as e:
        DSprites(path.parent, verify=False, progress=False)
    assert str(path) in str(e.value)
    with pytest.raises(RuntimeError, match="md5"):  # with verification, the checksum catches it first
        DSprites(path.parent, progress=False)


def test_corrupt_compressed_data(small):
    path = small[0]
    data = bytearray(path.read_bytes())
    start = data.index(b"imgs.npy") + 200  # inside the deflated images
    data[start : start + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="truncated or corrupt") as e:
        DSprites(path.parent, verify=False, progress=False)
    assert str(path) in str(e.value)
    assert not list(path.parent.glob("*.packed.npy*"))  # no partial cache left behind


def test_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        DSprites(tmp_path, progress=False)
    message = str(e.value)
    assert str(tmp_path / DSPRITES_FILENAME) in message and "download=True" in message
    assert dsprites_module.DSPRITES_URL in message and "\n" not in message


def test_not_a_complete_grid_in_order(tmp_path):
    order = np.random.default_rng(1).permutation(48)
    _write_npz(tmp_path / DSPRITES_FILENAME, order=order)
    with pytest.raises(ValueError, match="complete factor grid"):
        DSprites(tmp_path, verify=False, progress=False)


def test_download_verifies_and_renames(tmp_path, monkeypatch):
    source = tmp_path / "server" / DSPRITES_FILENAME
    source.parent.mkdir()
    imgs, _, _ = _write_npz(source)
    monkeypatch.setattr(dsprites_module, "DSPRITES_URL", source.as_uri())
    root = tmp_path / "data"
    with pytest.raises(RuntimeError, match="md5"):  # default checksum: the real file's
        DSprites(root, download=True, progress=False)
    assert not (root / DSPRITES_FILENAME).exists() and list(root.iterdir()) == []  # no partial download kept
    ds = DSprites(root, download=True, checksum=_sha256(source), progress=False)
    assert (root / DSPRITES_FILENAME).read_bytes() == source.read_bytes()
    assert torch.equal(ds.images_at(torch.arange(48), dtype=torch.uint8)[:, 0], torch.from_numpy(imgs))
    monkeypatch.setattr(dsprites_module, "DSPRITES_URL", (tmp_path / "nowhere.npz").as_uri())
    with pytest.raises(RuntimeError, match="could not download"):
        DSprites(tmp_path / "other", download=True, progress=False)


def test_stale_cache_is_rebuilt(small):
    path, imgs, _, _ = small
    DSprites(path.parent, verify=False, progress=False)
    flipped, _, _ = _write_npz(path, invert=True)
    assert torch.equal(torch.from_numpy(flipped), 1 - torch.from_numpy(imgs))
    cache = path.with_name(path.name + ".packed.npy")
    os.utime(path, ns=(cache.stat().st_mtime_ns + 10**9,) * 2)
    with pytest.warns(RuntimeWarning, match="another source"):
        ds = DSprites(path.parent, verify=False, progress=False)
    assert torch.equal(ds.images_at(torch.arange(48), dtype=torch.uint8)[:, 0], torch.from_numpy(flipped))


def test_dataloader_workers_reopen_the_memory_map(small):
    path = small[0]
    ds = DSprites(path.parent, verify=False, progress=False)
    blob = pickle.dumps(ds)
    assert len(blob) < 20000  # the memory map is not pickled, only its path
    clone = pickle.loads(blob)
    assert clone._storage._array is None and torch.equal(clone[40][0], ds[40][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)
    images, factors = zip(*loader)
    assert torch.equal(torch.cat(factors), ds.all_factors())
    assert torch.equal(torch.cat(images), ds.images_at(torch.arange(48)))


def test_read_only_directory_keeps_the_bits_in_memory(small, monkeypatch):
    path, imgs, _, _ = small

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(dsprites_module, "load_or_build_packed", refuse)
    with pytest.warns(UserWarning, match="in memory"):
        ds = DSprites(path.parent, verify=False, progress=False)
    assert ds.cache_path is None and ds._storage.in_memory
    assert torch.equal(ds.images_at(torch.arange(48), dtype=torch.uint8)[:, 0], torch.from_numpy(imgs))


def _cache(path):
    return path.with_name(path.name + ".packed.npy")


def _payload_offset(path):
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


@contextlib.contextmanager
def _no_unpacking(monkeypatch):
    """Fail on any warning or any unpacking of the .npz inside the block."""

    def refuse(*args):
        raise AssertionError("unpacked although the cache is good")

    with monkeypatch.context() as m, warnings.catch_warnings():
        warnings.simplefilter("error")
        m.setattr(dsprites_module, "_packed_blocks", refuse)
        yield


def _all_images(ds):
    return ds.images_at(torch.arange(len(ds)), dtype=torch.uint8)[:, 0]


@pytest.mark.parametrize("how", ["bit flip", "zeroed images"])
def test_damaged_cache_is_detected_and_rebuilt(small, monkeypatch, how):
    path, imgs, _, _ = small
    DSprites(path.parent, verify=False, progress=False)
    cache = _cache(path)
    stat = cache.stat()
    offset = _payload_offset(cache)
    data = bytearray(cache.read_bytes())
    if how == "bit flip":
        data[offset + 1000] ^= 0x01
    else:
        data[offset:] = bytes(len(data) - offset)
    cache.write_bytes(bytes(data))
    os.utime(cache, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # still newer than the .npz
    with pytest.warns(RuntimeWarning, match="damaged") as record:
        ds = DSprites(path.parent, verify=False, progress=False)
    assert str(cache) in str(record[0].message)
    assert torch.equal(_all_images(ds), torch.from_numpy(imgs))
    with _no_unpacking(monkeypatch):
        again = DSprites(path.parent, verify=False, progress=False)
        assert torch.equal(_all_images(again), torch.from_numpy(imgs))


@pytest.mark.parametrize("verify", [False, True])
def test_source_replaced_by_an_older_file(small, monkeypatch, verify):
    # `cp -p other.npz dsprites.npz`: another file, with a modification time older than the cache's
    path, imgs, _, _ = small
    DSprites(path.parent, verify=verify, checksum=_sha256(path), progress=False)
    cache = _cache(path)
    flipped, _, _ = _write_npz(path, invert=True)
    old = cache.stat().st_mtime_ns - 10**9
    os.utime(path, ns=(old, old))
    with pytest.warns(RuntimeWarning, match="another source") as record:
        ds = DSprites(path.parent, verify=verify, checksum=_sha256(path), progress=False)
    assert str(cache) in str(record[0].message) and str(path) in str(record[0].message)
    assert torch.equal(_all_images(ds), torch.from_numpy(flipped))


def test_verified_cache_is_served_without_unpacking(small, monkeypatch):
    path, imgs, _, _ = small
    checksum = _sha256(path)
    DSprites(path.parent, checksum=checksum, progress=False)
    with _no_unpacking(monkeypatch):
        ds = DSprites(path.parent, checksum=checksum, progress=False)
        assert torch.equal(_all_images(ds), torch.from_numpy(imgs))
        ds = DSprites(path.parent, verify=False, progress=False)
        assert torch.equal(_all_images(ds), torch.from_numpy(imgs))
        # the same bytes with a new modification time (a copy without -p): the checksum still matches
        os.utime(path, ns=(_cache(path).stat().st_mtime_ns + 10**9,) * 2)
        ds = DSprites(path.parent, checksum=checksum, progress=False)
        assert torch.equal(_all_images(ds), torch.from_numpy(imgs))
        assert isinstance(ds._storage.array, np.memmap)


def _one_line_error(excinfo, path):
    message = str(excinfo.value)
    assert isinstance(excinfo.value, (ValueError, FileNotFoundError))
    assert "\n" not in message and str(path) in message
    return message


def test_bad_checksum_is_a_value_error_naming_the_file(small):
    path = small[0]
    with pytest.raises(ValueError, match="md5") as e:
        DSprites(path.parent, progress=False)
    message = _one_line_error(e, path)
    assert "download" in message


def _write_zip(path, arrays):
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            with archive.open(key + ".npy", "w") as f:
                np.lib.format.write_array(f, array, allow_pickle=False)


def _arrays(path):
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in ("imgs", "latents_classes", "latents_values")}


@pytest.mark.parametrize(
    "damage",
    [
        "not a zip",
        "empty",
        "truncated",
        "missing imgs",
        "missing classes",
        "small images",
        "bad classes",
        "bad header",
        "huge class",
    ],
)
def test_every_bad_file_is_one_value_error(small, damage):
    path = small[0]
    arrays = _arrays(path)
    if damage == "not a zip":
        path.write_bytes(b"<html>rate limit exceeded</html>" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "missing imgs":
        del arrays["imgs"]
        _write_zip(path, arrays)
    elif damage == "missing classes":
        del arrays["latents_classes"]
        _write_zip(path, arrays)
    elif damage == "small images":
        arrays["imgs"] = arrays["imgs"][:, :32, :32].copy()
        _write_zip(path, arrays)
    elif damage == "bad classes":
        arrays["latents_classes"] = arrays["latents_classes"][:, :4].copy()
        _write_zip(path, arrays)
    elif damage == "huge class":
        arrays["latents_classes"][5, 3] = 10**12
        _write_zip(path, arrays)
    else:
        _write_zip(path, arrays)
        data = bytearray(path.read_bytes())
        start = data.index(b"{'descr'")
        data[start : start + 8] = b"{'dscr':"
        path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as e:
        DSprites(path.parent, verify=False, progress=False)
    _one_line_error(e, path)
    with pytest.raises(ValueError) as e:
        DSprites(path.parent, checksum=_sha256(path), progress=False)
    _one_line_error(e, path)
    assert not list(path.parent.glob("*.packed.npy*"))
