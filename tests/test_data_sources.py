"""One's own data: array files, image folders, factories; the record of a source and its check."""

import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_decomp.data.sources import (
    ArrayData,
    DataSourceError,
    as_inputs,
    check_source,
    load_source,
    record_source,
    source_kind,
    source_name,
)


def _save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_source_kinds_and_names(tmp_path):
    assert source_kind("pinwheel") == "builtin" and source_kind("memory") == "memory"
    assert source_kind("a/b.npz") == source_kind("x.NPY") == source_kind("t.pt") == "array"
    assert source_kind(str(tmp_path)) == "folder"
    assert source_kind("mypkg.sub:make") == "factory"
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*array file"):
        source_kind("mnist")
    assert source_name("data/rings.npz") == "rings" and source_name("m:make") == "make"


def test_inputs_scale_uint8_and_add_a_channel():
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    x = as_inputs(images)
    assert x.shape == (2, 1, 4, 4) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], torch.from_numpy(images).float() / 255)
    assert as_inputs(np.array([1.0, 2.0, 3.0])).shape == (3, 1)
    last = np.random.default_rng(0).integers(0, 256, (2, 8, 6, 3), dtype=np.uint8)
    assert torch.equal(as_inputs(last), torch.from_numpy(last).permute(0, 3, 1, 2).float() / 255)
    assert as_inputs(np.zeros((2, 3, 8, 3))).shape == (2, 3, 8, 3)  # channels first already
    with pytest.raises(DataSourceError, match="non-finite"):
        as_inputs(np.array([[0.0, np.nan]]))


def test_npz_split_is_seeded_disjoint_and_complete(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    y = np.arange(50) % 5
    path = _save_npz(tmp_path / "d.npz", x=x, y=y)
    train, test = load_source(path, {})
    assert isinstance(train, ArrayData) and (len(train), len(test)) == (40, 10)
    rows = torch.cat([train.tensors[0], test.tensors[0]])
    # the two parts are the file's rows, each once: same multiset as x
    assert torch.equal(rows[rows[:, 0].argsort()], torch.from_numpy(x)[torch.from_numpy(x)[:, 0].argsort()])
    # labels travel with their points
    where = {tuple(r.tolist()): i for i, r in enumerate(torch.from_numpy(x))}
    assert all(int(test.labels[k]) == y[where[tuple(r.tolist())]] for k, r in enumerate(test.tensors[0]))
    again = load_source(path, {})[1]
    assert torch.equal(again.tensors[0], test.tensors[0])  # the same split at every rebuild
    other = load_source(path, {"split_seed": 1, "test_fraction": 0.5})[1]
    assert len(other) == 25 and not torch.equal(other.tensors[0][:10], test.tensors[0])


def test_npz_given_test_split_and_factors(tmp_path):
    x, xt = np.zeros((6, 2), np.float32), np.ones((4, 2), np.float32)
    f, ft = np.arange(12).reshape(6, 2), np.arange(8).reshape(4, 2)
    path = _save_npz(tmp_path / "d.npz", x=x, x_test=xt, factors=f, factors_test=ft)
    train, test = load_source(path, {})
    assert torch.equal(test.tensors[0], torch.ones(4, 2)) and torch.equal(test.factors, torch.from_numpy(ft))
    assert torch.equal(test.tensors[1], test.factors) and test.labels is None


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"x": np.zeros((5, 2)), "z": np.zeros(5)}, "expected 'x'"),
        ({"x": np.zeros((5, 2)), "y": np.zeros((4,))}, "y of .* must be integers of shape \\(N,\\)"),
        ({"x": np.zeros((5, 2)), "y": np.full(5, 0.5)}, "must be integers"),
        ({"x": np.zeros((5, 2)), "x_test": np.zeros((2, 3))}, "x_test .* has points of shape"),
        ({"x": np.zeros((5, 2)), "y": np.zeros(5, int), "x_test": np.zeros((2, 2))}, "give both 'y' and"),
    ],
)
def test_bad_arrays_refused_in_one_line(tmp_path, arrays, match):
    path = _save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataSourceError, match=match) as e:
        load_source(path, {})
    assert "\n" not in str(e.value)


def test_npy_and_pt_files(tmp_path):
    np.save(tmp_path / "v.npy", np.ones((5, 7), np.float64))
    assert load_source(str(tmp_path / "v.npy"), {})[0].tensors[0].shape == (4, 7)
    torch.save({"x": torch.zeros(5, 3, 8, 8, dtype=torch.uint8), "y": torch.arange(5)}, tmp_path / "t.pt")
    train, test = load_source(str(tmp_path / "t.pt"), {"test_fraction": 0.4})
    assert train.tensors[0].shape == (3, 3, 8, 8) and len(test) == 2 and test.labels is not None
    torch.save({"x": torch.zeros(3, 2), "note": object()}, tmp_path / "pickled.pt")  # not tensors only
    with pytest.raises(DataSourceError, match="cannot read the array file .*pickled.pt"):
        load_source(str(tmp_path / "pickled.pt"), {})
    with pytest.raises(DataSourceError, match="unknown data options \\['size'\\]"):
        load_source(str(tmp_path / "v.npy"), {"size": 3})


