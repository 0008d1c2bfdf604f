"""Image-grid figures: reconstructions, samples and latent traversals."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from pyro_decomp.plots._common import (
    CELL,
    FigSize,
    PathLike,
    _as_images,
    _check_ncol,
    _coordinate,
    _figure,
    _is_points,
    _label_rows,
    _numpy,
    _save,
    _show,
    _tile,
)
from pyro_decomp.util import module_device

__all__ = ["latent_traversal", "plot_reconstructions", "plot_samples", "plot_traversals"]


def plot_reconstructions(
    originals,
    reconstructions,
    path: PathLike,
    ncol: int = 8,
    figsize: FigSize = None,
    dpi: float = 100,
    title: Optional[str] = None,
) -> PathLike:
    """Originals against their reconstructions.

    Images (``(n, H, W)`` or ``(n, C, H, W)``, C in {1, 3}, values in [0, 1]): rows of ``ncol`` originals,
    each followed by the row of their reconstructions, the rows labelled "data" and "reconstruction";
    default figsize ``(ncol * CELL, 2 * ceil(n / ncol) * CELL)``. 2-D points ``(n, 2)``: both point sets,
    each original joined to its reconstruction by a segment, told apart by the legend; default figsize
    ``(5, 5)``. ``title`` (default ``"data and their reconstructions"``) can name the model, e.g. its arm.
    """
    title = "data and their reconstructions" if title is None else title
    if _is_points(originals):
        a, b = _numpy(originals, "originals"), _numpy(reconstructions, "reconstructions")
        if a.shape != b.shape:
            raise ValueError(f"originals {a.shape} and reconstructions {b.shape} must have the same shape")
        fig = _figure(figsize or (5, 5), dpi)
        ax = fig.add_subplot()
        for p, q in zip(a, b):
            ax.plot([p[0], q[0]], [p[1], q[1]], color="0.7", linewidth=0.5)
        ax.scatter(a[:, 0], a[:, 1], s=6, label="data")
        ax.scatter(b[:, 0], b[:, 1], s=6, label="reconstruction")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel(_coordinate("x", 0))
        ax.set_ylabel(_coordinate("x", 1))
        ax.set_title(title, fontsize=10)
        ax.legend(loc="best", fontsize=8, markerscale=2)
        return _save(fig, path)
    a, b = _as_images(originals, "originals"), _as_images(reconstructions, "reconstructions")
    if a.shape != b.shape:
        raise ValueError(f"originals {a.shape} and reconstructions {b.shape} must have the same shape")
    ncol = _check_ncol(ncol)
    rows = math.ceil(a.shape[0] / ncol)
    pad = np.ones((rows * ncol - a.shape[0],) + a.shape[1:], dtype=np.float32)
    a, b = np.concatenate([a, pad]), np.concatenate([b, pad])
    shape = (rows, ncol) + a.shape[1:]
    # interleave: originals of row r, then their reconstructions
    paired = np.stack([a.reshape(shape), b.reshape(shape)], axis=1).reshape((-1,) + a.shape[1:])
    fig = _figure(figsize or (ncol * CELL, 2 * rows * CELL), dpi)
    ax = fig.add_subplot()
    _show(ax, _tile(paired, ncol))
    h = a.shape[1]
    _label_rows(ax, [1 + r * (h + 1) + h / 2 for r in range(2 * rows)], ["data", "reconstruction"] * rows)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_samples(
    samples,
    path: PathLike,
    ncol: int = 8,
    figsize: FigSize = None,
    dpi: float = 100,
    title: Optional[str] = None,
    data=None,
) -> PathLike:
    """Samples from the model, e.g. ``vae.sample(64)`` (decoder means E[x|z] of z ~ p(z)).

    Images: a grid of ``ncol`` columns, default figsize ``(ncol * CELL, ceil(n / ncol) * CELL)``. 2-D
    points ``(n, 2)``: a scatter plot, default figsize ``(5, 5)``, with equal scales; given ``data``
    ``(m, 2)``, the data are drawn faintly behind and set the plotting range, so that samples and data
    share the data's axes. ``title`` (default ``"samples from the model"``) should say what the samples
    are.
    """
    title = "samples from the model" if title is None else title
    if _is_points(samples):
        a = _numpy(samples, "samples")
        fig = _figure(figsize or (5, 5), dpi)
        ax = fig.add_subplot()
        if data is not None:
            d = _numpy(data, "data")
            if not _is_points(d):
                raise ValueError(f"data must be points (m, 2) like the samples, got shape {d.shape}")
            ax.scatter(d[:, 0], d[:, 1], s=4, color="0.75", alpha=0.5, linewidths=0, label="data")
            both = np.concatenate([d, a])
            lo, hi = both.min(0), both.max(0)
            pad = 0.05 * max(float((hi - lo).max()), 1e-6)
            ax.set_xlim(lo[0] - pad, hi[0] + pad)
            ax.set_ylim(lo[1] - pad, hi[1] + pad)
        ax.scatter(a[:, 0], a[:, 1], s=4, label="samples")
        ax.set_aspect("equal", adjustable="box" if data is not None else "datalim")
        ax.set_xlabel(_coordinate("x", 0))
        ax.set_ylabel(_coordinate("x", 1))
        ax.set_title(title, fontsize=10)
        if data is not None:
            ax.legend(fontsize=8, markerscale=2, loc="best")
        return _save(fig, path)
    a = _as_images(samples, "samples")
    ncol = _check_ncol(ncol)
    rows = math.ceil(a.shape[0] / ncol)
    fig = _figure(figsize or (ncol * CELL, rows * CELL), dpi)
    ax = fig.add_subplot()
    _show(ax, _tile(a, ncol))
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


@torch.no_grad()
def latent_traversal(
    vae, z: Optional[torch.Tensor] = None, values=None, dims: Optional[Sequence[int]] = None
) -> torch.Tensor:
    """Decoded traversals: for each dimension d, ``z`` with its d-th coordinate set to each of ``values``.

    :param vae: a :class:`~pyro_decomp.vae.DecompVAE` (its ``decode`` gives E[x|z]).
    :param z: the ``(D,)`` base point (default: zeros).
    :param values: the values taken by the traversed coordinate (default: 9 points from -3 to 3).
    :param dims: the dimensions to traverse (default: all).
    :returns: ``(len(dims), len(values), *obs_shape)``.
    """
    dim = int(vae.latent_dim)
    z = torch.zeros(dim) if z is None else torch.as_tensor(z, dtype=torch.float32).reshape(-1)
    if z.numel() != dim:
        raise ValueError(f"z must have {dim} coordinates, got shape {tuple(z.shape)}")
    values = torch.linspace(-3.0, 3.0, 9) if values is None else torch.as_tensor(values, dtype=z.dtype)
    dims = list(range(dim)) if dims is None else [int(d) for d in dims]
    if any(not 0 <= d < dim for d in dims):
        raise ValueError(f"dims must lie in [0, {dim}), got {dims}")
    grid = z.expand(len(dims), values.numel(), dim).clone()
    for row, d in enumerate(dims):
        grid[row, :, d] = values
    was_training = vae.training
    vae.eval()
    try:
        return vae.decode(grid.to(module_device(vae))).cpu()
    finally:
        vae.train(was_training)


def plot_traversals(
    images,
    path: PathLike,
    values=None,
    dims: Optional[Sequence[int]] = None,
    figsize: FigSize = None,
    dpi=100,
    title: Optional[str] = None,
) -> PathLike:
    """Latent traversals, one row per latent dimension (e.g. from :func:`latent_traversal`).

    Rows are labelled with their latent dimension, columns with the value the traversed coordinate takes
    (left to right, increasing, when ``values`` is not given).

    :param images: ``(R, S, H, W)`` or ``(R, S, C, H, W)``: R dimensions, S values each.
    :param values: the S traversed values, written under the columns (optional).
    :param dims: the dimension of each row, for the row labels (default ``0..R-1``).
    :param figsize: default ``(S * CELL + 0.6, R * CELL + 0.4)``: the grid plus margins for labels.
    :param title: default ``"latent traversals"``; e.g. the model's arm and the base point.
    """
    a = _numpy(images, "images")
    if a.ndim not in (4, 5):
        raise ValueError(f"images must have shape (R, S, H, W) or (R, S, C, H, W), got {a.shape}")
    rows, steps = a.shape[:2]
    tiles = _as_images(a.reshape((rows * steps,) + a.shape[2:]), "images")
    h, w = tiles.shape[1:3]
    dims = list(range(rows)) if dims is None else list(dims)
    if len(dims) != rows:
        raise ValueError(f"dims has {len(dims)} entries for {rows} rows of images")
    if values is not None:
        values = _numpy(values, "values").reshape(-1)
        if values.size != steps:
            raise ValueError(f"values has {values.size} entries for {steps} columns")
    fig = _figure(figsize or (steps * CELL + 0.6, rows * CELL + 0.4), dpi)
    ax = fig.add_subplot()
    _show(ax, _tile(tiles, steps))
    _label_rows(ax, [1 + r * (h + 1) + h / 2 for r in range(rows)], [_coordinate("z", d) for d in dims])
    if values is not None:
        ax.set_xticks([1 + s * (w + 1) + w / 2 for s in range(steps)])
        ax.set_xticklabels([f"{v:.3g}" for v in values], fontsize=7)
        ax.set_xlabel("value of the traversed latent coordinate", fontsize=8)
    else:
        ax.set_xlabel("value of the traversed latent coordinate (increasing \u2192)", fontsize=8)
    ax.set_ylabel("latent dimension", fontsize=8)
    ax.set_title("latent traversals" if title is None else title, fontsize=10)
    return _save(fig, path)
