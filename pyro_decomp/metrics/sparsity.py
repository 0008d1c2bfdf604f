"""Sparsity of a representation: the normalised Hoyer measure of the paper's sparse-prior experiment."""

from __future__ import annotations

import math

import torch

from pyro_decomp.metrics._common import _as_matrix

__all__ = ["hoyer_sparsity"]


def hoyer_sparsity(codes, normalise: bool = True) -> float:
    """The normalised Hoyer sparsity of the paper's sparse-prior experiment (Mathieu et al., 2019, §5).

    With each dimension divided by its standard deviation over the data set (when ``normalise``),

        Hoyer(z) = (√D - ‖z‖₁ / ‖z‖₂) / (√D - 1) ∈ [0, 1],

    averaged over the points: 1 for a one-hot vector, 0 when all ``|z_d|`` are equal. Points with z = 0 have
    no defined value and are left out of the average.

    :param codes: ``(N, D)``, D >= 2.
    :returns: the mean sparsity as a float.
    """
    codes = _as_matrix(codes, "codes", "D")
    if not codes.is_floating_point():
        codes = codes.double()
    n, dim = codes.shape
    if dim < 2:
        raise ValueError(
            f"the Hoyer measure needs D >= 2 dimensions, got codes of shape {tuple(codes.shape)}"
        )
    z = codes.double()
    if normalise:
        std = z.std(0, correction=0)
        if not bool((std > 0).all()):
            bad = torch.nonzero(std <= 0).flatten().tolist()
            raise ValueError(f"dimensions {bad} are constant over the data set: cannot divide by their std")
        z = z / std
    l2 = z.norm(dim=-1)
    defined = l2 > 0
    if not bool(defined.any()):
        raise ValueError("every code is the zero vector: the Hoyer measure is undefined")
    l1 = z.abs().sum(-1)
    root = math.sqrt(dim)
    values = (root - l1[defined] / l2[defined]) / (root - 1)
    return float(values.mean())
