"""Labels of scatter points: each placed where it covers no other label, no other point and not the frame."""

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

from pyro_decomp.label_placement import _LABEL_RADII, place_labels


def _axes(points):
    fig = Figure(figsize=(4, 3), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs, ys = zip(*points)
    ax.scatter(xs, ys, s=9)
    ax.margins(0.15)
    return fig, ax


def _labels(fig, ax):
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    labels = [t for t in ax.texts if isinstance(t, Annotation)]
    return labels, [Text.get_window_extent(t, renderer) for t in labels], renderer


def test_crowded_labels_cover_no_label_no_point_and_stay_inside():
    points = [(1.0 + 0.01 * i, 2.0 + 0.01 * (i % 3)) for i in range(8)] + [(2.0, 1.0), (3.0, 3.0)]
    texts = [f"β={i}" for i in range(len(points))]
    fig, ax = _axes(points)
    place_labels(ax, points, texts, ["C0"] * len(points))
    labels, boxes, _ = _labels(fig, ax)
    assert [t.get_text() for t in labels] == texts
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes)))
    frame = ax.get_window_extent()
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    centres = ax.transData.transform(points)
    r = 3.0
    for i, box in enumerate(boxes):
        for j, (x, y) in enumerate(centres):
            if i != j:
                assert not box.overlaps(Bbox.from_extents(x - r, y - r, x + r, y + r)), (texts[i], j)


def test_a_lone_label_sits_next_to_its_point_without_a_leader_and_is_deterministic():
    points = [(0.0, 0.0), (10.0, 10.0)]
    fig, ax = _axes(points)
    place_labels(ax, points, ["a", ""], ["C1", "C2"])  # an empty text draws nothing
    labels, boxes, _ = _labels(fig, ax)
    assert [t.get_text() for t in labels] == ["a"]
    assert labels[0].arrow_patch is None  # at the nearest offset: no leader line
    assert labels[0].get_color() == "C1"
    offset = labels[0].xyann
    assert max(abs(offset[0]), abs(offset[1])) <= _LABEL_RADII[0]
    again, ax2 = _axes(points)
    place_labels(ax2, points, ["a", ""], ["C1", "C2"])
    assert _labels(again, ax2)[0][0].xyann == offset


def test_a_label_pushed_away_from_its_point_gets_a_leader_line():
    points = [(0.5 + 0.002 * i, 0.5) for i in range(6)]  # six points within one marker's width
    fig, ax = _axes(points)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    place_labels(ax, points, [f"label {i}" for i in range(6)], ["k"] * 6)
    labels, _, _ = _labels(fig, ax)
    far = [t for t in labels if max(abs(v) for v in t.xyann) > _LABEL_RADII[0]]
    assert far and all(t.arrow_patch is not None for t in far)
