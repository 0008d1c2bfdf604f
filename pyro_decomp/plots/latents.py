"""Figures of the latent space: q(z) against p(z), the encodings of several arms, latent magnitudes."""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from pyro_decomp.plots._common import (
    CONTOUR_FRACTIONS,
    FigSize,
    PathLike,
    _coordinate,
    _density_on_grid,
    _figure,
    _numpy,
    _prior_draws,
    _save,
)

__all__ = ["plot_aggregate_posterior", "plot_encodings_by_arm", "plot_latent_magnitude"]


def plot_aggregate_posterior(
    codes,
    prior,
    path: PathLike,
    bins: int = 60,
    num_prior_samples: int = 20000,
    generator: Optional[torch.Generator] = None,
    figsize: FigSize = None,
    dpi: float = 100,
    title: Optional[str] = None,
) -> PathLike:
    """The aggregate encoding q(z) against the prior p(z) -- the alignment the paper's α controls.

    ``codes`` are draws from q(z) = (1/N) Σ_n q(z|x_n): one ``z ~ q(z|x_n)`` per data point, ``(M, D)``.

    * D = 2: a Gaussian kernel density estimate of q(z) from the codes (Scott's bandwidth per axis: a few
      hundred codes give a smooth density, not the speckle of a histogram), the codes drawn over it as
      points and the prior's contours over both, beside the prior's density exp(log p(z)) on the same
      ``bins`` x ``bins`` grid; equal scales on both axes (a square range); default figsize ``(9, 4)``.
    * otherwise: one panel per dimension, the codes' marginal histogram against the prior's marginal (a
      histogram of ``num_prior_samples`` prior draws, so any prior works); default figsize
      ``(3 * ncol, 2.5 * nrow)`` with ``ncol = min(D, 4)``.

    Prior draws (also used to set the 2-D plotting range) come from ``generator`` (default: seed 0), without
    touching the global random state. ``title`` is the figure's title (e.g. the model's arm).
    """
    z = _numpy(codes, "codes").astype(np.float64)
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"codes must have shape (M, D) with M >= 2, got {z.shape}")
    dim = z.shape[1]
    if tuple(prior.event_shape) != (dim,):
        raise ValueError(f"the prior has event_shape {tuple(prior.event_shape)}, the codes have D = {dim}")
    draws = _prior_draws(prior, num_prior_samples, generator)
    if dim == 2:
        lo, hi = np.quantile(z, 0.005, axis=0), np.quantile(z, 0.995, axis=0)
        lo = np.minimum(lo, np.quantile(draws, 0.005, axis=0))
        hi = np.maximum(hi, np.quantile(draws, 0.995, axis=0))
        centre, half = (lo + hi) / 2, max(float((hi - lo).max()), 1e-6) * 0.6  # square, 10% margins
        lo, hi = centre - half, centre + half
        cx, cy = np.linspace(lo[0], hi[0], bins), np.linspace(lo[1], hi[1], bins)
        estimate = _kernel_density(z, cx, cy)
        density = _density_on_grid(prior, cx, cy)
        fig = _figure(figsize or (9, 4), dpi)
        extent = (cx[0], cx[-1], cy[0], cy[-1])
        panels = ((estimate, "q(z): kernel density and codes, contours of p(z)"), (density, "prior p(z)"))
        levels = _contour_levels(density)
        for i, (image, panel_title) in enumerate(panels):
            ax = fig.add_subplot(1, 2, i + 1)
            shown = ax.imshow(image.T, origin="lower", extent=extent, aspect="equal", cmap="viridis")
            if i == 0:
                ax.scatter(z[:, 0], z[:, 1], s=2, color="white", alpha=0.5, linewidths=0)
                if levels.size:
                    ax.contour(cx, cy, density.T, levels=levels, colors="orange", linewidths=0.7)
                ax.set_xlim(extent[:2])
                ax.set_ylim(extent[2:])
            ax.set_title(panel_title, fontsize=9)
            ax.set_xlabel(_coordinate("z", 0))
            ax.set_ylabel(_coordinate("z", 1))
            fig.colorbar(shown, ax=ax, label="density", shrink=0.8)
        if title is not None:
            fig.suptitle(title, fontsize=10)
        return _save(fig, path)
    ncol = min(dim, 4)
    nrow = math.ceil(dim / ncol)
    fig = _figure(figsize or (3 * ncol, 2.5 * nrow), dpi)
    for d in range(dim):
        ax = fig.add_subplot(nrow, ncol, d + 1)
        lo = min(np.quantile(z[:, d], 0.001), np.quantile(draws[:, d], 0.001))
        hi = max(np.quantile(z[:, d], 0.999), np.quantile(draws[:, d], 0.999))
        edges = np.linspace(lo, hi, bins + 1) if hi > lo else bins
        ax.hist(z[:, d], bins=edges, density=True, alpha=0.6, label="q(z)")
        ax.hist(draws[:, d], bins=edges, density=True, histtype="step", color="k", label="p(z)")
        ax.set_title(f"dimension {d}", fontsize=9)
        ax.set_xlabel(_coordinate("z", d), fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=7)
        if d == 0:
            ax.legend(fontsize=7)
    fig.suptitle(
        "marginals of the aggregate encoding q(z) against the prior p(z)" if title is None else title,
        fontsize=10,
    )
    return _save(fig, path)


