import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam
from torch import nn
from torch.distributions import kl_divergence

from pyro_decomp.divergences import DIVERGENCES, ExclusiveKL, build_divergence
from pyro_decomp.elbo import DecompositionELBO
from pyro_decomp.nets import MLPDecoder, MLPEncoder
from pyro_decomp.vae import DecompVAE


def std_normal(d, scale=1.0):
    return dist.Normal(torch.zeros(d), torch.full((d,), float(scale))).to_event(1)


PRIORS = {
    "normal": lambda d: std_normal(d),
    "laplace": lambda d: dist.Laplace(torch.zeros(d), torch.ones(d)).to_event(1),  # closed-form KL
    "student-t": lambda d: dist.StudentT(5.0, torch.zeros(d), torch.ones(d)).to_event(1),  # Monte Carlo KL
}


def make_vae(prior, d=2):
    return DecompVAE(MLPEncoder(2, d), MLPDecoder(d, 2), prior, likelihood="normal")


class ScalePrior(nn.Module):
    """p(z) = N(0, softplus(raw)^2 I) with a learnable raw scale."""

    def __init__(self, d):
        super().__init__()
        self.raw = nn.Parameter(torch.full((d,), 0.3))

    def forward(self):
        return dist.Normal(torch.zeros_like(self.raw), nn.functional.softplus(self.raw)).to_event(1)


def linear_pair(prior_fn, guide_fn, W, noise=0.7):
    """A model x ~ N(z W, noise^2 I), z ~ prior_fn(), and a guide z ~ guide_fn(x), in a data plate of full
    size ``dataset_size`` (default: the batch)."""

    def model(x, dataset_size=None):
        with pyro.plate("data", dataset_size or x.shape[0], subsample=torch.arange(x.shape[0])):
            z = pyro.sample("z", prior_fn())
            pyro.sample("x", dist.Normal(z @ W, noise).to_event(1), obs=x)

    def guide(x, dataset_size=None):
        with pyro.plate("data", dataset_size or x.shape[0], subsample=torch.arange(x.shape[0])):
            pyro.sample("z", guide_fn(x))

    return model, guide


def loss_and_grads(elbo, vae, x, seed, **kw):
    params = [p for p in vae.parameters()]
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(vae.model, vae.guide, x, **kw)
    return loss, torch.autograd.grad(loss, params, allow_unused=True)


# ---------------------------------------------------------------------------------- beta = 1, alpha = 0
@pytest.mark.parametrize("prior", list(PRIORS))
@pytest.mark.parametrize("analytic_kl", [True, False])
@pytest.mark.parametrize("dataset_size", [None, 1000])
def test_beta_one_alpha_zero_is_pyros_elbo(prior, analytic_kl, dataset_size):
    """TraceMeanField_ELBO with the closed-form KL (or its Monte Carlo fallback), Trace_ELBO without."""
    vae = make_vae(PRIORS[prior](2))
    x = torch.randn(16, 2)
    reference = TraceMeanField_ELBO() if analytic_kl else Trace_ELBO()
    ours = DecompositionELBO(analytic_kl=analytic_kl)
    ref_loss, ref_grads = loss_and_grads(reference, vae, x, 3, dataset_size=dataset_size)
    loss, grads = loss_and_grads(ours, vae, x, 3, dataset_size=dataset_size)
    assert torch.allclose(loss, ref_loss, rtol=1e-6)
    assert sum(g is not None for g in grads) == len(grads)
    for g, h in zip(grads, ref_grads):
        assert torch.allclose(g, h, rtol=1e-5, atol=1e-6 * h.abs().max().item())
    pyro.set_rng_seed(4)
    ref_value = reference.loss(vae.model, vae.guide, x, dataset_size=dataset_size)
    pyro.set_rng_seed(4)
    assert ours.loss(vae.model, vae.guide, x, dataset_size=dataset_size) == pytest.approx(ref_value, rel=1e-6)


