"""Summary figures of runs: training curves and sweeps (one point per run)."""

from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from pyro_decomp.label_placement import place_labels
from pyro_decomp.plots._common import FigSize, PathLike, _figure, _is_number, _save
from pyro_decomp.util import read_jsonl

__all__ = ["plot_disentanglement_vs_reconstruction", "plot_training_curves"]


def _read_records(log) -> List[Mapping]:
    if isinstance(log, (str, os.PathLike)):
        return read_jsonl(log)  # a damaged line is skipped with a warning naming it
    return list(log)


#: what the quantities of a run's log are, and their units: (title, unit or None)
_QUANTITIES: Dict[str, Tuple[str, Optional[str]]] = {
    "loss": ("loss: the negative objective", "nats / point"),
    "reconstruction": (r"reconstruction $\mathbb{E}_{q(z|x)}[\log p(x|z)]$", "nats / point"),
    "kl": (r"$\mathrm{KL}(q(z|x)\,\|\,p(z))$", "nats / point"),
    "other_kl": ("KL at the other latent sites", "nats / point"),
    "divergence": (r"divergence estimate $\hat{D}(q(z), p(z))$", None),
    "seconds": ("time per epoch", "s"),
    "global_step": ("optimisation steps", None),
}

HELDOUT_PREFIX = "heldout_"
#: keys of a run's log that are not quantities of the model (never a panel of their own by default)
_BOOKKEEPING = ("epoch", "steps")
#: with fewer epochs than this, the loss panel also shows the per-step losses (``step_loss``)
FEW_EPOCHS = 10


def _quantity(key: str) -> Tuple[str, str]:
    """(title, axis label with the unit) of a logged quantity."""
    title, unit = _QUANTITIES.get(key, (key, None))
    return title, key if unit is None else f"{key}\n({unit})"


def _step_series(records) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The per-step losses of the records that carry ``step_loss``, each block at its fractional epoch
    (block i of n in epoch e at e − 1 + (i + ½)/n)."""
    pts = []
    for i, r in enumerate(records):
        steps = r.get("step_loss")
        if not isinstance(steps, list) or not steps:
            continue
        epoch = r.get("epoch", i + 1)
        pts += [(epoch - 1 + (j + 0.5) / len(steps), v) for j, v in enumerate(steps) if _is_number(v)]
    return tuple(zip(*pts)) if pts else ((), ())


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

    Every value is an epoch mean. When the log has fewer than :data:`FEW_EPOCHS` epochs and its records
    carry ``step_loss`` (the epoch's per-step losses, in consecutive blocks, as the trainer writes them),
    the loss panel also draws those, each at its fractional epoch, labelled "training, per step".
    :param figsize: default ``(6, 2 * len(keys) + 0.5)``.
    """
    records = _read_records(log)
    if not records:
        raise ValueError("the log holds no records")
    if keys is None:
        keys = []
        for r in records:
            keys += [k for k, v in r.items() if k not in _BOOKKEEPING and _is_number(v) and k not in keys]
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
        sx, sy = _step_series(records) if key == "loss" and len(xs) < FEW_EPOCHS else ((), ())
        if sx:
            ax.plot(sx, sy, color="0.6", linewidth=0.8, label="training, per step")
        hx, hy = series(HELDOUT_PREFIX + key) if heldout else ((), ())
        if hx:
            ax.plot(hx, hy, marker="o", markersize=4, linewidth=1, label="held-out")
        if hx or sx:
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
