"""The pinwheel data set (Adams' generator, as used by Johnson et al. 2016 and Mathieu et al. 2019)."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

__all__ = ["pinwheel", "PinwheelDataset"]


def pinwheel(
    num_classes: int = 4,
    num_per_class: int = 100,
    radial_std: float = 0.1,
    tangential_std: float = 0.3,
    rate: float = 0.25,
    seed: int = 0,
    dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw a pinwheel: ``num_classes`` curved arms of ``num_per_class`` points each.

    For a point of arm k: u ~ N(1, tangential_std²) (the coordinate along the arm), v ~ N(0, radial_std²)
    (across it), θ = 2πk/num_classes + rate·exp(u), and the point is the row vector (u, v) times the rotation
    matrix [[cos θ, −sin θ], [sin θ, cos θ]], i.e. (u, v) turned by −θ, as in Adams' generator (the one the
    paper's ``pinwheel(0.1, 0.3, 4, 100, 0.25)`` call used), so that the point's angle is
    atan2(v, u) − θ: arm k starts near angle −2πk/num_classes and curls clockwise.

    :param dtype: the points' floating dtype; default ``torch.get_default_dtype()``. The points are drawn in
        float64 and rounded to it, so a seed gives the same pinwheel in every dtype.
    :returns: ``(points, labels)``: ``(N, 2)`` of ``dtype`` and int64 ``(N,)``, N = num_classes·num_per_class,
        ordered by arm.
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype such as torch.float64, got {dtype!r}")
    for name, value in (("num_classes", num_classes), ("num_per_class", num_per_class)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("radial_std", radial_std), ("tangential_std", tangential_std)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    gen = torch.Generator().manual_seed(int(seed))
    n = int(num_classes) * int(num_per_class)
    labels = torch.arange(int(num_classes)).repeat_interleave(int(num_per_class))
    noise = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    u = 1.0 + tangential_std * noise[:, 0]
    v = radial_std * noise[:, 1]
    theta = 2 * math.pi * labels.double() / num_classes + rate * torch.exp(u)
    c, s = torch.cos(theta), torch.sin(theta)
    points = torch.stack([c * u + s * v, c * v - s * u], dim=-1)
    return points.to(dtype), labels


class PinwheelDataset(torch.utils.data.Dataset):
    """A :func:`pinwheel` draw as a ``Dataset`` of ``(point (2,), label)`` pairs."""

    def __init__(self, **kwargs):
        self.points, self.labels = pinwheel(**kwargs)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.points[i], self.labels[i]