# ------------------------------------------------------------------------------------- the loss's parts
@pytest.mark.parametrize("dataset_size", [None, 500])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_loss_is_reconstruction_kl_and_divergence_on_fixed_samples(dataset_size, divergence):
    """loss = -(sum_n E log p(x|z) - beta sum_n KL_n) + alpha N D_hat with (N/B)-scaled sums, on the samples
    the ELBO draws (same seed: the guide draws z, then the divergence draws from the prior)."""
    B, D = 12, 2
    vae = make_vae(std_normal(D), d=D)
    x = torch.randn(B, 2)
    N = dataset_size or B
    for beta, alpha in [(0.0, 0.0), (0.5, 2.0), (1.0, 10.0), (4.0, 0.3)]:
        elbo = DecompositionELBO(beta=beta, alpha=alpha, divergence=divergence)
        pyro.set_rng_seed(9)
        loss = elbo.differentiable_loss(vae.model, vae.guide, x, dataset_size=dataset_size)
        pyro.set_rng_seed(9)
        components = elbo.loss_components(vae.model, vae.guide, x, dataset_size=dataset_size)

        pyro.set_rng_seed(9)
        z = poutine.trace(vae.guide).get_trace(x, dataset_size=dataset_size).nodes["z"]["value"]
        q, prior = vae.encoder_distribution(x), vae.prior_distribution()
        d_hat = build_divergence(divergence)(z, q, prior.expand([B])).item()
        with torch.no_grad():
            reconstruction = (N / B) * vae.likelihood(vae.decoder(z), 1).log_prob(x).sum().item()
            kl = (N / B) * kl_divergence(q, prior).sum().item()
        expected = -(reconstruction - beta * kl) + alpha * N * d_hat
        assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-4)
        assert components["reconstruction"] == pytest.approx(reconstruction / N, rel=1e-5)
        assert components["kl"] == pytest.approx(kl / N, rel=1e-5)
        assert components["divergence"] == pytest.approx(d_hat, rel=1e-5, abs=1e-6)
        assert components["other_kl"] == 0.0
        assert components["loss"] == pytest.approx(expected / N, rel=1e-5, abs=1e-6)


def test_loss_method_and_sequential_particles():
    """``loss`` is the float of ``differentiable_loss``; sequential particles average consecutive draws."""
    vae = make_vae(std_normal(2))
    x = torch.randn(10, 2)
    one = DecompositionELBO(beta=2.0, alpha=3.0)
    pyro.set_rng_seed(1)
    value = one.differentiable_loss(vae.model, vae.guide, x).item()
    pyro.set_rng_seed(1)
    assert one.loss(vae.model, vae.guide, x) == pytest.approx(value, rel=1e-6)
    pyro.set_rng_seed(2)
    first, second = one.loss(vae.model, vae.guide, x), one.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(2)
    two = DecompositionELBO(beta=2.0, alpha=3.0, num_particles=2).loss(vae.model, vae.guide, x)
    assert two == pytest.approx((first + second) / 2, rel=1e-6)


def test_other_latent_sites_get_plain_elbo_terms():
    """A second latent site "w" outside ``latent_sites`` contributes log p(w) - log q(w), unweighted."""
    W = torch.randn(2, 3)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", std_normal(2))
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z @ W + w[:, None], 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x[:, :2], 0.5).to_event(1))
            pyro.sample("w", dist.Normal(x[:, 2], 0.3))

    x = torch.randn(6, 3)
    beta = 3.0
    pyro.set_rng_seed(0)
    loss = DecompositionELBO(beta=beta).differentiable_loss(model, guide, x)
    pyro.set_rng_seed(0)
    tr = poutine.trace(guide).get_trace(x)
    z, w = tr.nodes["z"]["value"], tr.nodes["w"]["value"]
    q_z, q_w = dist.Normal(x[:, :2], 0.5).to_event(1), dist.Normal(x[:, 2], 0.3)
    rec = dist.Normal(z @ W + w[:, None], 1.0).to_event(1).log_prob(x).sum()
    other = (q_w.log_prob(w) - dist.Normal(0.0, 1.0).log_prob(w)).sum()
    expected = -(rec - beta * kl_divergence(q_z, std_normal(2)).sum() - other)
    assert torch.allclose(loss, expected, rtol=1e-5)


