"""What every figure shares: the canvas, the one function that writes a PNG, image tiling and labels."""

from __future__ import annotations

import errno
import math
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pyro_decomp._atomic import atomic_open
from pyro_decomp.util import seeded

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


def save_figure(fig: Figure, path: PathLike) -> PathLike:
    """Write ``fig`` as a PNG at ``path`` (creating its folder) atomically: the PNG goes to a temporary file
    next to ``path`` that replaces it only when complete, so ``path`` is the old file or the whole new one.

    :raises OSError: the file cannot be written (a full disk, no permission), in one line naming ``path``.
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:
            fig.savefig(f, format="png", dpi=fig.dpi)
    except OSError as e:
        code = e.errno if e.errno is not None else errno.EIO
        text = str(e).strip()
        reason = e.strerror or (text.splitlines()[0] if text else type(e).__name__)
        raise OSError(code, f"cannot write the figure ({reason})", os.fspath(path)) from None
    finally:
        fig.clear()
    return path


def _save(fig: Figure, path: PathLike) -> PathLike:
    """Every figure of the package is saved through ``pyro_decomp.plots._save`` (by default
    :func:`save_figure`): one place to change, or to watch, how figures are written."""
    return sys.modules["pyro_decomp.plots"]._save(fig, path)


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


def _prior_draws(prior, num: int, generator: Optional[torch.Generator]) -> np.ndarray:
    """``num`` draws of the prior as float64 ``(num, D)``, from ``generator`` (default: seed 0), leaving the
    global random state as it was."""
    with torch.no_grad(), seeded(torch.Generator().manual_seed(0) if generator is None else generator):
        return prior.sample((int(num),)).cpu().double().numpy()


def _density_on_grid(prior, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The 2-D prior's density p(z) at every (xs[i], ys[j]), as float64 ``(len(xs), len(ys))``."""
    grid = torch.as_tensor(np.stack(np.meshgrid(xs, ys, indexing="ij"), -1))
    with torch.no_grad():
        try:
            dtype = prior.mean.dtype
        except NotImplementedError:  # a flow has no closed-form mean: a draw says its dtype
            with torch.random.fork_rng(devices=[]):
                dtype = prior.sample().dtype
        return prior.log_prob(grid.to(dtype)).exp().double().cpu().numpy()


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
