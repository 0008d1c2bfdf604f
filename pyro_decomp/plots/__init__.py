"""Figures that show a decomposition: reconstructions, samples, traversals, q(z) against p(z), sparsity,
training curves and sweeps (the figures of Mathieu et al., 2019).

Image grids live in :mod:`pyro_decomp.plots.images`, figures of the latent space in
:mod:`pyro_decomp.plots.latents`, figures of runs and sweeps in :mod:`pyro_decomp.plots.summaries`; this
namespace holds them all.

Every function takes data (tensors or arrays) and a ``path``, writes one PNG there (creating its folder,
atomically: the old file or the whole new one) and returns ``path``. Figures are drawn on matplotlib's Agg
canvas directly (``matplotlib.figure.Figure`` with ``FigureCanvasAgg``), never through ``pyplot``: they need
no display, leave the user's backend and pyplot's figure registry untouched, and are freed as soon as the
function returns. The PNG is exactly ``round(figsize[0] * dpi) x round(figsize[1] * dpi)`` pixels (no tight
bounding box); each function states its default ``figsize``.

Every figure reads without the code: it has a title, every axis that carries a quantity is labelled with it
(and its unit where there is one), the rows of image grids say what they show, and matplotlib's constrained
layout keeps all text inside the image at the default size.
"""

from pyro_decomp.plots._common import CELL as CELL
from pyro_decomp.plots._common import CONTOUR_FRACTIONS as CONTOUR_FRACTIONS
from pyro_decomp.plots._common import save_figure
from pyro_decomp.plots.images import latent_traversal, plot_reconstructions, plot_samples, plot_traversals
from pyro_decomp.plots.latents import plot_aggregate_posterior, plot_encodings_by_arm, plot_latent_magnitude
from pyro_decomp.plots.summaries import (
    HELDOUT_PREFIX as HELDOUT_PREFIX,
)
from pyro_decomp.plots.summaries import (
    plot_disentanglement_vs_reconstruction,
    plot_training_curves,
)

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
    "save_figure",
]

#: the one function through which every figure is written (tests watch figures by replacing it)
_save = save_figure