# ---------------------------------------------------------------------------------- the paper's identities
@pytest.mark.parametrize("analytic_kl", [True, False])
@pytest.mark.parametrize("beta", [0.5, 2.0, 6.0])
def test_beta_vae_is_annealed_prior_plus_max_entropy(beta, analytic_kl):
    """L_beta(x; p) = L(x; f_beta) + (beta - 1) H[q(z|x)] + log F_beta on the same samples, for
    p = N(0, s^2 I): f_beta = N(0, s^2/beta I), log F_beta = D[(1-beta)/2 log(2 pi s^2) - 1/2 log beta]
    (Mathieu et al., 2019, §4). Summed over the data set: H and log F_beta are scaled by the plate. With the
    Monte Carlo KL the identity holds exactly with H estimated by -log q(z|x) at the same samples."""
    B, D, N, s = 8, 3, 200, 1.5
    A, W = torch.randn(4, D), torch.randn(D, 4)
    enc_scale = torch.rand(B, D) + 0.2

    def guide_fn(x):
        return dist.Normal(x @ A, enc_scale).to_event(1)

    p_model, guide = linear_pair(lambda: std_normal(D, s), guide_fn, W)
    f_model, _ = linear_pair(lambda: std_normal(D, s / math.sqrt(beta)), guide_fn, W)
    x = torch.randn(B, 4)
    pyro.set_rng_seed(5)
    l_beta = -DecompositionELBO(beta=beta, analytic_kl=analytic_kl).loss(p_model, guide, x, dataset_size=N)
    pyro.set_rng_seed(5)
    l_annealed = -DecompositionELBO(beta=1.0, analytic_kl=analytic_kl).loss(f_model, guide, x, dataset_size=N)
    if analytic_kl:
        entropy = (N / B) * guide_fn(x).entropy().sum().item()
    else:
        # Monte Carlo KL: the entropy is -log q(z|x) at the same samples
        pyro.set_rng_seed(5)
        z = poutine.trace(guide).get_trace(x, dataset_size=N).nodes["z"]["value"]
        entropy = -(N / B) * guide_fn(x).log_prob(z).sum().item()
    log_f = D * ((1 - beta) / 2 * math.log(2 * math.pi * s**2) - 0.5 * math.log(beta))
    assert l_beta == pytest.approx(l_annealed + (beta - 1) * entropy + N * log_f, rel=1e-5)


def _random_rotation(d, generator):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator))
    return q * torch.sign(torch.diagonal(r))


def test_kl_term_is_rotation_invariant_only_under_an_isotropic_prior():
    """KL(N(R mu, R S R^T) || p) = KL(N(mu, S) || p) for p = N(0, s^2 I), not for an anisotropic p. The ELBO's
    KL (closed form for a MultivariateNormal pair) is also checked against the Gaussian KL formula."""
    B, D = 6, 3
    g = torch.Generator().manual_seed(0)
    mu, var = torch.randn(B, D, generator=g), torch.rand(B, D, generator=g) + 0.1
    R = _random_rotation(D, g)
    cov = torch.diag_embed(var)
    plain = dist.MultivariateNormal(mu, cov)
    rotated = dist.MultivariateNormal(mu @ R.T, R @ cov @ R.T)
    W = torch.randn(D, 2)
    x = torch.randn(B, 2)

    def kl_per_point(prior, q):
        model, guide = linear_pair(lambda: prior, lambda x: q, W)
        return DecompositionELBO().loss_components(model, guide, x)["kl"]

    def gaussian_kl(loc, cov, prior_var):
        """KL(N(loc_b, cov_b) || N(0, diag prior_var)) by the Gaussian formula, averaged over b."""
        inv = 1.0 / prior_var
        trace = (torch.diagonal(cov, dim1=-2, dim2=-1) * inv).sum(-1)
        maha = (loc**2 * inv).sum(-1)
        terms = (trace + maha - D + prior_var.log().sum() - torch.logdet(cov)) / 2
        return terms.mean().item()

    rot_loc, rot_cov = mu @ R.T, R @ cov @ R.T
    iso_var = torch.full((D,), 2.0)
    iso = dist.MultivariateNormal(torch.zeros(D), torch.diag(iso_var))
    assert kl_per_point(iso, plain) == pytest.approx(gaussian_kl(mu, cov, iso_var), rel=1e-5)
    assert kl_per_point(iso, rotated) == pytest.approx(gaussian_kl(rot_loc, rot_cov, iso_var), rel=1e-5)
    assert kl_per_point(iso, rotated) == pytest.approx(kl_per_point(iso, plain), rel=1e-5)

    aniso_var = torch.tensor([4.0, 1.0, 0.1])
    aniso = dist.MultivariateNormal(torch.zeros(D), torch.diag(aniso_var))
    assert kl_per_point(aniso, plain) == pytest.approx(gaussian_kl(mu, cov, aniso_var), rel=1e-5)
    assert kl_per_point(aniso, rotated) == pytest.approx(gaussian_kl(rot_loc, rot_cov, aniso_var), rel=1e-5)
    # the rotation changes the KL by far more than the 1e-5 agreement above
    assert abs(kl_per_point(aniso, rotated) / kl_per_point(aniso, plain) - 1) > 1e-2


