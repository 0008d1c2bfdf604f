"""Labels for the points of a scatter plot, placed where they cover no other label, point or the frame.

Sweeps put many runs close together (one point per prior and β, say), and text written at a fixed offset
from each point then collides. :func:`place_labels` tries, for each label in turn, a fixed list of offsets
(nearest first, eight directions at each distance) and keeps the first whose text box overlaps nothing
already drawn, or else the one that overlaps least; a label set away from its point gets a thin leader line.
The placement is deterministic: the same figure always gets the same labels.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.transforms import Bbox

__all__ = ["place_labels"]


#: offsets (in points) tried for a point's label, nearest first, and the directions tried at each
_LABEL_RADII = (4.0, 11.0, 19.0, 28.0)
_LABEL_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))


def _area(box: Optional[Bbox]) -> float:
    return 0.0 if box is None else max(box.width, 0.0) * max(box.height, 0.0)


def place_labels(
    ax, points: Sequence[Tuple[float, float]], texts: Sequence[str], colors, fontsize: float = 7
):
    """Write ``texts[i]`` (in ``colors[i]``) next to ``points[i]`` where it covers no other label, point or
    the axes' frame.

    Greedy and deterministic: each label, in order, takes the first offset of :data:`_LABEL_RADII` x
    :data:`_LABEL_DIRECTIONS` whose text box is free, or the one that overlaps least; a label set away
    from its point is joined to it by a thin line. The figure's layout is fixed first (drawn once, then
    its layout engine turned off), so that the boxes measured here are the ones saved.
    """
    fig = ax.figure
    fig.canvas.draw()
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    centres = ax.transData.transform(np.asarray(points, dtype=np.float64).reshape(-1, 2))
    r = 3.0 * fig.dpi / 72
    markers = [Bbox.from_extents(x - r, y - r, x + r, y + r) for x, y in centres]
    gap = 1.0 * fig.dpi / 72
    taken: List[Bbox] = []
    for i, (point, text, color) in enumerate(zip(points, texts, colors)):
        if not text:
            continue
        best = None
        for radius in _LABEL_RADII:
            for dx, dy in _LABEL_DIRECTIONS:
                scale = radius / math.hypot(dx, dy)
                place = dict(
                    xytext=(dx * scale, dy * scale),
                    ha="left" if dx > 0 else "right" if dx < 0 else "center",
                    va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                )
                trial = ax.annotate(text, point, textcoords="offset points", fontsize=fontsize, **place)
                box = trial.get_window_extent(renderer)
                trial.remove()
                cost = _area(box) - _area(Bbox.intersection(box, frame))
                cost += sum(_area(Bbox.intersection(box, b)) for b in taken)
                cost += sum(_area(Bbox.intersection(box, m)) for j, m in enumerate(markers) if j != i)
                if best is None or cost < best[0]:
                    best = (cost, radius, place)
                if cost == 0:
                    break
            if best[0] == 0:
                break
        _, radius, place = best
        leader = dict(arrowstyle="-", color=color, alpha=0.6, linewidth=0.6, shrinkA=0, shrinkB=2)
        label = ax.annotate(
            text,
            point,
            textcoords="offset points",
            fontsize=fontsize,
            color=color,
            arrowprops=leader if radius > _LABEL_RADII[0] else None,
            **place,
        )
        taken.append(label.get_window_extent(renderer).padded(gap))
