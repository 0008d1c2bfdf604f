"""The clustering experiment's per-run measurements on hand-built cases, and its figure of both arms."""

import math

import pyro.distributions as dist
import pytest
import torch
from matplotlib.contour import ContourSet

from pyro_decomp import DecompVAE, plots
from pyro_decomp.experiments.measure import MIN_OCCUPANCY, components_used, decoder_scale
from pyro_decomp.nets import MLPDecoder, MLPEncoder
from pyro_decomp.priors import pinwheel_mixture

LOCS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])


def at_components(counts, spread=0.05, seed=0):
    """``counts[k]`` points near component k."""
    g = torch.Generator().manual_seed(seed)
    points = [LOCS[k] + spread * torch.randn(n, 2, generator=g) for k, n in enumerate(counts)]
    return torch.cat(points)


def test_components_used_counts_occupied_components():
    assert MIN_OCCUPANCY == 0.05
    assert components_used(at_components([25, 25, 25, 25]), LOCS) == 4
    # 1% near the fourth component: not used at the 5% threshold
    assert components_used(at_components([50, 30, 19, 1]), LOCS) == 3
    # exactly 5% is used
    assert components_used(at_components([50, 30, 15, 5]), LOCS) == 4
    # all on one component, or collapsed to the origin's neighbourhood nearest one component
    assert components_used(at_components([100, 0, 0, 0]), LOCS) == 1
    assert components_used(torch.tensor([[0.3, 0.01]]).expand(40, 2), LOCS) == 1
    # a stricter threshold
    assert components_used(at_components([50, 30, 15, 5]), LOCS, min_fraction=0.2) == 2
    with pytest.raises(ValueError, match="share D"):
        components_used(torch.zeros(5, 3), LOCS)
    with pytest.raises(ValueError, match="min_fraction"):
        components_used(at_components([1, 1, 1, 1]), LOCS, min_fraction=0.0)


def decoder_vae(bias: float):
    """A pinwheel VAE whose decoder predicts σ(z) = softplus(bias) + 1e-4 everywhere."""
    decoder = MLPDecoder(2, (2,), hidden=(8,), scale="decoder")
    with torch.no_grad():
        decoder.raw_scale.weight.zero_()
        decoder.raw_scale.bias.fill_(bias)
    return DecompVAE(MLPEncoder((2,), 2, hidden=(8,)), decoder, pinwheel_mixture(), likelihood="normal")


def test_decoder_scale_of_a_decoder_that_predicts_it():
    bias = math.log(math.expm1(0.3))  # softplus(bias) = 0.3
    vae = decoder_vae(bias)
    z = at_components([10, 10, 10, 10])
    assert decoder_scale(vae, z) == pytest.approx(0.3 + 1e-4, rel=1e-5)
    # the mean over points and coordinates: σ = 0.2 for x_0 and 0.4 for x_1
    with torch.no_grad():
        vae.decoder.raw_scale.bias.copy_(torch.tensor([0.2, 0.4]).expm1().log())
    assert decoder_scale(vae, z) == pytest.approx(0.3 + 1e-4, rel=1e-5)


def test_decoder_scale_of_a_global_scale():
    decoder = MLPDecoder(2, (2,), hidden=(8,), scale="global")
    vae = DecompVAE(
        MLPEncoder((2,), 2, hidden=(8,)), decoder, pinwheel_mixture(), likelihood="normal", obs_shape=(2,)
    )
    assert decoder_scale(vae, torch.zeros(3, 2)) == pytest.approx(0.1)  # initialised at likelihood_scale
    with torch.no_grad():
        vae.log_obs_scale.copy_(torch.tensor([0.1, 0.3]).log())
    assert decoder_scale(vae, torch.zeros(3, 2)) == pytest.approx(0.2)
    laplace = DecompVAE(
        MLPEncoder((2,), 2, hidden=(8,)),
        MLPDecoder(2, (2,), hidden=(8,)),
        pinwheel_mixture(),
        "laplace",
        0.25,
    )
    assert decoder_scale(laplace, torch.zeros(3, 2)) == pytest.approx(0.25)
    bernoulli = DecompVAE(
        MLPEncoder((2,), 2, hidden=(8,)), MLPDecoder(2, (2,), hidden=(8,)), pinwheel_mixture(), "bernoulli"
    )
    with pytest.raises(ValueError, match="no scale"):
        decoder_scale(bernoulli, torch.zeros(3, 2))


def test_encodings_by_arm_figure(tmp_path, monkeypatch):
    saved = []
    real = plots._save

    def save(fig, path):
        saved.append(fig)
        fig.clear = lambda *args, **kwargs: None
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    prior = pinwheel_mixture()()
    codes = {"β=1, α=0": at_components([100, 0, 0, 0], 0.2), "β=0, α=1": at_components([25, 25, 25, 25], 0.2)}
    path = plots.plot_encodings_by_arm(codes, prior, tmp_path / "enc.png")
    assert path == tmp_path / "enc.png" and path.stat().st_size > 0
    ax = saved[0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["β=1, α=0", "β=0, α=1", "p(z): 1 sd", "p(z): 2 sd"]
    assert len([c for c in ax.collections if isinstance(c, ContourSet)]) == 2
    assert ax.get_xlabel() == "$z_{0}$" and ax.get_ylabel() == "$z_{1}$" and ax.get_title()
    # the plotting range holds the prior's components and the codes
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < -1 < 1 < x1 and y0 < -1 < 1 < y1
    with pytest.raises(ValueError, match="event_shape"):
        plots.plot_encodings_by_arm(codes, dist.Normal(torch.zeros(3), 1.0).to_event(1), tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"\(M, 2\)"):
        plots.plot_encodings_by_arm({"a": torch.zeros(4, 3)}, prior, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="no arms"):
        plots.plot_encodings_by_arm({}, prior, tmp_path / "bad.png")