# ------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergence_gradients_reach_encoder_and_learnable_prior(divergence):
    """loss(alpha) - loss(0) on the same samples is alpha N D_hat; its gradient reaches the encoder and the
    prior's parameter, and one SVI step moves the prior."""
    prior = ScalePrior(2)
    vae = make_vae(prior)
    x = torch.randn(12, 2)
    pyro.set_rng_seed(0)
    with_div = DecompositionELBO(alpha=5.0, divergence=divergence).differentiable_loss(
        vae.model, vae.guide, x
    )
    pyro.set_rng_seed(0)
    without = DecompositionELBO(alpha=0.0).differentiable_loss(vae.model, vae.guide, x)
    encoder = list(vae.encoder.parameters())
    grads = torch.autograd.grad(with_div - without, encoder + [prior.raw], retain_graph=True)
    for g in grads:
        assert torch.isfinite(g).all()
    assert sum(g.abs().sum() for g in grads[:-1]) > 0
    assert grads[-1].abs().sum() > 0
    # the beta-weighted KL also reaches the prior
    (g_kl,) = torch.autograd.grad(without, [prior.raw])
    assert g_kl.abs().sum() > 0

    before = prior.raw.detach().clone()
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), DecompositionELBO(alpha=5.0, divergence=divergence))
    assert math.isfinite(svi.step(x))
    assert not torch.equal(before, prior.raw.detach())


# ------------------------------------------------------------------------------------------- particles
class SpyExclusiveKL(ExclusiveKL):
    """Records the inputs and value of the last call."""

    def __call__(self, z, q, prior):
        value = super().__call__(z, q, prior)
        self.seen = (z.shape, q.batch_shape, prior.batch_shape, value.item())
        return value