def _kernel_density(z: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The Gaussian kernel density estimate of the 2-D points ``z`` ``(M, 2)`` at every (xs[i], ys[j]),
    ``(len(xs), len(ys))``: (1/M) Σ_m N(x; z_m, diag(h²)) with Scott's bandwidth h_k = sd_k M^(-1/6)."""
    m = len(z)
    sd = z.std(0)
    h = np.where(sd > 0, sd, max(float(sd.max()), 1e-3)) * m ** (-1 / 6)
    kx = np.exp(-0.5 * ((xs[:, None] - z[None, :, 0]) / h[0]) ** 2) / (h[0] * np.sqrt(2 * np.pi))
    ky = np.exp(-0.5 * ((ys[:, None] - z[None, :, 1]) / h[1]) ** 2) / (h[1] * np.sqrt(2 * np.pi))
    return kx @ ky.T / m  # (len(xs), M) @ (M, len(ys)): the product kernel summed over the points


def _contour_levels(density: np.ndarray) -> np.ndarray:
    """Contour levels at :data:`CONTOUR_FRACTIONS` of the density's maximum on the grid.

    Levels chosen from the density's whole range would start at (or near) its floor, where the density
    has underflowed to a constant in the corners of the grid: a contour there traces the edge of the
    plotting range, not the prior. No levels (an empty array) when the density is nowhere positive.
    """
    finite = density[np.isfinite(density)]
    top = finite.max() if finite.size else 0.0
    if not top > 0:
        return np.empty(0)
    levels = np.asarray(CONTOUR_FRACTIONS, dtype=np.float64) * top
    return levels[levels > finite.min()]


def plot_latent_magnitude(
    codes,
    labels,
    path: PathLike,
    class_names: Optional[Sequence[str]] = None,
    normalise: bool = True,
    figsize: FigSize = None,
    dpi: float = 100,
    title: Optional[str] = None,
) -> PathLike:
    """Average latent magnitude per class: the paper's sparsity figure (Mathieu et al., 2019, Fig. 5).

    A heat map of ``E[|z_d| | class c]`` over the points of each class (rows: classes, columns: dimensions).
    With ``normalise``, each dimension is first measured from its median over all points, m_d, and every
    value divided by one number, the root mean square of z − m over every point and dimension:
    ``E[|z_d − m_d| | c] / rms(z − m)``. An inactive dimension (a code that does not move with x, whatever its
    offset) then stays dark, and all dimensions share one scale; dividing each dimension by its own spread
    would make the least informative ones the brightest. For a sparse code m_d ≈ 0. A sparse decomposition
    lights up few dimensions per class, and different ones for different classes.

    :param codes: ``(N, D)`` encodings (e.g. encoder means).
    :param labels: ``(N,)`` integer classes.
    :param figsize: default ``(min(0.45 * D + 2.5, 11), max(0.35 * C + 1.5, 3))`` for C classes: at most
        11 inches wide (50 dimensions stay readable; every 5th dimension is numbered past 25).
    :param title: default ``"mean latent magnitude per class"``.
    """
    z = _numpy(codes, "codes").astype(np.float64)
    y = _numpy(labels, "labels").reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.shape[0]:
        raise ValueError(f"codes (N, D) and labels (N,) must match, got {z.shape} and {y.shape}")
    if normalise and z.size:
        z = z - np.median(z, axis=0)
        rms = float(np.sqrt(np.mean(z**2)))
        z = z / (rms if rms > 0 else 1.0)
    z = np.abs(z)
    classes, inverse = np.unique(y, return_inverse=True)
    counts = np.bincount(inverse, minlength=classes.size)
    table = np.zeros((classes.size, z.shape[1]))
    np.add.at(table, inverse, z)
    table /= counts[:, None]
    if class_names is None:
        names = [str(c) for c in classes]
    elif np.issubdtype(classes.dtype, np.integer) and classes.min() >= 0 and classes.max() < len(class_names):
        names = [str(class_names[int(c)]) for c in classes]
    else:
        raise ValueError(
            f"class_names must have an entry for every class label 0..{classes.max()}, got {len(class_names)}"
        )
    dim = z.shape[1]
    fig = _figure(figsize or (min(0.45 * dim + 2.5, 11.0), max(0.35 * classes.size + 1.5, 3.0)), dpi)
    ax = fig.add_subplot()
    image = ax.imshow(table, aspect="auto", cmap="magma", interpolation="nearest", vmin=0.0)
    ticks = list(range(dim)) if dim <= 25 else list(range(0, dim, 5))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(d) for d in ticks], fontsize=7)
    ax.set_yticks(range(classes.size))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("latent dimension d", fontsize=9)
    ax.set_ylabel("class", fontsize=9)
    ax.set_title("mean latent magnitude per class" if title is None else title, fontsize=10)
    colorbar = fig.colorbar(image, ax=ax)
    colorbar.set_label(
        r"mean $|z_d - m_d|\,/\,\mathrm{rms}(z - m)$, $m$: medians" if normalise else r"mean $|z_d|$",
        fontsize=8,
    )
    colorbar.ax.tick_params(labelsize=7)
    return _save(fig, path)


