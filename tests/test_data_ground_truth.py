"""The interface every ground-truth data set shares (:class:`~pyro_decomp.data.GroundTruthData`): factor
indexing, sampling, images by index or factors; and the packed-image store behind Shapes and dSprites."""

import math

import numpy as np
import pytest
import torch

import pyro_decomp.data.shapes as shapes_module
from pyro_decomp.data import GroundTruthData
from pyro_decomp.data.ground_truth import (
    PackedImages,
    one_line,
    open_packed,
    source_tag,
    write_packed_atomically,
)
from pyro_decomp.data.shapes import FULL_SIZES, SHAPES_FACTOR_NAMES


class _FullGrid(GroundTruthData):
    """The shapes factor grid without images: indexing is all the round-trip test needs."""

    def __init__(self):
        self._set_factors(SHAPES_FACTOR_NAMES, shapes_module._full_values())


def test_index_round_trip_over_the_whole_grid():
    grid = _FullGrid()
    assert len(grid) == 737280 and grid.factor_sizes == FULL_SIZES
    index = torch.arange(len(grid))
    factors = grid.factors_from_index(index)
    assert factors.shape == (737280, 5) and factors.dtype == torch.int64
    assert torch.equal(grid.index_from_factors(factors), index)
    # independent enumeration: C order of the (3, 6, 40, 32, 32) array, i.e. position y fastest
    reference = np.indices(FULL_SIZES).reshape(5, -1).T
    assert torch.equal(grid.all_factors(), torch.from_numpy(reference))
    # dSprites' own formula: index = factors · (245760, 40960, 1024, 32, 1)
    assert torch.equal(grid.index_from_factors(factors), factors @ torch.tensor([245760, 40960, 1024, 32, 1]))
    values = grid.values_from_factors(factors[[0, -1]])
    assert torch.allclose(values[0], torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0]))
    assert torch.allclose(values[1], torch.tensor([3.0, 1.0, 2 * math.pi, 1.0, 1.0]))


def test_index_validation():
    grid = _FullGrid()
    with pytest.raises(ValueError, match="orientation"):
        grid.index_from_factors(torch.tensor([[0, 0, 40, 0, 0]]))
    with pytest.raises(ValueError, match="shape"):
        grid.index_from_factors(torch.tensor([0, 0, 0, 0]))
    with pytest.raises(ValueError, match="integer"):
        grid.index_from_factors(torch.zeros(5))
    with pytest.raises(ValueError, match="737280"):
        grid.factors_from_index(torch.tensor([737280]))


def test_sample_factors_uniform_and_independent():
    grid = _FullGrid()
    n = 60000
    f = grid.sample_factors(n, torch.Generator().manual_seed(0))
    assert f.shape == (n, 5) and f.dtype == torch.int64
    assert torch.equal(f, grid.sample_factors(n, torch.Generator().manual_seed(0)))
    # every level frequency, and every (shape, scale) cell of the joint, within 5 binomial standard errors
    # sqrt(p(1-p)/n) of its probability (131 checks: false alarm < 1e-4)
    for k, size in enumerate(FULL_SIZES):
        freq = torch.bincount(f[:, k], minlength=size).double() / n
        p = 1.0 / size
        assert (freq - p).abs().max() < 5 * math.sqrt(p * (1 - p) / n)
    joint = torch.bincount(f[:, 0] * 6 + f[:, 1], minlength=18).double() / n
    assert (joint - 1 / 18).abs().max() < 5 * math.sqrt(1 / 18 * 17 / 18 / n)


class _Tiny(GroundTruthData):
    """Two factors of 2 and 3 levels; image i is all ones in its first i + 1 rows (distinct images)."""

    def __init__(self):
        self._set_factors(("a", "b"), [torch.tensor([0.0, 1.0]), torch.tensor([10.0, 20.0, 30.0])])

    def _images_uint8(self, index):
        rows = np.arange(64)[None, :, None] <= index.numpy()[:, None, None]
        return np.broadcast_to(rows, (len(index), 64, 64)).astype(np.uint8)


def test_items_images_and_values_of_a_small_grid():
    data = _Tiny()
    assert len(data) == 6 and data.factor_sizes == (2, 3) and data.num_factors == 2
    image, factors = data[4]
    assert image.shape == (1, 64, 64) and image.dtype == torch.float32
    assert factors.tolist() == [1, 1] and int(image.sum()) == 5 * 64
    assert torch.equal(data[-1][0], data[5][0])
    by_factors = data.images(torch.tensor([[1, 1], [0, 2]]), dtype=torch.uint8)
    assert by_factors.dtype == torch.uint8 and torch.equal(by_factors[0].float(), image)
    assert torch.equal(data.images_at(torch.tensor([[4]]))[0, 0], image)  # index shape S -> S + (1, 64, 64)
    assert data.values_from_factors(torch.tensor([1, 2])).tolist() == [1.0, 30.0]
    assert data.sample_factors(0).shape == (0, 2)
    with pytest.raises(ValueError, match="non-negative integer"):
        data.sample_factors(-1)


def test_packed_images_round_trip_through_an_atomic_file(tmp_path):
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, size=(10, 64, 64), dtype=np.uint8)
    packed = np.packbits(bits, axis=-1)
    blocks = [packed[:4], packed[4:]]
    path = write_packed_atomically(tmp_path / "p.npy", 10, blocks, source=(source_tag("x"),))
    assert [p.name for p in tmp_path.iterdir()] == ["p.npy"]  # no temporary file left
    store = PackedImages(path=path)
    assert len(store) == 10 and not store.in_memory
    assert np.array_equal(store.unpack(np.array([[3, 7]])), bits[[3, 7]][None])
    assert np.array_equal(PackedImages(array=packed).unpack(np.arange(10)), bits)
    with pytest.raises(RuntimeError, match="expected 10"):
        write_packed_atomically(tmp_path / "short.npy", 10, [packed[:4]])
    assert not (tmp_path / "short.npy").exists()
    with pytest.raises(ValueError, match="holds 10 images, expected 11"):
        open_packed(path, num_images=11)
    with pytest.raises(ValueError, match="exactly one"):
        PackedImages()
    with pytest.raises(ValueError, match="packed binary images"):
        PackedImages(array=bits)


def test_one_line_and_source_tags():
    assert one_line("a\n  b\tc ") == "a b c"
    assert source_tag(1, "x") == source_tag(1, "x") != source_tag(1, "y")
    assert len(source_tag("anything")) == 12
