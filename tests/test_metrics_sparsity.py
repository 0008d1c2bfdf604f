"""pyro_decomp.metrics.sparsity: The normalised Hoyer sparsity."""

import math

import pytest
import torch

from pyro_decomp.metrics import (
    hoyer_sparsity,
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- Hoyer
def test_hoyer_hand_computed():
    one_hot = torch.eye(4) * torch.tensor([1.0, -3.0, 0.5, 2.0])[:, None]
    assert hoyer_sparsity(one_hot, normalise=False) == pytest.approx(1.0)
    equal = torch.tensor([[1.0, -1.0, 1.0, 1.0], [-2.0, 2.0, 2.0, -2.0]])
    assert hoyer_sparsity(equal, normalise=False) == pytest.approx(0.0, abs=1e-12)
    # (3, 4, 0): l1 = 7, l2 = 5; (1, 1, 1): 0; (0, 0, 2): 1
    mixed = torch.tensor([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 2.0]])
    r3 = math.sqrt(3)
    assert hoyer_sparsity(mixed, normalise=False) == pytest.approx(((r3 - 7 / 5) / (r3 - 1) + 0 + 1) / 3)
    # a zero vector is left out of the average
    with_zero = torch.cat([mixed, torch.zeros(1, 3)])
    assert hoyer_sparsity(with_zero, normalise=False) == pytest.approx(hoyer_sparsity(mixed, normalise=False))


def test_hoyer_normalises_each_dimension_by_its_std():
    codes = torch.randn(100, 5, generator=gen(0), dtype=torch.float64) * torch.tensor(
        [0.1, 1.0, 5.0, 20.0, 2.0]
    )
    std = codes.std(0, correction=0)
    assert hoyer_sparsity(codes) == pytest.approx(hoyer_sparsity(codes / std, normalise=False), rel=1e-12)
    assert hoyer_sparsity(codes * 7.0) == pytest.approx(hoyer_sparsity(codes), rel=1e-12)


def test_hoyer_errors():
    with pytest.raises(ValueError, match="D >= 2"):
        hoyer_sparsity(torch.randn(5, 1))
    with pytest.raises(ValueError, match=r"dimensions \[1\] are constant"):
        hoyer_sparsity(torch.stack([torch.randn(5), torch.ones(5)], -1))
