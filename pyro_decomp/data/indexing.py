"""The one way to read a data set: the inputs (and labels) of the points at given indices.

Every consumer of data in the package (the trainer, evaluation, the experiments and the metrics) reads
through :func:`take`, so a data set type is supported everywhere once it is supported here. It reads a whole
index at once where the data set can (tensor data sets, ground-truth data sets with ``images_at``,
Fashion-MNIST's uint8 store, subsets of these) and falls back to stacking items for any other ``Dataset``
whose items are inputs or ``(input, label, ...)`` tuples.
"""

from __future__ import annotations

from typing import Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from pyro_decomp.data.fashion_mnist import FashionMNIST32
from pyro_decomp.data.ground_truth import GroundTruthData

__all__ = ["first_tensor", "take", "subset_index", "grid_subset", "batches"]


def first_tensor(item) -> torch.Tensor:
    """The input of a data item: the item itself, the first entry of a tuple/list, or a dict's ``"x"``."""
    if torch.is_tensor(item):
        return item
    if isinstance(item, (tuple, list)) and item and torch.is_tensor(item[0]):
        return item[0]
    if isinstance(item, dict) and "x" in item:
        return item["x"]
    raise ValueError(
        "data items must be input tensors, (input, ...) tuples or dicts with key 'x', "
        f"got {type(item).__name__}"
    )


def _as_index(index, n: int) -> torch.Tensor:
    index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
    if len(index) and (int(index.min()) < -n or int(index.max()) >= n):
        raise IndexError(f"indices must lie in [0, {n}), got range [{int(index.min())}, {int(index.max())}]")
    return index


def take(dataset: Dataset, index) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(x, y)`` of the points ``index`` (1-D) of ``dataset``, in that order.

    ``x`` stacks the inputs ``(len(index), *obs_shape)``; ``y`` the labels ``(len(index),)`` or, for
    ground-truth data, the factor indices ``(len(index), num_factors)``; ``None`` when items carry no label.
    """
    index = _as_index(index, len(dataset))
    if isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
        return tensors[0][index], (tensors[1][index] if len(tensors) > 1 else None)
    if isinstance(dataset, Subset):
        return take(dataset.dataset, torch.as_tensor(dataset.indices, dtype=torch.long)[index])
    if isinstance(dataset, GroundTruthData):
        return dataset.images_at(index), dataset.factors_from_index(index)
    if isinstance(dataset, FashionMNIST32):
        return dataset.transform(dataset.images[index]), dataset.targets[index]
    items = [dataset[int(i)] for i in index]
    x = torch.stack([first_tensor(item) for item in items])
    y = None
    if items and isinstance(items[0], (tuple, list)) and len(items[0]) > 1:
        y = torch.stack([torch.as_tensor(item[1]) for item in items])
    return x, y


def subset_index(n: int, size: Optional[int], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """At most ``size`` distinct indices of ``range(n)``, drawn with ``generator``, in increasing order
    (all of them, without a draw, when ``size`` is None or at least n)."""
    if size is None or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:size].sort().values


def grid_subset(dataset: GroundTruthData, steps: Mapping[str, int]) -> Subset:
    """The points of a ground-truth data set whose factor indices are multiples of ``steps`` (a smaller
    complete grid), as a ``Subset`` whose items keep the full grid's factor indices."""
    unknown = sorted(set(steps) - set(dataset.factor_names))
    if unknown:
        raise ValueError(
            f"subset steps name unknown factors {unknown}; the factors are {dataset.factor_names}"
        )
    axes = [
        torch.arange(0, n, int(steps.get(name, 1)))
        for name, n in zip(dataset.factor_names, dataset.factor_sizes)
    ]
    grid = torch.cartesian_prod(*axes).reshape(-1, len(axes))
    return Subset(dataset, dataset.index_from_factors(grid).tolist())


def batches(
    dataset: Dataset, index_batches: Sequence[List[int]], num_workers: int = 0, pin_memory: bool = False
) -> Iterator[torch.Tensor]:
    """The inputs of each batch of indices in turn: read by :func:`take` in this process, or with
    ``num_workers`` > 0 by a ``DataLoader`` whose workers read ahead."""
    if num_workers == 0:
        for idx in index_batches:
            yield take(dataset, idx)[0]
        return
    loader = DataLoader(
        dataset,
        batch_sampler=[list(b) for b in index_batches],
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    for batch in loader:
        yield first_tensor(batch)
