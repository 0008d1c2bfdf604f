"""take: the tensors of a data set at given indices, the same for every kind of data set as item by item."""

import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from pyro_decomp.data import FashionMNIST32, Shapes
from pyro_decomp.data.indexing import batches, first_tensor, grid_subset, subset_index, take


class _Items(Dataset):
    """A data set that only knows its items (no fast path): (input, label) pairs."""

    def __init__(self, n):
        self.x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], torch.tensor(i % 4)


def _by_items(dataset, index):
    items = [dataset[int(i)] for i in index]
    x = torch.stack([first_tensor(item) for item in items])
    y = torch.stack([torch.as_tensor(item[1]) for item in items]) if isinstance(items[0], tuple) else None
    return x, y


SHAPES = {"scale": 3, "orientation": 20, "position_x": 8, "position_y": 8}


@pytest.mark.parametrize("kind", ["tensors", "items", "subset", "shapes", "fashion"])
def test_take_equals_reading_item_by_item(kind):
    if kind == "tensors":
        data = TensorDataset(torch.randn(20, 2), torch.arange(20))
    elif kind == "items":
        data = _Items(20)
    elif kind == "subset":
        data = Subset(TensorDataset(torch.randn(30, 2), torch.arange(30)), list(range(29, 9, -1)))
    elif kind == "shapes":
        data = Shapes(subsample=SHAPES, cache=False, progress=False)
    else:
        images = torch.randint(
            0, 256, (12, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
        )
        data = FashionMNIST32(images, torch.arange(12) % 10)
    index = torch.tensor([5, 0, 3, 3, len(data) - 1])
    x, y = take(data, index)
    ex, ey = _by_items(data, index)
    assert torch.equal(x, ex) and torch.equal(y, ey)


def test_take_checks_its_indices_and_inputs_without_labels():
    data = TensorDataset(torch.randn(4, 2))
    x, y = take(data, [1, 2])
    assert x.shape == (2, 2) and y is None
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        take(data, [4])


def test_subset_index_is_sorted_distinct_and_seeded():
    a = subset_index(100, 10, torch.Generator().manual_seed(0))
    b = subset_index(100, 10, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and len(set(a.tolist())) == 10 and torch.equal(a, a.sort().values)
    assert torch.equal(subset_index(5, None), torch.arange(5)) and torch.equal(
        subset_index(5, 9), torch.arange(5)
    )


def test_grid_subset_keeps_every_kth_value_of_each_factor():
    data = Shapes(subsample=SHAPES, cache=False, progress=False)
    sub = grid_subset(data, {"shape": 2})
    _, factors = take(sub, torch.arange(len(sub)))
    assert len(sub) * 3 == len(data) * 2  # shapes 0 and 2 of 3
    assert set(factors[:, 0].tolist()) == {0, 2}
    with pytest.raises(ValueError, match="colour"):
        grid_subset(data, {"colour": 2})


def test_batches_with_and_without_workers_agree():
    data = TensorDataset(torch.randn(10, 2), torch.arange(10))
    order = [[3, 1, 4], [0, 9], [5, 2, 6, 7, 8]]
    here = list(batches(data, order))
    assert [b.shape[0] for b in here] == [3, 2, 5] and torch.equal(here[0], data.tensors[0][[3, 1, 4]])
    loaded = list(batches(data, order, num_workers=1))
    assert all(torch.equal(a, b) for a, b in zip(here, loaded))
