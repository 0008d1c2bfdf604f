import json
import math
import struct

import matplotlib
import numpy as np
import pyro.distributions as dist
import pytest
import torch
from matplotlib.contour import ContourSet
from matplotlib.image import AxesImage
from matplotlib.text import Annotation, Text
from torch import nn

from pyro_decomp import DecompVAE, plots
from pyro_decomp.plots import (
    CELL,
    latent_traversal,
    plot_aggregate_posterior,
    plot_disentanglement_vs_reconstruction,
    plot_encodings_by_arm,
    plot_latent_magnitude,
    plot_reconstructions,
    plot_samples,
    plot_training_curves,
    plot_traversals,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from the IHDR chunk that follows the 8-byte PNG signature."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def check_png(path, figsize, dpi=100):
    assert path.stat().st_size > 0
    assert png_size(path) == (round(figsize[0] * dpi), round(figsize[1] * dpi))


@pytest.fixture
def no_pyplot_figures():
    """The functions never register figures with pyplot, nor switch the backend."""
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before
    assert matplotlib.get_backend() == backend


def images(n, channels=1, size=8, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


class ImageDecoder(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.Linear(dim, 64)

    def forward(self, z):
        return self.net(z).view(*z.shape[:-1], 1, 8, 8)


class ImageEncoder(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.Linear(64, 2 * dim)

    def forward(self, x):
        loc, raw = self.net(x.flatten(1)).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-3


def image_vae(dim=3):
    prior = dist.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1)
    return DecompVAE(ImageEncoder(dim), ImageDecoder(dim), prior, likelihood="bernoulli")


@pytest.mark.usefixtures("no_pyplot_figures")
def test_reconstructions_grid(tmp_path):
    x = images(12)
    vae = image_vae()
    path = plot_reconstructions(x, vae.reconstruct(x), tmp_path / "sub" / "rec.png", ncol=5)
    assert path == tmp_path / "sub" / "rec.png"
    # 12 images in rows of 5: 3 rows of originals, each followed by its reconstructions
    check_png(path, (5 * CELL, 2 * 3 * CELL))
    rgb = plot_reconstructions(
        images(4, 3), images(4, 3, seed=1), tmp_path / "rgb.png", figsize=(4, 2), dpi=50
    )
    check_png(rgb, (4, 2), dpi=50)
    with pytest.raises(ValueError, match="same shape"):
        plot_reconstructions(images(4), images(3), tmp_path / "bad.png")


@pytest.mark.usefixtures("no_pyplot_figures")
def test_reconstructions_of_points(tmp_path):
    x = torch.randn(30, 2)
    path = plot_reconstructions(x, x + 0.1, str(tmp_path / "points.png"))
    assert path == str(tmp_path / "points.png")
    check_png(tmp_path / "points.png", (5, 5))


@pytest.mark.usefixtures("no_pyplot_figures")
def test_samples_grid_and_points(tmp_path):
    vae = image_vae()
    check_png(plot_samples(vae.sample(16), tmp_path / "samples.png"), (8 * CELL, 2 * CELL))
    check_png(plot_samples(images(16).squeeze(1), tmp_path / "hw.png", ncol=4), (4 * CELL, 4 * CELL))
    check_png(plot_samples(torch.randn(100, 2), tmp_path / "pts.png", dpi=40), (5, 5), dpi=40)
    with pytest.raises(ValueError, match="images of shape"):
        plot_samples(torch.rand(4, 2, 8, 8), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="ncol"):
        plot_samples(images(4), tmp_path / "bad.png", ncol=0)


@pytest.mark.usefixtures("no_pyplot_figures")
def test_latent_traversals(tmp_path):
    vae = image_vae(3)
    vae.train()
    values = torch.linspace(-2, 2, 5)
    grid = latent_traversal(vae, values=values)
    assert grid.shape == (3, 5, 1, 8, 8) and vae.training
    # row d varies coordinate d only: with a linear decoder, the logits move along the column d of W
    w = vae.decoder.net.weight
    logits = torch.logit(grid[1, -1].flatten()) - torch.logit(grid[1, 0].flatten())
    assert torch.allclose(logits, 4 * w[:, 1], atol=1e-4)
    path = plot_traversals(grid, tmp_path / "trav.png", values=values)
    check_png(path, (5 * CELL + 0.6, 3 * CELL + 0.4))
    sub = latent_traversal(vae, z=torch.ones(3), values=values, dims=[2])
    assert sub.shape == (1, 5, 1, 8, 8)
    check_png(plot_traversals(sub, tmp_path / "one.png", dims=[2], figsize=(5, 1.5)), (5, 1.5))
    with pytest.raises(ValueError, match="dims"):
        latent_traversal(vae, dims=[3])
    with pytest.raises(ValueError, match="values has 4 entries"):
        plot_traversals(grid, tmp_path / "bad.png", values=values[:4])


@pytest.mark.usefixtures("no_pyplot_figures")
def test_aggregate_posterior_two_dims_and_more(tmp_path):
    locs = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]])
    mixture = dist.MixtureSameFamily(dist.Categorical(torch.ones(4)), dist.Normal(locs, 0.17).to_event(1))
    codes = mixture.sample((2000,)) * 1.1
    check_png(plot_aggregate_posterior(codes, mixture, tmp_path / "q2.png"), (9, 4))
    student = dist.StudentT(9.0, torch.zeros(5), torch.ones(5)).to_event(1)
    codes = torch.randn(1000, 5)
    path = plot_aggregate_posterior(codes, student, tmp_path / "q5.png", num_prior_samples=2000, dpi=60)
    check_png(path, (3 * 4, 2.5 * 2), dpi=60)
    with pytest.raises(ValueError, match="event_shape"):
        plot_aggregate_posterior(codes[:, :3], student, tmp_path / "bad.png")