@pytest.mark.parametrize(
    "name, what",
    [
        ("text.npz", "not a .npz archive"),
        ("text.npy", "not a .npy file"),
        ("empty.npz", "not a .npz archive"),
    ],
)
def test_a_file_not_in_its_extensions_format_is_named_as_such(tmp_path, name, what):
    path = tmp_path / name
    path.write_bytes(b"" if name.startswith("empty") else b"x,y\n1,2\n")  # e.g. a CSV saved as .npz
    with pytest.raises(DataSourceError, match=f"cannot read the array file .*{name}: it is {what}") as e:
        load_source(str(path), {})
    assert "pickle" not in str(e.value)  # numpy's own message for such a file speaks of pickled data
    np.savez(tmp_path / "none.npz")  # an empty archive is one: it fails for having no x, not for its format
    with pytest.raises(DataSourceError, match=r"none.npz holds arrays \[\]; expected 'x'"):
        load_source(str(tmp_path / "none.npz"), {})


def test_record_is_the_files_digest_and_check_names_a_change_or_vanishing(tmp_path):
    path = _save_npz(tmp_path / "d.npz", x=np.zeros((5, 2), np.float32))
    record = record_source(path)
    content = open(path, "rb").read()
    assert record["sha256"] == hashlib.sha256(content).hexdigest() and record["size"] == len(content)
    assert record["path"] == os.path.abspath(path)
    check_source(path, record)  # unchanged: no error
    _save_npz(path, x=np.ones((5, 2), np.float32))
    with pytest.raises(DataSourceError, match=f"data file {path} has changed"):
        check_source(path, record)
    os.remove(path)
    with pytest.raises(DataSourceError, match=f"data file {path} .* has vanished"):
        check_source(path, record)


def test_memory_record_needs_the_data_again():
    data = (ArrayData(torch.zeros(5, 2)), ArrayData(torch.zeros(2, 2)))
    record = record_source("memory", data)
    assert record == {"kind": "memory", "train_points": 5, "test_points": 2}
    check_source("memory", record, data)
    with pytest.raises(DataSourceError, match="held in memory .* pass them again with data="):
        check_source("memory", record)
    with pytest.raises(DataSourceError, match="1 test points"):
        check_source("memory", record, (data[0], ArrayData(torch.zeros(1, 2))))


def _png(path, array):
    Image.fromarray(array).save(path)


def test_image_folder_with_classes_resized_and_coloured(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        os.makedirs(tmp_path / name)
        for i in range(3):
            _png(tmp_path / name / f"{i}.png", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    train, test = load_source(str(tmp_path), {"image_size": 8, "test_fraction": 0.34})
    assert train.tensors[0].shape == (4, 3, 8, 8) and len(test) == 2
    assert sorted(torch.cat([train.labels, test.labels]).tolist()) == [0, 0, 0, 1, 1, 1]
    assert train.classes == ["cats", "dogs"]
    # unresized: the pixels of the file itself, scaled to [0, 1]
    flat = tmp_path / "flat"
    os.makedirs(flat)
    arrays = [rng.integers(0, 256, (6, 6), dtype=np.uint8) for _ in range(4)]
    for i, a in enumerate(arrays):
        _png(flat / f"{i}.png", a)
    train, test = load_source(str(flat), {"test_fraction": 0.25})
    assert train.labels is None and train.tensors[0].shape == (3, 1, 6, 6)
    every = torch.cat([train.tensors[0], test.tensors[0]])
    for a in arrays:
        assert any(torch.equal(e[0], torch.from_numpy(a).float() / 255) for e in every)
    record = record_source(str(flat))
    assert record["files"] == 4 and record["kind"] == "folder"
    _png(flat / "0.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(DataSourceError, match="image folder .*flat has changed"):
        check_source(str(flat), record)


def test_factory_returns_the_pair_and_bad_factories_are_named(tmp_path, monkeypatch):
    (tmp_path / "ownfactory.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "def make(n=6):\n    return TensorDataset(torch.zeros(n, 2)), TensorDataset(torch.ones(2, 2))\n"
        "def bad():\n    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    train, test = load_source("ownfactory:make", {"n": 4})
    assert len(train) == 4 and len(test) == 2
    assert record_source("ownfactory:make")["path"] == str(tmp_path / "ownfactory.py")
    with pytest.raises(DataSourceError, match="must return a pair"):
        load_source("ownfactory:bad", {})
    with pytest.raises(DataSourceError, match="has no function 'nope'"):
        load_source("ownfactory:nope", {})
    with pytest.raises(DataSourceError, match="cannot import 'nosuchmodule19'.*PYTHONPATH"):
        load_source("nosuchmodule19:make", {})
