"""Figures that show a decomposition: reconstructions, samples, traversals, q(z) against p(z), sparsity,
training curves and sweeps (the figures of Mathieu et al., 2019).

Every function takes data (tensors or arrays) and a ``path``, writes one PNG there (creating its folder) and
returns ``path``. Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure`` with
``FigureCanvasAgg``), never through ``pyplot``: they need no display, leave the user's backend and pyplot's
figure registry untouched, and are freed as soon as the function returns. The PNG is exactly
``round(figsize[0] * dpi) x round(figsize[1] * dpi)`` pixels (no tight bounding box); each function states
its default ``figsize``.

Every figure reads without the code: it has a title, every axis that carries a quantity is labelled with it
(and its unit where there is one), the rows of image grids say what they show, and matplotlib's constrained
layout keeps all text inside the image at the default size.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pyro_decomp.label_placement import place_labels
from pyro_decomp.util import module_device, read_jsonl, seeded

__all__ = [
    "latent_traversal",
    "plot_aggregate_posterior",
    "plot_disentanglement_vs_reconstruction",
    "plot_encodings_by_arm",
    "plot_latent_magnitude",
    "plot_reconstructions",
    "plot_samples",
    "plot_training_curves",
    "plot_traversals",
]

PathLike = Union[str, os.PathLike]
FigSize = Optional[Tuple[float, float]]

#: inches per image in the image grids
CELL = 0.8

#: the prior's density contours in :func:`plot_aggregate_posterior`, as fractions of its maximum on the grid
CONTOUR_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


# ---------------------------------------------------------------------------------------------- helpers
def _numpy(x, name: str) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as e:
        raise ValueError(f"{name} must be a tensor or an array, got {type(x).__name__}") from e


def _figure(figsize: Tuple[float, float], dpi: float) -> Figure:
    if not (len(figsize) == 2 and all(s > 0 for s in figsize)):
        raise ValueError(f"figsize must be two positive numbers (inches), got {figsize!r}")
    if not dpi > 0:
        raise ValueError(f"dpi must be positive, got {dpi!r}")
    fig = Figure(figsize=tuple(float(s) for s in figsize), dpi=dpi, layout="constrained")
    fig.get_layout_engine().set(w_pad=2 / 72, h_pad=2 / 72)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> PathLike:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=fig.dpi)
    fig.clear()
    return path


def _as_images(x, name: str) -> np.ndarray:
    """``(n, H, W)``, ``(n, 1, H, W)`` or ``(n, 3, H, W)`` in [0, 1] -> ``(n, H, W, C)`` clipped to [0, 1]."""
    a = _numpy(x, name).astype(np.float32)
    if a.ndim == 3:
        a = a[..., None]
    elif a.ndim == 4 and a.shape[1] in (1, 3):
        a = a.transpose(0, 2, 3, 1)
    else:
        raise ValueError(
            f"{name} must be images of shape (n, H, W), (n, 1, H, W) or (n, 3, H, W), got {a.shape}"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{name} holds no images")
    return np.clip(a, 0.0, 1.0)


def _is_points(x) -> bool:
    return len(getattr(x, "shape", ())) == 2 and x.shape[-1] == 2


def _tile(images: np.ndarray, ncol: int, pad: int = 1) -> np.ndarray:
    """Tile ``(n, H, W, C)`` images row by row, ``ncol`` per row, with ``pad`` white pixels around each.

    :returns: ``(rows (H + pad) + pad, ncol (W + pad) + pad, C)``, rows = ceil(n / ncol).
    """
    n, h, w, c = images.shape
    rows = math.ceil(n / ncol)
    cells = np.ones((rows * ncol, h + pad, w + pad, c), dtype=np.float32)
    cells[:n, pad:, pad:] = images
    canvas = cells.reshape(rows, ncol, h + pad, w + pad, c).transpose(0, 2, 1, 3, 4)
    canvas = canvas.reshape(rows * (h + pad), ncol * (w + pad), c)
    return np.pad(canvas, ((0, pad), (0, pad), (0, 0)), constant_values=1.0)


def _show(ax, canvas: np.ndarray) -> None:
    if canvas.shape[-1] == 1:
        ax.imshow(canvas[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()


def _label_rows(ax, centres: Sequence[float], labels: Sequence[str], fontsize: float = 8) -> None:
    """Name the rows of an image grid drawn by :func:`_show` with tick labels on its left, without a frame."""
    ax.set_axis_on()
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_yticks(list(centres))
    ax.set_yticklabels(list(labels), fontsize=fontsize)
    ax.set_xticks([])
    ax.tick_params(length=0)


def _coordinate(name: str, d: int) -> str:
    return f"${name}_{{{d}}}$"


def _check_ncol(ncol) -> int:
    if isinstance(ncol, bool) or int(ncol) != ncol or ncol < 1:
        raise ValueError(f"ncol must be a positive integer, got {ncol!r}")
    return int(ncol)


# ---------------------------------------------------------------------------------------------- images
def plot_reconstructions(
    originals, reconstructions, path: PathLike, ncol: int = 8, figsize: FigSize = None, dpi: float = 100
) -> PathLike:
    """Originals against their reconstructions.

    Images (``(n, H, W)`` or ``(n, C, H, W)``, C in {1, 3}, values in [0, 1]): rows of ``ncol`` originals,
    each followed by the row of their reconstructions, the rows labelled "data" and "reconstruction";
    default figsize ``(ncol * CELL, 2 * ceil(n / ncol) * CELL)``. 2-D points ``(n, 2)``: both point sets,
    each original joined to its reconstruction by a segment, told apart by the legend; default figsize
    ``(5, 5)``.
    """
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
        ax.set_title("data and their reconstructions")
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
    ax.set_title("data and their reconstructions", fontsize=10)
    return _save(fig, path)


def plot_samples(
    samples, path: PathLike, ncol: int = 8, figsize: FigSize = None, dpi: float = 100
) -> PathLike:
    """Samples from the model, e.g. ``vae.sample(64)``.

    Images: a grid of ``ncol`` columns, default figsize ``(ncol * CELL, ceil(n / ncol) * CELL)``. 2-D
    points ``(n, 2)``: a scatter plot, default figsize ``(5, 5)``.
    """
    title = "samples from the model"
    if _is_points(samples):
        a = _numpy(samples, "samples")
        fig = _figure(figsize or (5, 5), dpi)
        ax = fig.add_subplot()
        ax.scatter(a[:, 0], a[:, 1], s=4)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel(_coordinate("x", 0))
        ax.set_ylabel(_coordinate("x", 1))
        ax.set_title(title)
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
) -> PathLike:
    """Latent traversals, one row per latent dimension (e.g. from :func:`latent_traversal`).

    Rows are labelled with their latent dimension, columns with the value the traversed coordinate takes
    (left to right, increasing, when ``values`` is not given).

    :param images: ``(R, S, H, W)`` or ``(R, S, C, H, W)``: R dimensions, S values each.
    :param values: the S traversed values, written under the columns (optional).
    :param dims: the dimension of each row, for the row labels (default ``0..R-1``).
    :param figsize: default ``(S * CELL + 0.6, R * CELL + 0.4)``: the grid plus margins for labels.
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
    ax.set_title("latent traversals", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- latents
def _prior_draws(prior, num: int, generator: Optional[torch.Generator]) -> np.ndarray:
    """``num`` draws of the prior as float64 ``(num, D)``, from ``generator`` (default: seed 0), leaving the
    global random state as it was."""
    with torch.no_grad(), seeded(torch.Generator().manual_seed(0) if generator is None else generator):
        return prior.sample((int(num),)).cpu().double().numpy()


def _density_on_grid(prior, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The 2-D prior's density p(z) at every (xs[i], ys[j]), as float64 ``(len(xs), len(ys))``."""
    grid = torch.as_tensor(np.stack(np.meshgrid(xs, ys, indexing="ij"), -1))
    mean = getattr(prior, "mean", None)
    with torch.no_grad():
        dtype = mean.dtype if torch.is_tensor(mean) else torch.float32
        return prior.log_prob(grid.to(dtype)).exp().double().cpu().numpy()


def plot_aggregate_posterior(
    codes,
    prior,
    path: PathLike,
    bins: int = 60,
    num_prior_samples: int = 20000,
    generator: Optional[torch.Generator] = None,
    figsize: FigSize = None,
    dpi: float = 100,
) -> PathLike:
    """The aggregate encoding q(z) against the prior p(z) -- the alignment the paper's α controls.

    ``codes`` are draws from q(z) = (1/N) Σ_n q(z|x_n): one ``z ~ q(z|x_n)`` per data point, ``(M, D)``.

    * D = 2: a 2-D histogram (density) of the codes beside the prior's density exp(log p(z)) on the same
      grid, with the prior's contours drawn over the histogram; default figsize ``(9, 4)``.
    * otherwise: one panel per dimension, the codes' marginal histogram against the prior's marginal (a
      histogram of ``num_prior_samples`` prior draws, so any prior works); default figsize
      ``(3 * ncol, 2.5 * nrow)`` with ``ncol = min(D, 4)``.

    Prior draws (also used to set the 2-D plotting range) come from ``generator`` (default: seed 0), without
    touching the global random state.
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
        span = hi - lo
        lo, hi = lo - 0.1 * span, hi + 0.1 * span
        xs, ys = np.linspace(lo[0], hi[0], bins + 1), np.linspace(lo[1], hi[1], bins + 1)
        hist, _, _ = np.histogram2d(z[:, 0], z[:, 1], bins=[xs, ys], density=True)
        cx, cy = (xs[1:] + xs[:-1]) / 2, (ys[1:] + ys[:-1]) / 2
        density = _density_on_grid(prior, cx, cy)
        fig = _figure(figsize or (9, 4), dpi)
        extent = (xs[0], xs[-1], ys[0], ys[-1])
        panels = ((hist, "aggregate encoding q(z), contours of p(z)"), (density, "prior p(z)"))
        levels = _contour_levels(density)
        for i, (image, title) in enumerate(panels):
            ax = fig.add_subplot(1, 2, i + 1)
            shown = ax.imshow(image.T, origin="lower", extent=extent, aspect="auto", cmap="viridis")
            if i == 0 and levels.size:
                ax.contour(cx, cy, density.T, levels=levels, colors="white", linewidths=0.7)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(_coordinate("z", 0))
            ax.set_ylabel(_coordinate("z", 1))
            fig.colorbar(shown, ax=ax, label="density")
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
    fig.suptitle("marginals of the aggregate encoding q(z) against the prior p(z)", fontsize=10)
    return _save(fig, path)


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
) -> PathLike:
    """Average latent magnitude per class: the paper's sparsity figure (Mathieu et al., 2019, Fig. 5).

    A heat map of E[|z_d| | class c] over the points of each class (rows: classes, columns: dimensions),
    each dimension first divided by its standard deviation over all points when ``normalise``. A sparse
    decomposition lights up few dimensions per class, and different ones for different classes.

    :param codes: ``(N, D)`` encodings (e.g. encoder means).
    :param labels: ``(N,)`` integer classes.
    :param figsize: default ``(0.45 * D + 2.5, 0.35 * C + 1.5)`` for C classes.
    """
    z = np.abs(_numpy(codes, "codes").astype(np.float64))
    y = _numpy(labels, "labels").reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.shape[0]:
        raise ValueError(f"codes (N, D) and labels (N,) must match, got {z.shape} and {y.shape}")
    if normalise:
        std = _numpy(codes, "codes").astype(np.float64).std(0)
        z = z / np.where(std > 0, std, 1.0)
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
    fig = _figure(figsize or (0.45 * z.shape[1] + 2.5, 0.35 * classes.size + 1.5), dpi)
    ax = fig.add_subplot()
    image = ax.imshow(table, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xticks(range(z.shape[1]))
    ax.set_xticklabels([str(d) for d in range(z.shape[1])], fontsize=7)
    ax.set_yticks(range(classes.size))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("latent dimension d", fontsize=9)
    ax.set_ylabel("class", fontsize=9)
    ax.set_title("mean latent magnitude per class", fontsize=10)
    colorbar = fig.colorbar(image, ax=ax)
    colorbar.set_label(r"mean $|z_d|\,/\,\mathrm{sd}(z_d)$" if normalise else r"mean $|z_d|$", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- runs
def _read_records(log) -> List[Mapping]:
    if isinstance(log, (str, os.PathLike)):
        return read_jsonl(log)  # a damaged line is skipped with a warning naming it
    return list(log)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: what the quantities of a run's log are, and their units: (title, unit or None)
_QUANTITIES: Dict[str, Tuple[str, Optional[str]]] = {
    "loss": ("loss: the negative objective", "nats / point"),
    "last_batch_loss": ("loss on the last minibatch", "nats / point"),
    "reconstruction": (r"reconstruction $\mathbb{E}_{q(z|x)}[\log p(x|z)]$", "nats / point"),
    "kl": (r"$\mathrm{KL}(q(z|x)\,\|\,p(z))$", "nats / point"),
    "other_kl": ("KL at the other latent sites", "nats / point"),
    "divergence": (r"divergence estimate $\hat{D}(q(z), p(z))$", None),
    "seconds": ("time per epoch", "s"),
    "global_step": ("optimisation steps", None),
}

HELDOUT_PREFIX = "heldout_"


def _quantity(key: str) -> Tuple[str, str]:
    """(title, axis label with the unit) of a logged quantity."""
    title, unit = _QUANTITIES.get(key, (key, None))
    return title, key if unit is None else f"{key}\n({unit})"


def plot_training_curves(
    log,
    path: PathLike,
    keys: Optional[Sequence[str]] = None,
    figsize: FigSize = None,
    dpi: float = 100,
    heldout: bool = True,
) -> PathLike:
    """Training curves from a run's log: one panel per quantity against the epoch.

    The loss and its parts are per data point, in nats (``reconstruction`` = E_q[log p(x|z)], ``kl`` =
    KL(q(z|x) || p(z)), ``loss`` = the negative objective); the divergence estimate has the unit of the
    divergence (nats for a KL, none for an MMD).

    :param log: the path of a ``metrics.jsonl`` (one JSON object per line, e.g. ``{"epoch": 3, "loss": ...,
        "reconstruction": ..., "kl": ..., "divergence": ...}``) or an iterable of such dicts.
    :param keys: the quantities to draw (default: every numeric key but ``"epoch"``, in order of appearance).
        Records without a key are skipped in its panel; without ``"epoch"`` the record's index is used.
    :param heldout: draw the held-out value of a quantity ``K``, logged as ``"heldout_K"`` on some epochs,
        in K's panel (a line with markers, labelled "held-out", beside the one labelled "training"); the
        default ``keys`` then leave out the ``heldout_`` keys that have a panel of their own quantity.
    :param figsize: default ``(6, 2 * len(keys) + 0.5)``.
    """
    records = _read_records(log)
    if not records:
        raise ValueError("the log holds no records")
    if keys is None:
        keys = []
        for r in records:
            keys += [k for k, v in r.items() if k != "epoch" and _is_number(v) and k not in keys]
        if heldout:
            paired = {HELDOUT_PREFIX + k for k in keys}
            keys = [k for k in keys if k not in paired]
    keys = list(keys)
    if not keys:
        raise ValueError("the log has no numeric quantity to plot")

    def series(key):
        pts = [(r.get("epoch", i), r[key]) for i, r in enumerate(records) if _is_number(r.get(key))]
        return tuple(zip(*pts)) if pts else ((), ())

    fig = _figure(figsize or (6, 2 * len(keys) + 0.5), dpi)
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        xs, ys = series(key)
        if not xs:
            raise ValueError(f"no record of the log has a numeric {key!r}")
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label="training")
        hx, hy = series(HELDOUT_PREFIX + key) if heldout else ((), ())
        if hx:
            ax.plot(hx, hy, marker="o", markersize=4, linewidth=1, label="held-out")
            ax.legend(fontsize=7)
        title, label = _quantity(key)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("epoch" if any("epoch" in r for r in records) else "record", fontsize=8)
    return _save(fig, path)


def plot_disentanglement_vs_reconstruction(
    results: Iterable[Mapping],
    path: PathLike,
    x: str = "reconstruction",
    y: str = "disentanglement",
    group: Optional[str] = "prior",
    label: Union[str, Callable[[Mapping], str], None] = "beta",
    figsize: FigSize = None,
    dpi: float = 100,
    xlabel: Optional[str] = None,
    ylabel: Optional[str] = None,
    title: Optional[str] = None,
) -> PathLike:
    """Disentanglement against reconstruction across a sweep (the paper's Fig. 3 style trade-off plot).

    :param results: one dict per run, e.g. ``{"prior": "student-t", "beta": 4, "reconstruction": -27.1,
        "disentanglement": 0.71}``.
    :param x, y: the keys drawn on the axes.
    :param group: runs with the same value of this key share a colour, a marker and a legend entry (``None``:
        one group); the legend sits outside the axes, on the right.
    :param label: the key (or a function of the run) written next to each point, in its group's colour
        (``None``: no labels). Labels are placed so that they cover neither each other nor the points.
    :param xlabel, ylabel, title: the axis labels (default: the keys ``x`` and ``y``, which should then name
        their unit where there is one) and the title (default: ``"<y> against <x>"``).
    :param figsize: default ``(6, 4.5)``.
    """
    runs = list(results)
    if not runs:
        raise ValueError("results holds no runs")
    for i, r in enumerate(runs):
        for key in (x, y):
            if not _is_number(r.get(key)):
                raise ValueError(f"run {i} has no numeric {key!r}: {dict(r)}")
    groups: Dict[str, List[Mapping]] = {}
    for r in runs:
        groups.setdefault("all" if group is None else str(r.get(group, "?")), []).append(r)
    fig = _figure(figsize or (6, 4.5), dpi)
    ax = fig.add_subplot()
    points, texts, colors = [], [], []
    for k, (name, members) in enumerate(groups.items()):
        marker = "osD^vP*X"[k % 8]
        drawn = ax.scatter([r[x] for r in members], [r[y] for r in members], label=name, s=25, marker=marker)
        for r in members:
            points.append((r[x], r[y]))
            colors.append(drawn.get_facecolor()[0])
            if label is None:
                texts.append("")
            else:
                texts.append(label(r) if callable(label) else (f"{label}={r[label]}" if label in r else ""))
    ax.margins(0.12)
    ax.set_xlabel(x if xlabel is None else xlabel)
    ax.set_ylabel(y if ylabel is None else ylabel)
    ax.set_title(f"{y} against {x}" if title is None else title, fontsize=10)
    if group is not None:
        ax.legend(title=group, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    if any(texts):
        place_labels(ax, points, texts, colors)
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