@pytest.mark.usefixtures("no_pyplot_figures")
def test_latent_magnitude_per_class(tmp_path):
    labels = torch.arange(5).repeat_interleave(40)
    codes = torch.randn(200, 6) * 0.05
    codes[torch.arange(200), labels] += 2.0  # class c lives on dimension c
    names = ["tee", "trouser", "pullover", "dress", "coat"]
    path = plot_latent_magnitude(codes, labels, tmp_path / "mag.png", class_names=names)
    check_png(path, (0.45 * 6 + 2.5, 0.35 * 5 + 1.5))
    with pytest.raises(ValueError, match="class_names"):
        plot_latent_magnitude(codes, labels, tmp_path / "bad.png", class_names=names[:3])
    with pytest.raises(ValueError, match="must match"):
        plot_latent_magnitude(codes, labels[:10], tmp_path / "bad.png")


@pytest.mark.usefixtures("no_pyplot_figures")
def test_training_curves_from_jsonl_and_records(tmp_path):
    log = tmp_path / "run" / "metrics.jsonl"
    log.parent.mkdir()
    records = [
        {"epoch": e, "loss": 100 / (e + 1), "reconstruction": -50 / (e + 1), "kl": 3.0, "divergence": 0.1 * e}
        for e in range(12)
    ]
    records[3]["note"] = "lr drop"  # non-numeric values are ignored
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    check_png(plot_training_curves(log, tmp_path / "curves.png"), (6, 2 * 4 + 0.5))
    check_png(plot_training_curves(records, tmp_path / "two.png", keys=["loss", "kl"]), (6, 2 * 2 + 0.5))
    with pytest.raises(ValueError, match="no records"):
        plot_training_curves([], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="numeric 'missing'"):
        plot_training_curves(records, tmp_path / "bad.png", keys=["missing"])
    log.write_text("{not json}\n")
    with pytest.warns(UserWarning, match="metrics.jsonl:1"), pytest.raises(ValueError, match="no records"):
        plot_training_curves(log, tmp_path / "bad.png")


@pytest.mark.usefixtures("no_pyplot_figures")
def test_disentanglement_against_reconstruction(tmp_path):
    runs = [
        {"prior": prior, "beta": beta, "reconstruction": -30 - 5 * beta, "disentanglement": 0.5 + 0.05 * beta}
        for prior in ("normal", "student-t")
        for beta in (1, 2, 4)
    ]
    check_png(plot_disentanglement_vs_reconstruction(runs, tmp_path / "sweep.png"), (6, 4.5))
    path = plot_disentanglement_vs_reconstruction(
        runs, tmp_path / "custom.png", group=None, label=lambda r: f"{r['prior']}/{r['beta']}", figsize=(3, 3)
    )
    check_png(path, (3, 3))
    with pytest.raises(ValueError, match="numeric 'disentanglement'"):
        plot_disentanglement_vs_reconstruction([{"reconstruction": 1.0}], tmp_path / "bad.png")


