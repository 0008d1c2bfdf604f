"""Agreement of two partitions: the adjusted Rand index (the clustering experiment's clusters vs arms)."""

from __future__ import annotations

import torch

__all__ = ["adjusted_rand_index"]


def adjusted_rand_index(labels_true, labels_pred) -> float:
    r"""The adjusted Rand index (Hubert & Arabie, 1985) between two partitions of the same N points.

    With the contingency table n_{ij} (points in class i of the first partition and cluster j of the second),
    row sums a_i, column sums b_j and C(m) = m(m − 1)/2 the number of pairs among m points,

    .. math::

        \mathrm{ARI} = \frac{\sum_{ij} C(n_{ij}) - E}{\tfrac12 [\sum_i C(a_i) + \sum_j C(b_j)] - E},
        \qquad E = \frac{\sum_i C(a_i) \sum_j C(b_j)}{C(N)},

    the Rand index corrected for chance: 1 for identical partitions (up to relabelling), about 0 for
    independent ones, and negative for less agreement than chance. When both partitions are the trivial one
    (one cluster, or all singletons) the denominator is 0 and the value is 1.

    :param labels_true: integer labels ``(N,)`` (any values; only equality matters).
    :param labels_pred: integer labels ``(N,)``.
    :returns: the index as a float.
    """
    a = torch.as_tensor(labels_true)
    b = torch.as_tensor(labels_pred)
    for name, t in (("labels_true", a), ("labels_pred", b)):
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype.is_complex:
            raise ValueError(f"{name} must be a 1-D integer tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"labels_true and labels_pred must have the same length, got {len(a)} and {len(b)}")
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"the adjusted Rand index needs at least 2 points, got {n}")
    _, ai = torch.unique(a, return_inverse=True)
    _, bi = torch.unique(b, return_inverse=True)
    na, nb = int(ai.max()) + 1, int(bi.max()) + 1
    table = torch.bincount(ai * nb + bi, minlength=na * nb).reshape(na, nb).double()

    def pairs(m: torch.Tensor) -> torch.Tensor:
        return (m * (m - 1) / 2).sum()

    index = pairs(table)
    rows, cols = pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2)
    maximum = (rows + cols) / 2
    if float(maximum - expected) == 0.0:
        return 1.0
    return float((index - expected) / (maximum - expected))