def plot_encodings_by_arm(
    codes: Mapping[str, object],
    prior,
    path: PathLike,
    sd_levels: Sequence[float] = (1.0, 2.0),
    num_prior_samples: int = 5000,
    generator: Optional[torch.Generator] = None,
    figsize: FigSize = None,
    dpi: float = 100,
    title: Optional[str] = None,
) -> PathLike:
    """The 2-D encodings of several arms (models, settings) in one panel, coloured by arm, over the prior.

    ``codes`` maps each arm's legend label to its encodings ``(M, 2)``, e.g. the encoder means of held-out
    points. The prior p(z) is drawn as its contours at exp(−k²/2) times its maximum density on the plotting
    grid for each k in ``sd_levels`` (solid, then dashed): for a mixture of well-separated isotropic Gaussian
    components of equal weight, the circles k standard deviations around each component.

    Prior draws (also used to set the plotting range) come from ``generator`` (default: seed 0), without
    touching the global random state.

    :param figsize: default ``(5.2, 5.8)``; the axes are square (equal scales) and the legend sits below them.
    :param title: default ``"encodings by arm against the prior p(z)"``.
    """
    arms = {str(name): _numpy(z, f"codes[{name!r}]").astype(np.float64) for name, z in codes.items()}
    if not arms:
        raise ValueError("codes holds no arms")
    for name, z in arms.items():
        if z.ndim != 2 or z.shape[1] != 2 or z.shape[0] < 1:
            raise ValueError(f"codes[{name!r}] must have shape (M, 2) with M >= 1, got {z.shape}")
    if tuple(prior.event_shape) != (2,):
        raise ValueError(f"the prior must have event_shape (2,), got {tuple(prior.event_shape)}")
    levels_sd = sorted(float(k) for k in sd_levels)
    if not levels_sd or levels_sd[0] <= 0:
        raise ValueError(f"sd_levels must be positive numbers, got {sd_levels!r}")
    draws = _prior_draws(prior, num_prior_samples, generator)
    points = np.concatenate([draws] + list(arms.values()))
    lo, hi = np.quantile(points, 0.002, axis=0), np.quantile(points, 0.998, axis=0)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()), 1e-6) * 0.6  # a square range, 10% margins
    lo, hi = centre - half, centre + half
    xs, ys = np.linspace(lo[0], hi[0], 201), np.linspace(lo[1], hi[1], 201)
    density = _density_on_grid(prior, xs, ys)
    fig = _figure(figsize or (5.2, 5.8), dpi)
    fig.set_layout_engine("compressed", w_pad=2 / 72, h_pad=2 / 72)  # the layout of a fixed-aspect axes
    ax = fig.add_subplot()
    for name, z in arms.items():
        ax.scatter(z[:, 0], z[:, 1], s=8, alpha=0.5, linewidths=0, label=name)
    top = density.max()
    styles = ("solid", "dashed", "dotted", "dashdot")
    if top > 0:
        for i, k in enumerate(levels_sd):
            ax.contour(
                xs,
                ys,
                density.T,
                levels=[top * math.exp(-(k**2) / 2)],
                colors="black",
                linewidths=0.8,
                linestyles=styles[i % len(styles)],
            )
            ax.plot(
                [],
                [],
                color="black",
                linewidth=0.8,
                linestyle=styles[i % len(styles)],
                label=f"p(z): {k:g} sd",
            )
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(_coordinate("z", 0))
    ax.set_ylabel(_coordinate("z", 1))
    ax.set_title("encodings by arm against the prior p(z)" if title is None else title, fontsize=10)
    legend = ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2)
    for handle in legend.legend_handles:
        if hasattr(handle, "set_alpha"):
            handle.set_alpha(1.0)
    return _save(fig, path)