def test_figure_size_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="figsize"):
        plot_samples(images(4), tmp_path / "bad.png", figsize=(0, 1))
    with pytest.raises(ValueError, match="dpi"):
        plot_samples(images(4), tmp_path / "bad.png", dpi=-1)
    assert not (tmp_path / "bad.png").exists()
    assert math.isclose(CELL * 8 * 100, 640)


# ---------------------------------------------------------------------------------------------- readability
def is_colorbar(ax):
    return hasattr(ax, "_colorbar")


def titles(ax):
    return [ax.get_title(loc) for loc in ("left", "center", "right") if ax.get_title(loc).strip()]


def shown_text(labels):
    return [t.get_text() for t in labels if t.get_visible() and t.get_text().strip()]


def is_image_grid(ax):
    """An axes that shows pictures rather than quantities: images, and nothing written along its x axis."""
    has_image = any(isinstance(a, AxesImage) for a in ax.get_children())
    return has_image and not (ax.axison and (shown_text(ax.get_xticklabels()) or ax.get_xlabel().strip()))


def axis_labelled(ax, which):
    """The axis names its quantity, itself or, when it shares the axis and hides its tick labels, on a
    sibling (the bottom panel of a column of panels with a common x axis)."""
    if getattr(ax, f"get_{which}label")().strip():
        return True
    shared = getattr(ax, f"get_shared_{which}_axes")().get_siblings(ax)
    hidden = not shown_text(getattr(ax, f"get_{which}ticklabels")())
    return hidden and any(getattr(s, f"get_{which}label")().strip() for s in shared if s is not ax)


def readability_problems(fig):
    """What keeps ``fig`` from reading without the code: missing titles and axis labels."""
    problems = []
    suptitle = fig._suptitle.get_text().strip() if fig._suptitle is not None else ""
    panels = [ax for ax in fig.axes if ax.get_visible() and not is_colorbar(ax)]
    if not panels:
        return ["the figure has no axes"]
    if not suptitle and not any(titles(ax) for ax in panels):
        problems.append("the figure has no title")
    for n, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        if is_colorbar(ax):
            if not (ax.get_ylabel().strip() or ax.get_xlabel().strip()):
                problems.append(f"colorbar {n} has no label")
        elif is_image_grid(ax):
            if not (titles(ax) or suptitle or shown_text(ax.get_yticklabels()) or ax.texts):
                problems.append(f"image grid {n} has neither a title nor row labels")
        else:
            if not titles(ax):
                problems.append(f"panel {n} has no title")
            for which in ("x", "y"):
                if not axis_labelled(ax, which):
                    problems.append(f"panel {n} ({titles(ax)}) has no {which} label")
    return problems


def drawn_texts(fig):
    """(text, window extent in pixels) of every text drawn when the figure is rendered."""
    drawn = []
    real = Text.draw

    def draw(self, renderer):
        real(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self.get_text(), self.get_window_extent(renderer)))

    Text.draw = draw
    try:
        fig.canvas.draw()
    finally:
        Text.draw = real
    return drawn


def clipped_texts(fig):
    """The texts that do not lie wholly inside the saved image (the figure's extent, 1 px tolerance)."""
    width, height = fig.bbox.width, fig.bbox.height
    return [
        (text, tuple(round(v) for v in box.extents))
        for text, box in drawn_texts(fig)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1
    ]


@pytest.fixture
def saved(monkeypatch):
    """The figures the module saves, checked before saving and kept (not cleared) for inspection."""
    figures = []
    real = plots._save

    def save(fig, path):
        figures.append((fig, readability_problems(fig), clipped_texts(fig)))
        fig.clear = lambda *args, **kwargs: None
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    return figures


def pinwheel_like(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    arm = torch.randint(0, 5, (n,), generator=g)
    radius = 0.3 + torch.rand(n, generator=g) * 2.0
    angle = arm * (2 * math.pi / 5) + 0.35 * radius + 0.08 * torch.randn(n, generator=g)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], -1)