def test_vectorised_particles_see_k_b_d_and_weight_the_divergence_once():
    K, B, D, N = 4, 10, 2, 300
    vae = make_vae(std_normal(D), d=D)
    x = torch.randn(B, 2)
    spy = SpyExclusiveKL()
    # max_plate_nesting given, so that no ELBO spends random draws guessing it
    opts = dict(num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    elbo = DecompositionELBO(alpha=2.0, divergence=spy, **opts)
    pyro.set_rng_seed(4)
    loss = elbo.loss(vae.model, vae.guide, x, dataset_size=N)
    z_shape, q_shape, p_shape, d_hat = spy.seen
    assert z_shape == (K, B, D) and q_shape == (K, B) and p_shape == (K, B)
    pyro.set_rng_seed(4)
    base = DecompositionELBO(**opts).loss(vae.model, vae.guide, x, dataset_size=N)
    assert loss - base == pytest.approx(2.0 * N * d_hat, rel=1e-4)
    pyro.set_rng_seed(4)
    components = elbo.loss_components(vae.model, vae.guide, x, dataset_size=N)
    assert components["divergence"] == pytest.approx(d_hat, rel=1e-5)
    assert components["loss"] == pytest.approx(loss / N, rel=1e-5)


@pytest.mark.parametrize("divergence", ["mmd", "inclusive-kl"])
def test_vectorised_and_sequential_particles_agree_in_expectation(divergence):
    """Means of R independent evaluations of the per-point loss and divergence; tolerance 4 standard errors
    of the difference of means. alpha is large enough that alpha D_hat dominates the loss's spread, so a
    particle-weighting error in the divergence term would show."""
    K, B, R = 4, 16, 40
    vae = make_vae(std_normal(2))
    x = torch.randn(B, 2)
    kw = dict(beta=2.0, alpha=50.0, divergence=divergence, num_particles=K, max_plate_nesting=1)
    results = {}
    for vectorize in (True, False):
        elbo = DecompositionELBO(vectorize_particles=vectorize, **kw)
        runs = [elbo.loss_components(vae.model, vae.guide, x, dataset_size=100) for _ in range(R)]
        results[vectorize] = {key: torch.tensor([r[key] for r in runs]) for key in ("loss", "divergence")}
    for key in ("loss", "divergence"):
        a, b = results[True][key], results[False][key]
        se = math.sqrt(a.var().item() / R + b.var().item() / R)
        assert abs(a.mean().item() - b.mean().item()) < 4 * se
    assert results[True]["divergence"].mean() * kw["alpha"] > 4 * results[True]["loss"].std() / math.sqrt(R)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(beta=-1.0), "beta"),
        (dict(alpha=-0.5), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(beta=True), "beta"),
        (dict(divergence="wasserstein"), "'wasserstein'"),
        (dict(latent_sites=()), "latent_sites"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        DecompositionELBO(**kw)


def test_beta_and_alpha_can_be_annealed_but_stay_valid():
    elbo = DecompositionELBO()
    elbo.beta, elbo.alpha = 4.0, 2.5
    assert (elbo.beta, elbo.alpha) == (4.0, 2.5)
    with pytest.raises(ValueError, match="beta"):
        elbo.beta = -2.0


def test_missing_latent_site_is_named():
    vae = make_vae(std_normal(2))
    with pytest.raises(ValueError, match="'w'.*latent sites are \\['z'\\]"):
        DecompositionELBO(latent_sites=("z", "w")).loss(vae.model, vae.guide, torch.randn(4, 2))


def test_divergence_needs_the_data_plate():
    def model():
        pyro.sample("z", std_normal(2))

    def guide():
        pyro.sample("z", dist.Normal(torch.ones(2), 1.0).to_event(1))

    assert math.isfinite(DecompositionELBO().loss(model, guide))
    with pytest.raises(ValueError, match="pyro.plate"):
        DecompositionELBO(alpha=1.0).loss(model, guide)


# ------------------------------------------------------------------ a Pyro user's own model and guide
class TutorialVAE(nn.Module):
    """Pyro's tutorial VAE written without DecompVAE: site ``"latent"`` (optionally marked for the
    decomposition through its infer dict), minibatches through a subsampled plate or ``poutine.scale``."""

    def __init__(self, d=2, mark=False):
        super().__init__()
        self.d, self.mark = d, mark
        self.enc = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2 * d))
        self.dec = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 2))

    def model(self, x, n=None):
        pyro.module("dec", self.dec)
        infer = {"decomposition": True} if self.mark else {}
        with pyro.plate("data", n or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("latent", std_normal(self.d), infer=infer)
            pyro.sample("obs", dist.Normal(self.dec(z), 0.1).to_event(1), obs=x)

    def guide(self, x, n=None):
        pyro.module("enc", self.enc)
        loc, raw = self.enc(x).chunk(2, -1)
        with pyro.plate("data", n or len(x), subsample=torch.arange(len(x))):
            pyro.sample("latent", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def _train(model, guide, elbo, x, steps, *args):
    svi = SVI(model, guide, Adam({"lr": 1e-2}), elbo)
    return [svi.step(x, *args) for _ in range(steps)]


@pytest.mark.parametrize("how", ["latent_sites", "infer"])
def test_tutorial_model_with_site_latent_trains(how):
    x = torch.randn(32, 2)
    net = TutorialVAE(mark=how == "infer")
    options = {"latent_sites": "latent"} if how == "latent_sites" else {}
    elbo = DecompositionELBO(beta=1.0, alpha=1.0, divergence="inclusive-kl", **options)
    losses = _train(net.model, net.guide, elbo, x, 30)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    # the site is the decomposition's: its divergence is reported, and alpha weighs it in the loss
    parts = elbo.loss_components(net.model, net.guide, x)
    assert parts["divergence"] != 0.0 and parts["kl"] > 0.0


def test_unmarked_site_error_names_both_ways():
    net = TutorialVAE(mark=False)
    elbo = DecompositionELBO(alpha=0.0)
    with pytest.raises(ValueError) as info:
        elbo.loss(net.model, net.guide, torch.randn(8, 2))
    message = str(info.value)
    assert "'latent'" in message and "latent_sites=" in message and "infer={'decomposition': True}" in message
    assert "\n" not in message


def test_marked_and_named_sites_are_both_taken():
    net = TutorialVAE(mark=True)
    x = torch.randn(8, 2)
    named = DecompositionELBO(alpha=1.0, latent_sites="latent")
    both = DecompositionELBO(alpha=1.0, latent_sites=["latent"])
    pyro.set_rng_seed(1)
    a = named.loss(net.model, net.guide, x)
    pyro.set_rng_seed(1)
    b = both.loss(net.model, net.guide, x)
    assert a == b


def test_global_site_without_to_event_raises_as_trace_elbo_does():
    def model(x):
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0))  # batch shape (2,), outside any plate
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", std_normal(2))
            pyro.sample("x", dist.Normal(z + w, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("w", dist.Normal(torch.zeros(2), 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("z", std_normal(2))

    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="invalid log_prob shape") as theirs:
        Trace_ELBO().loss(model, guide, x)
    with pytest.raises(ValueError, match="invalid log_prob shape") as ours:
        DecompositionELBO(alpha=1.0).loss(model, guide, x)
    assert str(ours.value) == str(theirs.value)
    # without validation neither checks
    with pyro.validation_enabled(False):
        assert math.isfinite(DecompositionELBO(alpha=1.0).loss(model, guide, x))


def test_site_in_a_plate_that_does_not_fit_raises_as_trace_elbo_does():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x) + 1, 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z[:-1], 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(torch.zeros(len(x) + 1, 2), 1.0).to_event(1))

    x = torch.randn(4, 2)
    for elbo in (Trace_ELBO(), DecompositionELBO()):
        with pytest.raises((ValueError, RuntimeError)):
            elbo.loss(model, guide, x)


@pytest.mark.parametrize("divergence", ["mmd", "inclusive-kl"])
def test_poutine_scale_minibatch_equals_subsampled_plate(divergence):
    """N from either idiom: poutine.scale(N/B) around a plate of size B, or a subsampled plate of size N."""
    torch.manual_seed(0)
    net = TutorialVAE()
    x = torch.randn(16, 2)
    n = 400
    elbo = DecompositionELBO(beta=1.0, alpha=100.0, divergence=divergence, latent_sites="latent")
    scaled_model = poutine.scale(net.model, scale=n / len(x))
    scaled_guide = poutine.scale(net.guide, scale=n / len(x))
    results = []
    for model, guide, args in ((net.model, net.guide, (x, n)), (scaled_model, scaled_guide, (x,))):
        pyro.set_rng_seed(3)
        loss = elbo.loss(model, guide, *args)
        pyro.set_rng_seed(3)
        parts = elbo.loss_components(model, guide, *args)
        pyro.set_rng_seed(3)
        grad_loss = elbo.differentiable_loss(model, guide, *args)
        results.append((loss, parts, grad_loss.item()))
    (loss_a, parts_a, diff_a), (loss_b, parts_b, diff_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-6)
    assert diff_b == pytest.approx(diff_a, rel=1e-6)
    for key in parts_a:
        assert parts_b[key] == pytest.approx(parts_a[key], rel=1e-5, abs=1e-6), key
    # loss_components agree with the loss: its per-point loss times N is the loss
    assert parts_b["loss"] * n == pytest.approx(loss_b, rel=1e-5)


def test_scale_on_the_model_only_is_refused():
    net = TutorialVAE()
    x = torch.randn(8, 2)
    elbo = DecompositionELBO(alpha=1.0, latent_sites="latent")
    with pytest.raises(ValueError, match=r"scaled by 50 in the model but 1 in the guide.*poutine\.scale"):
        elbo.loss(poutine.scale(net.model, scale=50.0), net.guide, x)


@pytest.mark.parametrize("autoguide", ["AutoDelta", "AutoNormal", "AutoDiagonalNormal"])
@pytest.mark.parametrize("divergence", ["inclusive-kl", "exclusive-kl"])
def test_autoguide_delta_sites_refused_by_name_before_any_nan(autoguide, divergence):
    import warnings

    from pyro.infer import autoguide as autoguides

    net = TutorialVAE(mark=True)
    x = torch.randn(16, 2)

    def model(x):
        net.model(x, 64)

    guide = getattr(autoguides, autoguide)(model)
    elbo = DecompositionELBO(beta=1.0, alpha=1.0, divergence=divergence)
    svi = SVI(model, guide, Adam({"lr": 1e-2}), elbo)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*nan.*", category=UserWarning)  # no NaN warning first
        with pytest.raises(ValueError) as info:
            svi.step(x)
    message = str(info.value)
    assert "'latent'" in message and "Delta" in message and divergence in message and "'mmd'" in message
    # MMD, which needs samples only, trains with the same guide
    pyro.clear_param_store()
    guide = getattr(autoguides, autoguide)(model)
    elbo = DecompositionELBO(beta=1.0, alpha=1.0, divergence="mmd")
    losses = _train(model, guide, elbo, x, 5)
    assert all(math.isfinite(v) for v in losses)


def _readme_block(after):
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", readme.split(after, 1)[1], re.S).group(1)


def test_readme_tutorial_model_trains(capsys):
    namespace = {}
    exec(compile(_readme_block("### Your own model and guide"), "README", "exec"), namespace)
    parts = namespace["elbo"].loss_components(namespace["model"], namespace["guide"], namespace["x"], 400)
    assert all(math.isfinite(v) for v in parts.values())
    assert parts["divergence"] != 0.0  # the marked site "latent" is the decomposition's
    assert "reconstruction" in capsys.readouterr().out


@pytest.mark.parametrize("beta, alpha", [(1.0, 0.0), (0.0, 1.0), (2.0, 3.0)])
@pytest.mark.parametrize("particles", [1, 2])
def test_the_steps_components_come_from_its_own_traces_and_change_nothing(beta, alpha, particles):
    """Recording a step's components leaves the gradients and the random state as ``differentiable_loss``
    leaves them (the terms that the loss leaves out draw from a forked generator), and they equal
    ``loss_components`` at the same parameters and random state wherever the two draw the same numbers: not
    at alpha = 0 with several particles, where ``loss_components`` draws the divergence's samples between
    the particles and the step must not."""
    vae = make_vae(PRIORS["normal"](2))
    x = torch.randn(12, 2, generator=torch.Generator().manual_seed(3))
    elbo = DecompositionELBO(beta=beta, alpha=alpha, divergence="inclusive-kl", num_particles=particles)
    pyro.set_rng_seed(1)
    elbo.loss_and_grads(vae.model, vae.guide, x, dataset_size=40)
    recorded_grads = [p.grad.clone() for p in vae.parameters()]
    recorded_state = torch.get_rng_state()
    vae.zero_grad()
    pyro.set_rng_seed(1)
    elbo.differentiable_loss(vae.model, vae.guide, x, dataset_size=40).backward()
    assert all(torch.equal(p.grad, g) for p, g in zip(vae.parameters(), recorded_grads))
    assert torch.equal(torch.get_rng_state(), recorded_state)
    pyro.set_rng_seed(1)
    expected = elbo.loss_components(vae.model, vae.guide, x, dataset_size=40)
    assert elbo.last_components.keys() == expected.keys()
    if particles == 1 or alpha != 0.0:
        for key, value in expected.items():
            assert elbo.last_components[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
