import json
import math
import struct

import matplotlib
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_decomp import DecompVAE
from pyro_decomp.plots import (
    CELL,
    latent_traversal,
    plot_aggregate_posterior,
    plot_disentanglement_vs_reconstruction,
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
    with pytest.raises(ValueError, match="metrics.jsonl:1"):
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