def blobs(n, size, channels=1, seed=0):
    """Random Gaussian blobs in [0, 1], ``(n, channels, size, size)``."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    centre = torch.rand(n, 2, 1, 1, generator=g) * 0.6 + 0.2
    width = torch.rand(n, 1, 1, generator=g) * 0.1 + 0.05
    blob = torch.exp(-((xx - centre[:, 0]) ** 2 + (yy - centre[:, 1]) ** 2) / (2 * width**2))
    tint = torch.rand(n, channels, 1, 1, generator=g) * 0.5 + 0.5
    return (blob[:, None] * tint).clamp(0, 1)


def mixture_prior():
    locs = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]])
    return dist.MixtureSameFamily(dist.Categorical(torch.ones(4)), dist.Normal(locs, 0.17).to_event(1))


def curve_records(epochs=30, every=5):
    records = []
    for e in range(epochs):
        r = {"epoch": e, "loss": 120 / (e + 1) + 80, "reconstruction": -70 - 40 / (e + 1)}
        r.update(kl=9.0 + 0.1 * e, divergence=0.5 / (e + 1))
        if e % every == every - 1:
            r.update(heldout_loss=r["loss"] + 3, heldout_reconstruction=r["reconstruction"] - 3)
            r.update(heldout_kl=r["kl"] + 0.2)
        records.append(r)
    return records


def step_records(epochs, steps=40):
    """Records as the trainer writes them: epoch means and the per-step losses of each epoch."""
    records = []
    for e in range(1, epochs + 1):
        step_loss = [3000.0 / (1 + 0.1 * ((e - 1) * steps + i)) for i in range(steps)]
        records.append(
            {
                "epoch": e,
                "loss": sum(step_loss) / steps,
                "kl": 20.0 + e,
                "steps": steps,
                "step_loss": step_loss,
            }
        )
    return records


def sweep():
    """A sweep whose points cluster: labels at a fixed offset would collide."""
    runs = []
    for k, prior in enumerate(("normal", "student-t", "spike-and-slab")):
        for beta in (0.5, 1, 2, 4, 8):
            runs.append(
                {
                    "prior": prior,
                    "beta": beta,
                    "reconstruction": -30 - 2 * beta - 0.2 * k,
                    "disentanglement": 0.6 + 0.005 * beta + 0.001 * k,
                }
            )
    return runs


# one or more calls per public plotting function, at the default figure size
CASES = {
    "plot_reconstructions": {
        "images 32x32": lambda p: plot_reconstructions(blobs(16, 32), blobs(16, 32, seed=1), p),
        "rgb 64x64": lambda p: plot_reconstructions(blobs(12, 64, 3), blobs(12, 64, 3, seed=1), p, ncol=6),
        "points": lambda p: plot_reconstructions(pinwheel_like(), pinwheel_like() * 0.95, p),
    },
    "plot_samples": {
        "images 64x64": lambda p: plot_samples(blobs(64, 64), p),
        "points": lambda p: plot_samples(pinwheel_like(), p),
        "points over the data, titled": lambda p: plot_samples(
            pinwheel_like() * 0.4, p, data=pinwheel_like(seed=1), title="decoder means E[x|z] of z ~ p(z)"
        ),
    },
    "plot_traversals": {
        "10-D with values": lambda p: plot_traversals(
            blobs(90, 32).view(10, 9, 1, 32, 32), p, values=torch.linspace(-3, 3, 9)
        ),
        "without values": lambda p: plot_traversals(blobs(15, 64).view(3, 5, 64, 64), p, dims=[0, 4, 7]),
        "titled, two lines": lambda p: plot_traversals(
            blobs(18, 32).view(2, 9, 1, 32, 32),
            p,
            values=torch.linspace(-3, 3, 9),
            title="Student-t, β=4: traversals\n(smoke scale: barely trained, a plumbing check)",
        ),
    },
    "plot_aggregate_posterior": {
        "2-D mixture": lambda p: plot_aggregate_posterior(pinwheel_like(2000), mixture_prior(), p),
        "2-D, 150 codes, titled": lambda p: plot_aggregate_posterior(
            pinwheel_like(150), mixture_prior(), p, title="arm β=0, α=1: held-out q(z) against p(z)"
        ),
        "10-D": lambda p: plot_aggregate_posterior(
            torch.randn(2000, 10) * 1.3, dist.Normal(torch.zeros(10), torch.ones(10)).to_event(1), p
        ),
    },
    "plot_latent_magnitude": {
        "3 classes": lambda p: plot_latent_magnitude(torch.randn(90, 4), torch.arange(90) % 3, p),
        "5 classes": lambda p: plot_latent_magnitude(
            torch.randn(100, 6), torch.arange(100) % 5, p, normalise=False
        ),
        "10 classes": lambda p: plot_latent_magnitude(
            torch.randn(500, 10) + 3 * torch.eye(10)[torch.arange(500) % 10],
            torch.arange(500) % 10,
            p,
            class_names=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
            + ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
        ),
        "50-D": lambda p: plot_latent_magnitude(
            torch.randn(500, 50) * (torch.arange(50) < 8), torch.arange(500) % 10, p, title="γ=0.8, α=100"
        ),
    },
    "plot_training_curves": {
        "default keys, held-out": lambda p: plot_training_curves(curve_records(), p),
        "chosen keys": lambda p: plot_training_curves(curve_records(), p, keys=["loss", "kl", "divergence"]),
        "one epoch, per step": lambda p: plot_training_curves(step_records(1), p, keys=["loss", "kl"]),
    },
    "plot_encodings_by_arm": {
        "two arms": lambda p: plot_encodings_by_arm(
            {
                "β=1, α=0": pinwheel_like(300) * 0.5,
                "β=0, α=1 (inclusive KL)": pinwheel_like(300, seed=1) * 0.6,
            },
            mixture_prior(),
            p,
        ),
        "one arm, titled": lambda p: plot_encodings_by_arm(
            {"codes": pinwheel_like(200)}, mixture_prior(), p, title="held-out encoder means, seed 0"
        ),
    },
    "plot_disentanglement_vs_reconstruction": {
        "sweep": lambda p: plot_disentanglement_vs_reconstruction(sweep(), p),
        "no groups": lambda p: plot_disentanglement_vs_reconstruction(
            sweep()[:5], p, x="reconstruction", group=None, label=lambda r: f"beta {r['beta']}"
        ),
    },
}

PLOTTERS = sorted(name for name in plots.__all__ if name.startswith("plot_"))


def test_every_plotting_function_is_checked():
    assert PLOTTERS == sorted(CASES), "give every public plot_* function a case in CASES"
    assert all(callable(getattr(plots, name)) for name in PLOTTERS)


@pytest.mark.parametrize("name, case", [(n, c) for n in CASES for c in CASES[n]])
def test_figures_have_titles_and_labelled_axes(name, case, saved, tmp_path):
    CASES[name][case](tmp_path / "figure.png")
    assert len(saved) == 1 and (tmp_path / "figure.png").stat().st_size > 0
    _, problems, _ = saved[0]
    assert problems == [], f"{name} ({case}): {problems}"


@pytest.mark.parametrize("name, case", [(n, c) for n in CASES for c in CASES[n]])
def test_no_text_is_clipped(name, case, saved, tmp_path):
    CASES[name][case](tmp_path / "figure.png")
    _, _, clipped = saved[0]
    assert clipped == [], f"{name} ({case}): text outside the image: {clipped}"


def all_texts(fig):
    texts = []
    for ax in fig.axes:
        texts += shown_text(ax.get_yticklabels()) + shown_text(ax.get_xticklabels()) + titles(ax)
        texts += [t.get_text() for t in ax.texts]
        legend = ax.get_legend()
        if legend is not None:
            texts += [t.get_text() for t in legend.get_texts()]
    return texts + [t.get_text() for t in fig.texts]


def test_reconstruction_rows_are_labelled(saved, tmp_path):
    plot_reconstructions(blobs(12, 32), blobs(12, 32, seed=1), tmp_path / "images.png", ncol=5)
    plot_reconstructions(pinwheel_like(), pinwheel_like() * 0.9, tmp_path / "points.png")
    for fig, _, _ in saved:
        texts = all_texts(fig)
        assert "data" in texts and "reconstruction" in texts
    # the image grid: one label per row, originals and reconstructions alternating
    grid = saved[0][0].axes[0]
    assert shown_text(grid.get_yticklabels()) == ["data", "reconstruction"] * 3


def test_traversal_rows_and_columns_are_labelled(saved, tmp_path):
    values = torch.linspace(-2, 2, 5)
    plot_traversals(blobs(15, 16).view(3, 5, 1, 16, 16), tmp_path / "t.png", values=values, dims=[1, 4, 6])
    ax = saved[0][0].axes[0]
    assert shown_text(ax.get_yticklabels()) == ["$z_{1}$", "$z_{4}$", "$z_{6}$"]
    assert shown_text(ax.get_xticklabels()) == [f"{v:.3g}" for v in values.tolist()]
    assert "dimension" in ax.get_ylabel() and "value" in ax.get_xlabel()


def test_prior_contours_stay_above_the_density_floor(saved, tmp_path):
    """Contours at levels near the grid's floor (where the density underflows) trace the corners."""
    prior = mixture_prior()
    plot_aggregate_posterior(pinwheel_like(2000) * 1.5, prior, tmp_path / "q.png")
    fig = saved[0][0]
    contours = [c for ax in fig.axes for c in ax.collections if isinstance(c, ContourSet)]
    assert contours, "the prior's contours are drawn over q(z)"
    levels = np.concatenate([np.asarray(c.levels) for c in contours])
    images = [ax.images[0] for ax in fig.axes if not is_colorbar(ax) and ax.images]
    density = np.asarray(images[1].get_array())  # the prior's panel
    corners = density[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert levels.min() > 0.05 * density.max()
    assert levels.min() > 100 * corners.max()


def test_sweep_labels_do_not_overlap(saved, tmp_path):
    plot_disentanglement_vs_reconstruction(sweep(), tmp_path / "sweep.png")
    fig = saved[0][0]
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    labels = [t for t in fig.axes[0].texts if isinstance(t, Annotation)]
    assert len(labels) == len(sweep())
    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text, not its leader line
    overlapping = [
        (labels[i].get_text(), labels[j].get_text())
        for i in range(len(boxes))
        for j in range(i + 1, len(boxes))
        if boxes[i].overlaps(boxes[j])
    ]
    assert overlapping == []


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_training_curves_show_heldout_values(saved, tmp_path):
    records = curve_records(epochs=12, every=3)
    plot_training_curves(records, tmp_path / "curves.png")
    fig = saved[0][0]
    axes = [ax for ax in fig.axes if not is_colorbar(ax)]
    assert len(axes) == 4  # loss, reconstruction, kl, divergence: the held-out values share their panels
    for ax, key in zip(axes, ("loss", "reconstruction", "kl", "divergence")):
        lines = lines_by_label(ax)
        assert list(lines.get("training").get_xdata()) == list(range(12))
        if key == "divergence":
            assert "held-out" not in lines
            continue
        heldout = lines["held-out"]
        assert list(heldout.get_xdata()) == [2, 5, 8, 11]
        assert list(heldout.get_ydata()) == [r["heldout_" + key] for r in records if "heldout_" + key in r]
        assert heldout.get_marker() not in (None, "None", "")
        assert sorted(shown_text(ax.get_legend().get_texts())) == ["held-out", "training"]
    # the old call forms: chosen keys, and held-out values left out (their keys then get panels of their own)
    plot_training_curves(records, tmp_path / "two.png", keys=["loss", "kl"])
    assert [list(lines_by_label(ax)) for ax in saved[1][0].axes] == [["training", "held-out"]] * 2
    plot_training_curves(records, tmp_path / "plain.png", heldout=False)
    axes = saved[2][0].axes
    assert len(axes) == 7 and all(list(lines_by_label(ax)) == ["training"] for ax in axes)
    assert axes[-1].get_xlabel() == "epoch"


# ------------------------------------------------------------------------------------------ honest figures
def test_samples_over_the_data_share_the_datas_axes(saved, tmp_path):
    data = pinwheel_like(400) * 2.0
    plot_samples(pinwheel_like(200) * 0.4, tmp_path / "s.png", data=data, title="decoder means")
    ax = saved[0][0].axes[0]
    assert ax.get_title() == "decoder means" and ax.get_aspect() == 1.0
    (lo_x, hi_x), (lo_y, hi_y) = ax.get_xlim(), ax.get_ylim()
    assert lo_x <= float(data[:, 0].min()) and hi_x >= float(data[:, 0].max())
    assert lo_y <= float(data[:, 1].min()) and hi_y >= float(data[:, 1].max())
    assert sorted(shown_text(ax.get_legend().get_texts())) == ["data", "samples"]
    with pytest.raises(ValueError, match="data must be points"):
        plot_samples(torch.randn(10, 2), tmp_path / "bad.png", data=torch.randn(10, 3))


def test_two_dim_aggregate_posterior_is_a_smooth_density_at_equal_scales(saved, tmp_path):
    from pyro_decomp.plots.latents import _kernel_density

    plot_aggregate_posterior(pinwheel_like(150), mixture_prior(), tmp_path / "q.png", title="an arm")
    fig = saved[0][0]
    panels = [ax for ax in fig.axes if not is_colorbar(ax)]
    assert all(ax.get_aspect() == 1.0 for ax in panels)
    assert fig._suptitle.get_text() == "an arm"
    # the estimate against a brute-force sum of Gaussian kernels, and it integrates to about one
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 2, generator=g).double().numpy() * np.array([1.0, 0.5])
    xs, ys = np.linspace(-5, 5, 201), np.linspace(-4, 4, 161)
    estimate = _kernel_density(z, xs, ys)
    h = z.std(0) * 50 ** (-1 / 6)
    i, j = 37, 101
    brute = np.mean(
        [
            math.exp(-0.5 * (((xs[i] - a) / h[0]) ** 2 + ((ys[j] - b) / h[1]) ** 2))
            / (2 * math.pi * h[0] * h[1])
            for a, b in z
        ]
    )
    assert estimate[i, j] == pytest.approx(brute, rel=1e-9)
    assert estimate.sum() * (xs[1] - xs[0]) * (ys[1] - ys[0]) == pytest.approx(1.0, abs=0.01)


def test_an_inactive_dimension_looks_inactive_and_fifty_dimensions_stay_readable(saved, tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(600) % 6
    codes = 0.01 * torch.randn(600, 50, generator=g)
    codes[:, :6] += 2.0 * torch.eye(6)[labels] + 0.3 * torch.randn(600, 6, generator=g)
    codes[:, 30] += 5.0  # inactive, far from 0: it does not move with x
    path = plot_latent_magnitude(codes, labels, tmp_path / "m.png")
    width, height = png_size(path)
    assert width <= 1100 and height >= 300  # not 2500 x 255
    table = np.asarray(saved[0][0].axes[0].images[0].get_array())
    assert table[:, 30].max() < 0.05 * table[:, :6].max()  # dark, like the other inactive dimensions
    assert table[np.arange(6), np.arange(6)].min() > 10 * table[:, 6:].max()


def test_training_curves_of_a_short_run_show_every_step(saved, tmp_path):
    records = step_records(2)
    plot_training_curves(records, tmp_path / "c.png", keys=["loss", "kl"])
    loss_panel = saved[0][0].axes[0]
    lines = lines_by_label(loss_panel)
    steps = lines["training, per step"]
    assert len(steps.get_xdata()) == 80 and steps.get_xdata()[0] == pytest.approx(0.5 / 40)
    assert list(steps.get_ydata()) == records[0]["step_loss"] + records[1]["step_loss"]
    assert list(lines["training"].get_xdata()) == [1, 2]
    assert "training, per step" not in lines_by_label(saved[0][0].axes[1])  # only the loss has them
    # the bookkeeping keys get no panel of their own
    plot_training_curves(records, tmp_path / "d.png")
    assert len([ax for ax in saved[1][0].axes if not is_colorbar(ax)]) == 2


def test_a_figure_that_cannot_be_written_fails_in_one_line_and_leaves_the_old_file(tmp_path, monkeypatch):
    import errno

    from matplotlib.figure import Figure

    path = tmp_path / "s.png"
    plot_samples(images(4), path)
    old = path.read_bytes()

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    with pytest.raises(OSError) as info:
        plot_samples(images(8), path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "No space left on device" in message
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["s.png"]  # no temporary


def test_aggregate_posterior_against_a_flow_prior(tmp_path):
    """A normalising flow has no closed-form mean; its density is drawn on the grid all the same, and drawing
    it leaves the caller's random state alone."""
    import pyro.distributions.transforms as T

    torch.manual_seed(0)
    flow = dist.TransformedDistribution(dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1), [T.spline(2)])
    with pytest.raises(NotImplementedError):
        _ = flow.mean
    codes = torch.randn(500, 2)
    state = torch.get_rng_state()
    check_png(plot_aggregate_posterior(codes, flow, tmp_path / "flow.png"), (9, 4))
    assert torch.equal(torch.get_rng_state(), state)
