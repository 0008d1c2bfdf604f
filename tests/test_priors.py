"""Tests for pyro_decomp.priors: every prior is a normalised density with the moments it claims, the shapes
Pyro expects, learnable parameters that receive gradients and train inside DecompVAE, and the registry
rejects bad names and values with errors that name them."""

import math
import re

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from numerics import HALF_WIDTH, integrate, moment_check
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from scipy import stats
from torch.distributions import kl_divergence

from pyro_decomp import DecompVAE
from pyro_decomp.data import pinwheel
from pyro_decomp.distributions import SharedScaleGaussianMixture
from pyro_decomp.nets import MLPDecoder, MLPEncoder
from pyro_decomp.priors import (
    PRIORS,
    GaussianPrior,
    MixturePrior,
    SparsePrior,
    StudentTPrior,
    SubspacePrior,
    build_prior,
    pinwheel_mixture,
)

D64 = torch.float64


# ------------------------------------------------------------------------------------------ quadrature
# Tolerance: the error of numerics.gauss_legendre_grid's rule (< 1e-12) plus any mass outside
# [-10, 10]^D that the expected value does not account for. The Student-t's truncated mass is computed
# exactly below; every other prior has Gaussian tails with s.d. <= 1.3 about locations within 1 of 0,
# leaving < 1e-20 outside.
QUAD_TOL = 1e-8


# ------------------------------------------------------------------------------------------ the priors
def make(name, dim):
    """One configuration of each prior (non-default values where the default would hide a mistake)."""
    if name == "gaussian":
        return build_prior("gaussian", dim)
    if name == "gaussian-aniso":
        return GaussianPrior(dim, variance=torch.tensor([1.7, 0.3, 1.0])[:dim], learn_variance=True)
    if name == "student-t":
        return build_prior("student-t", dim)
    if name == "mixture":
        return build_prior("mixture", dim)
    if name == "mixture-weighted":
        locs = torch.tensor([[0.5, 1.0, 0.0], [-1.0, 0.0, 0.5], [0.0, -0.5, -1.0]])[:, :dim]
        return MixturePrior(locs, scale=0.4, weights=torch.tensor([0.5, 0.3, 0.2]), learn=True)
    if name == "sparse":
        return build_prior("sparse", dim)
    if name == "sparse-mixed":
        return SparsePrior(
            dim, gamma=torch.tensor([0.3, 0.9, 0.5])[:dim], scale=torch.tensor([1.3, 0.8, 1.0])[:dim]
        )
    if name == "subspaces":
        return build_prior("subspaces", dim)
    if name == "subspaces-composed":
        blocks = {
            1: [GaussianPrior(1, scale=0.5)],
            2: [StudentTPrior(1, df=5.0), SparsePrior(1)],
            3: [StudentTPrior(1, df=5.0), pinwheel_mixture()],
        }[dim]
        return SubspacePrior(blocks)
    if name == "pinwheel":
        return build_prior("pinwheel", dim)
    raise AssertionError(name)


CASES = [
    (name, dim)
    for dim in (1, 2)
    for name in (
        "gaussian",
        "gaussian-aniso",
        "student-t",
        "mixture",
        "mixture-weighted",
        "sparse",
        "sparse-mixed",
        "subspaces",
        "subspaces-composed",
        "pinwheel",
    )
    if not (name == "pinwheel" and dim == 1)
]


def truncated_mass(name, dim):
    """The prior's mass inside [-10, 10]^dim, where it differs from 1 by more than 1e-20."""
    if name == "student-t":
        return (1 - 2 * stats.t.sf(HALF_WIDTH, 9.0)) ** dim
    if name == "subspaces-composed" and dim == 2:
        return 1 - 2 * stats.t.sf(HALF_WIDTH, 5.0)
    return 1.0


@pytest.mark.parametrize("name, dim", CASES)
def test_prior_integrates_to_one(name, dim):
    d = make(name, dim).double()()
    assert d.event_shape == (dim,) and d.batch_shape == ()
    assert abs(integrate(d).item() - truncated_mass(name, dim)) < QUAD_TOL


@pytest.mark.parametrize(
    "name", ["gaussian-aniso", "mixture-weighted", "sparse-mixed", "subspaces", "pinwheel"]
)
def test_closed_form_moments_match_quadrature(name):
    d = make(name, 2).double()()
    m1 = integrate(d, lambda z: z)
    m2 = integrate(d, lambda z: z**2)
    assert torch.allclose(d.mean, m1, atol=QUAD_TOL)
    assert torch.allclose(d.variance, m2 - m1**2, atol=QUAD_TOL)


@pytest.mark.parametrize("name", [n for n, dim in CASES if dim == 2])
def test_sample_moments_match_closed_forms(name):
    d = make(name, 2)()
    samples = d.sample((100_000,)).double()
    assert samples.shape == (100_000, 2)
    moment_check(samples, d.mean.double(), d.variance.double())


def test_closed_forms_of_the_named_priors():
    # Student-t(ν, 0, σ): variance σ²ν/(ν − 2)
    assert torch.allclose(
        build_prior("student-t", 3, df=9.0, scale=2.0)().variance, torch.full((3,), 4 * 9 / 7)
    )
    # 2·D components at ±e_d with s.d. σ: mean 0, per-coordinate variance σ² + 2/(2D)
    d = build_prior("mixture", 3)()
    assert d.batch_shape == () and d.event_shape == (3,)
    assert torch.allclose(d.mean, torch.zeros(3), atol=1e-7)
    assert torch.allclose(d.variance, torch.full((3,), 0.03 + 1 / 3))
    # spike and slab: variance γ s² + (1 − γ) σ²
    assert torch.allclose(build_prior("sparse", 2)().variance, torch.full((2,), 0.8 * 0.05**2 + 0.2))
    # σ_d² = s·D·softmax(ℓ)_d
    g = GaussianPrior(3, variance=torch.tensor([1.0, 2.0, 3.0]), scale=0.5)
    assert torch.allclose(g.variance, 0.5 * 3 * torch.tensor([1.0, 2.0, 3.0]) / 6)
    # a tensor of variances without a scale gives those variances
    assert torch.allclose(
        GaussianPrior(3, variance=torch.tensor([1.0, 2.0, 3.0]))().variance, torch.tensor([1.0, 2.0, 3.0])
    )
    assert torch.allclose(build_prior("gaussian", 4, scale=2.5)().variance, torch.full((4,), 2.5))


def test_pinwheel_preset():
    p = pinwheel_mixture()
    expected = {(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)}
    assert {tuple(r) for r in p.locs.tolist()} == expected
    assert p.scale.item() == pytest.approx(math.sqrt(0.03))
    assert torch.allclose(p.weights, torch.full((4,), 0.25))
    z = torch.randn(6, 2)
    for other in (build_prior("pinwheel", 2), build_prior("mixture", 2)):
        assert torch.allclose(other().log_prob(z), p().log_prob(z))
    assert isinstance(p(), SharedScaleGaussianMixture) and p().has_rsample


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("name", sorted({n for n, _ in CASES}))
@pytest.mark.parametrize("dim", [1, 3])
def test_shapes(name, dim):
    if name == "pinwheel":
        dim = 2
    d = make(name, dim)()
    assert d.batch_shape == () and d.event_shape == (dim,)
    assert d.sample().shape == (dim,)
    assert d.sample((5,)).shape == (5, dim)
    z = d.sample((5, 3))
    assert d.log_prob(z).shape == (5, 3)
    # expanded as Pyro's plate does: a batch of independent copies with the same density
    e = d.expand([3])
    assert e.batch_shape == (3,) and e.event_shape == (dim,)
    assert e.sample((5,)).shape == (5, 3, dim)
    assert torch.allclose(e.log_prob(z), d.log_prob(z))
    # log_prob on a batch equals the loop over its rows
    loop = torch.stack([d.log_prob(z[i, j]) for i in range(5) for j in range(3)]).reshape(5, 3)
    assert torch.allclose(d.log_prob(z), loop)


def test_prior_inside_a_plate_with_a_batch_of_values():
    prior = build_prior("subspaces", 4, blocks=["mixture:2", "gaussian:1", "sparse:1"])

    def model():
        with pyro.plate("data", 6, dim=-1):
            return pyro.sample("z", prior())

    tr = pyro.poutine.trace(model).get_trace()
    tr.compute_log_prob()
    site = tr.nodes["z"]
    assert site["value"].shape == (6, 4) and site["fn"].batch_shape == (6,)
    assert torch.allclose(site["log_prob"], prior().log_prob(site["value"]))


def test_gaussian_subspace_prior_has_the_analytic_kl():
    prior = build_prior("subspaces", 3, blocks=["gaussian:1", ("gaussian", 2, {"variance": [2.0, 0.5]})])
    same = GaussianPrior(3, variance=[1.0, 2.0, 0.5])
    q = dist.Normal(torch.randn(4, 3), torch.rand(4, 3) + 0.3).to_event(1)
    assert torch.allclose(kl_divergence(q, prior()), kl_divergence(q, same()))


# ------------------------------------------------------------------------------------------ "pca"
def test_pca_variance_orders_and_keeps_the_total():
    gen = torch.Generator().manual_seed(0)
    # principal variances about 9, 4, 1, 0.25 along a random rotation
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=D64))
    data = (
        torch.randn(2000, 4, generator=gen, dtype=D64) * torch.tensor([0.5, 3.0, 1.0, 2.0], dtype=D64)
    ) @ q
    eig = np.sort(np.linalg.eigvalsh(np.cov(data.numpy(), rowvar=False)))[::-1]
    for scale in (1.0, 0.3):
        p = GaussianPrior(3, variance="pca", data=data, scale=scale)
        var = p.variance.double()
        assert var[0] > var[1] > var[2]
        assert var.sum().item() == pytest.approx(3 * scale, rel=1e-6)
        expected = 3 * scale * eig[:3] / eig[:3].sum()
        assert np.allclose(var.numpy(), expected, rtol=1e-5)
    # more features than points goes through the singular values, with the same answer
    few = data[:3]
    eig_few = np.sort(np.linalg.eigvalsh(np.cov(few.numpy(), rowvar=False)))[::-1][:2]
    var_few = GaussianPrior(2, variance="pca", data=few).variance.double().numpy()
    assert np.allclose(var_few, 2 * eig_few / eig_few.sum(), rtol=1e-5)
    # on pinwheel data (2 features) the first latent gets the larger variance, and the total is 2
    x, _ = pinwheel()
    v = build_prior("gaussian", 2, variance="pca", data=x).variance
    assert v[0] >= v[1] and v.sum().item() == pytest.approx(2.0, rel=1e-6)


def test_pca_errors():
    with pytest.raises(ValueError, match="needs data"):
        GaussianPrior(2, variance="pca")
    with pytest.raises(ValueError, match="at least dim=3 features, got 2"):
        GaussianPrior(3, variance="pca", data=torch.randn(10, 2))
    with pytest.raises(ValueError, match="positive principal variances"):
        GaussianPrior(2, variance="pca", data=torch.randn(10, 1).repeat(1, 2))


# ------------------------------------------------------------------------------------------ learning
def test_learnable_gaussian_variance_gradients_match_finite_differences():
    prior = GaussianPrior(3, variance=torch.tensor([0.5, 1.0, 2.0]), learn_variance=True).double()
    assert [n for n, _ in prior.named_parameters()] == ["logits"]
    z = torch.randn(4, 3, dtype=D64)

    def f(logits):
        var = prior.mean_variance * 3 * torch.softmax(logits, -1)
        return dist.Normal(torch.zeros(3, dtype=D64), var.sqrt()).to_event(1).log_prob(z)

    assert torch.autograd.gradcheck(f, (prior.logits.detach().clone().requires_grad_(),))
    lp = prior().log_prob(z).sum()
    (grad,) = torch.autograd.grad(lp, prior.logits)
    logits = prior.logits.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(f(logits).sum(), logits)
    assert torch.allclose(grad, expected) and grad.abs().sum() > 0


def test_learnable_mixture_gradients_through_log_prob_and_rsample():
    prior = make("mixture-weighted", 2).double()
    assert {n for n, _ in prior.named_parameters()} == {"locs", "log_scale", "logits"}
    z = torch.randn(5, 2, dtype=D64)
    params = (prior.locs, prior.log_scale, prior.logits)

    def f(locs, log_scale, logits):
        comps = dist.Normal(locs, log_scale.exp()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), comps).log_prob(z)

    # log_prob: the module's gradient equals the gradient of Pyro's own mixture, which gradcheck verifies
    grads = torch.autograd.grad(prior().log_prob(z).sum(), params)
    copies = tuple(p.detach().clone().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(f, copies)
    expected = torch.autograd.grad(f(*copies).sum(), copies)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e)
    # rsample: the pathwise derivative reaches every parameter (its unbiasedness is tested in
    # test_distributions.py)
    grads = torch.autograd.grad(prior().rsample((50,)).pow(2).sum(), params)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    # in one dimension there is no pathwise sample, only log_prob gradients
    one = make("mixture-weighted", 1)
    assert not one().has_rsample
    (g,) = torch.autograd.grad(one().log_prob(torch.randn(5, 1)).sum(), [one.locs])
    assert g.abs().sum() > 0


def make_vae(prior, dim):
    return DecompVAE(MLPEncoder(2, dim, hidden=(16,)), MLPDecoder(dim, 2, hidden=(16,)), prior)


def composed_prior():
    """A user-composed prior: a learnable pinwheel block, a learnable anisotropic Gaussian block and a fixed
    Laplace block from plain Pyro."""
    return SubspacePrior(
        [
            pinwheel_mixture(learn=True),
            GaussianPrior(2, variance=torch.tensor([2.0, 0.5]), learn_variance=True),
            dist.Laplace(torch.zeros(1), 1.0).to_event(1),
        ]
    )


@pytest.mark.parametrize(
    "name, options, learnable",
    [
        ("gaussian", {"learn_variance": True}, 1),
        ("gaussian", {"variance": "pca", "data": pinwheel(num_per_class=16)[0]}, 0),
        ("student-t", {}, 0),
        ("mixture", {"learn": True}, 3),
        ("sparse", {}, 0),
        ("subspaces", {"blocks": [("mixture", 1, {"learn": True}), "student-t:1"]}, 3),
        ("pinwheel", {"learn": ("locs",)}, 1),
        ("composed", {}, 4),
    ],
)
def test_each_prior_trains_inside_decomp_vae(name, options, learnable):
    x, _ = pinwheel(num_per_class=16)
    if name == "composed":
        prior, dim = composed_prior(), 5
    else:
        prior, dim = build_prior(name, 2, **options), 2
    vae = make_vae(prior, dim)
    before = {n: p.detach().clone() for n, p in vae.prior.named_parameters()}
    assert len(before) == learnable
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, dataset_size=256) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    store = pyro.get_param_store()
    for n, p in vae.prior.named_parameters():
        # SVI registered the prior's parameter under the VAE's name for it, behind the VAE's own name (block
        # parameters through pyro.module, whose names join module and parameter with "$$$") and moved it
        stored = f"{vae._pyro_name}.prior." + n.replace("block_modules.", "block_modules$$$", 1)
        assert stored in store and store[stored] is p, stored
        assert not torch.equal(p.detach(), before[n]), n


def test_nested_subspaces_and_calling_a_prior_before_it_joins_a_model():
    inner = SubspacePrior(
        [pinwheel_mixture(learn=True), GaussianPrior(2, variance=[2.0, 0.5], learn_variance=True)]
    )
    prior = SubspacePrior([inner, dist.Laplace(torch.zeros(1), 1.0).to_event(1)])
    assert prior().sizes == (4, 1) and prior().parts[0].sizes == (2, 2)
    assert prior().sample((3,)).shape == (3, 5)
    # having been called on its own first does not stop the prior from joining (and training in) a model
    vae = make_vae(prior, 5)
    before = [p.detach().clone() for p in vae.prior.parameters()]
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    assert math.isfinite(svi.step(pinwheel(num_per_class=8)[0]))
    assert len(before) == 4
    assert all(not torch.equal(p.detach(), b) for p, b in zip(vae.prior.parameters(), before))


# ------------------------------------------------------------------------------------------ modules
def test_buffers_move_with_the_module_and_are_saved():
    for prior in (
        build_prior("gaussian", 3),
        build_prior("student-t", 3),
        build_prior("mixture", 3),
        build_prior("sparse", 3),
        build_prior("subspaces", 3),
    ):
        state = prior.state_dict()
        assert state, type(prior).__name__
        assert all(t.dtype == torch.float32 for t in state.values())
        z = torch.randn(4, 3, dtype=D64)
        lp = prior.double()().log_prob(z)
        assert lp.dtype == D64
        assert all(t.dtype == D64 for t in prior.state_dict().values())
    # a module loaded from another's state gives the same density
    g = GaussianPrior(2, variance=torch.tensor([1.5, 0.5]))
    h = GaussianPrior(2)
    h.load_state_dict(g.state_dict())
    z = torch.randn(4, 2)
    assert torch.allclose(h().log_prob(z), g().log_prob(z))
    m = pinwheel_mixture(learn=True)
    m2 = MixturePrior(torch.zeros(4, 2), 1.0, learn=True)
    m2.load_state_dict(m.state_dict())
    assert torch.allclose(m2().log_prob(z), m().log_prob(z))


# ------------------------------------------------------------------------------------------ registry
def test_priors_names_and_subspace_options():
    assert PRIORS == ("gaussian", "student-t", "mixture", "sparse", "subspaces", "pinwheel")
    for name in PRIORS:
        assert build_prior(name, 2)().event_shape == (2,)
    # the default subspaces: pinwheel pairs and, for odd D, a two-component block
    d = build_prior("subspaces", 5)()
    assert d.sizes == (2, 2, 1)
    blocks = [
        "gaussian:1",
        ("student-t", 1),
        ("mixture", 2, {"scale": 0.5}),
        {"name": "sparse", "dim": 1, "gamma": 0.5},
        dist.Normal(torch.zeros(2), 1.0).to_event(1),
    ]
    p = build_prior("subspaces", 7, blocks=blocks)
    assert p().sizes == (1, 1, 2, 1, 2)
    assert torch.allclose(p.block_modules[3].gamma, torch.tensor([0.5]))
    assert build_prior("subspaces", 3, blocks="gaussian:1, mixture:2")().sizes == (1, 2)


@pytest.mark.parametrize(
    "call, pattern",
    [
        (
            lambda: build_prior("laplace", 2),
            "unknown prior 'laplace'; expected one of " + re.escape(str(PRIORS)),
        ),
        (lambda: build_prior("sparse", 2, gamma=1.5), "gamma must lie in \\[0, 1\\], got 1.5"),
        (lambda: build_prior("sparse", 2, gamma=-0.1), "gamma must lie in \\[0, 1\\], got -0.1"),
        (lambda: build_prior("sparse", 2, spike_scale=0.0), "spike_scale must be finite and > 0, got 0.0"),
        (lambda: build_prior("sparse", 2, scale=-1.0), "scale must be finite and > 0, got -1.0"),
        (lambda: build_prior("student-t", 2, df=0.0), "df must be finite and > 0, got 0.0"),
        (lambda: build_prior("student-t", 2, df=-3), "df must be finite and > 0, got -3"),
        (lambda: build_prior("student-t", 2, scale=0), "scale must be finite and > 0, got 0"),
        (lambda: build_prior("gaussian", 2, scale=-2.0), "scale must be finite and > 0, got -2.0"),
        (lambda: build_prior("gaussian", 2, variance="diag"), "variance must be 'iso', 'pca' or .*'diag'"),
        (lambda: build_prior("gaussian", 2, variance=[1.0, 0.0]), "variance must be finite and > 0"),
        (lambda: build_prior("gaussian", 3, variance=[1.0, 2.0]), "shape \\(3,\\) for dim=3"),
        (lambda: build_prior("mixture", 2, scale=0.0), "scale must be finite and > 0, got 0.0"),
        (lambda: build_prior("mixture", 3, locs=torch.eye(2)), "locs must have shape \\(K, 3\\).*\\(2, 2\\)"),
        (lambda: build_prior("mixture", 2, weights=[0.5, 0.5]), "weights must have shape \\(4,\\).*0.5, 0.5"),
        (lambda: build_prior("mixture", 2, weights=[1, 1, 1, -1]), "weights must be .*>= 0.*-1"),
        (lambda: MixturePrior(torch.eye(2), learn=("loc",)), "subset of .*\\['loc'\\]"),
        (lambda: MixturePrior(torch.eye(2), weights=[1, 0], learn=True), "learnt weights must be > 0"),
        (lambda: build_prior("gaussian", 0), "dim must be a positive integer, got 0"),
        (lambda: build_prior("sparse", 1.5), "dim must be a positive integer, got 1.5"),
        (lambda: build_prior("gaussian", 2, df=3), "unknown option\\(s\\) \\['df'\\] for prior 'gaussian'"),
        (lambda: build_prior("pinwheel", 3), "pinwheel prior is 2-dimensional, got dim=3"),
        (lambda: build_prior("subspaces", 3, blocks=["gaussian:2"]), "sum to 2, not dim=3"),
        (lambda: build_prior("subspaces", 2, blocks=["gaussian"]), "'name:dim'.*'gaussian'"),
        (lambda: build_prior("subspaces", 2, blocks=["gamma:2"]), "unknown prior 'gamma'"),
        (lambda: SubspacePrior([]), "at least one block"),
        (lambda: SubspacePrior([dist.Normal(0.0, 1.0)]), "event_shape \\(D_0,\\)"),
    ],
)
def test_invalid_values_raise_value_errors_that_name_them(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


# ---------------------------------------------------------------------------------------- a user's own prior
def _flow(seed=0, dtype=None):
    """A spline-coupling normalising flow on R^2, as a TransformedDistribution (small: quick to train)."""
    import pyro.distributions.transforms as T

    torch.manual_seed(seed)
    base = dist.Normal(torch.zeros(2, dtype=dtype), torch.ones(2, dtype=dtype)).to_event(1)
    return dist.TransformedDistribution(base, [T.spline_coupling(2, hidden_dims=[8], count_bins=4)])


def _small_vae(prior, seed=1):
    torch.manual_seed(seed)
    return DecompVAE(MLPEncoder(2, 2, hidden=(16,)), MLPDecoder(2, 2, hidden=(16,)), prior)


def _svi_losses(vae, x, divergence, steps, beta=0.0, alpha=1.0, seed=2):
    from pyro_decomp.elbo import DecompositionELBO

    pyro.set_rng_seed(seed)
    elbo = DecompositionELBO(beta=beta, alpha=alpha, divergence=divergence)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), elbo)
    return [svi.step(x) for _ in range(steps)]


@pytest.mark.parametrize("steps", [20, pytest.param(200, marks=pytest.mark.slow)])
@pytest.mark.parametrize("divergence", ["mmd", "inclusive-kl", "exclusive-kl"])
def test_flow_prior_passed_as_a_distribution_trains(divergence, steps):
    x = pinwheel(num_per_class=8)[0]
    flow = _flow()
    vae = _small_vae(flow)
    before = {k: v.detach().clone() for k, v in vae.prior.named_parameters()}
    assert before and all(k.startswith("transforms.0.") for k in before)
    losses = _svi_losses(vae, x, divergence, steps)
    assert all(math.isfinite(v) for v in losses)
    after = {k: v.detach() for k, v in vae.prior.named_parameters()}
    moved = {k: float((after[k] - before[k]).abs().max()) for k in before}
    assert all(m > 1e-4 for m in moved.values()), moved  # every tensor of the flow was trained
    # its parameters are in Pyro's store under the VAE's own prefix, as the very tensors the flow uses
    store = pyro.get_param_store()
    names = [k for k in store.keys() if k.startswith(vae._pyro_name + ".prior")]
    assert len(names) == len(before)
    by_id = {id(p) for p in flow.transforms[0].parameters()}
    assert all(id(store[k]) in by_id for k in names)


def test_flow_prior_in_a_pyro_module_gives_bitwise_the_same_losses():
    from pyro.nn import PyroModule

    class FlowPrior(PyroModule):
        def __init__(self, flow):
            super().__init__()
            self.transform = flow.transforms[0]
            self.register_buffer("loc", torch.zeros(2))
            self.register_buffer("scale", torch.ones(2))

        def forward(self):
            base = dist.Normal(self.loc, self.scale).to_event(1)
            return dist.TransformedDistribution(base, [self.transform])

    x = pinwheel(num_per_class=8)[0]
    for divergence in ("mmd", "inclusive-kl"):
        as_distribution = _svi_losses(_small_vae(_flow()), x, divergence, 10, beta=0.5)
        pyro.clear_param_store()
        as_module = _svi_losses(_small_vae(FlowPrior(_flow())), x, divergence, 10, beta=0.5)
        pyro.clear_param_store()
        assert as_distribution == as_module


def _learnable_mixture(locs):
    weights = dist.Categorical(logits=torch.zeros(4))
    return dist.MixtureSameFamily(weights, dist.Normal(locs, 0.2).to_event(1))


def test_mixture_same_family_with_learnable_locations_under_mmd_is_refused_by_name():
    from pyro_decomp.elbo import DecompositionELBO

    x = pinwheel(num_per_class=8)[0]
    locs = torch.nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    vae = _small_vae(_learnable_mixture(locs))
    with pytest.raises(ValueError) as info:
        _svi_losses(vae, x, "mmd", 1)
    message = str(info.value)
    assert "MixtureSameFamily" in message and "'mmd'" in message and "inclusive-kl" in message
    assert "no rsample" in message and "\n" not in message
    # evaluating the divergence (no gradients) is still allowed, and the KL estimators train the locations
    elbo = DecompositionELBO(beta=0.0, alpha=1.0, divergence="mmd")
    assert math.isfinite(elbo.loss(vae.model, vae.guide, x))
    before = locs.detach().clone()
    _svi_losses(vae, x, "inclusive-kl", 20)
    assert float((locs.detach() - before).abs().max()) > 1e-3


def test_distribution_prior_follows_to_and_keeps_checkpoints_as_they_were():
    locs = torch.nn.Parameter(torch.randn(4, 2))
    vae = _small_vae(_learnable_mixture(locs))
    # the learnt locations are saved; the fixed tensors (0.2, the weights' logits) are not
    assert {k for k in vae.state_dict() if k.startswith("prior.")} == {"prior.params.0"}
    vae.double()
    prior = vae.prior_distribution()
    assert prior.component_distribution.base_dist.scale.dtype == D64
    assert prior.mixture_distribution.logits.dtype == D64
    assert prior.component_distribution.base_dist.loc is locs and locs.dtype == D64
    assert prior.sample((3,)).dtype == D64
    # a checkpoint of one model loads into another built the same way and gives the same density
    other = _small_vae(_learnable_mixture(torch.nn.Parameter(torch.zeros(4, 2)))).double()
    other.load_state_dict(vae.state_dict())
    z = torch.randn(5, 2, dtype=D64)
    assert torch.equal(other.prior_distribution().log_prob(z), vae.prior_distribution().log_prob(z))


def test_two_flow_priors_in_one_process_train_apart():
    x = pinwheel(num_per_class=8)[0]
    first, second = _small_vae(_flow(0)), _small_vae(_flow(5))
    _svi_losses(first, x, "inclusive-kl", 3)
    snapshot = {k: v.detach().clone() for k, v in first.prior.named_parameters()}
    _svi_losses(second, x, "inclusive-kl", 3)
    assert all(torch.equal(v, snapshot[k]) for k, v in first.prior.named_parameters())
    store = pyro.get_param_store()
    for vae in (first, second):
        mine = {id(p) for p in vae.prior.parameters()}
        names = [k for k in store.keys() if k.startswith(vae._pyro_name + ".prior")]
        assert names and all(id(store[k]) in mine for k in names)


def test_prior_tensor_computed_from_parameters_is_refused_by_name():
    raw = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(
        ValueError, match=r"computed from learnable parameters \(Normal\.scale.*nn\.Parameter"
    ):
        _small_vae(dist.Normal(torch.zeros(2), raw.exp()).to_event(1))


def test_readme_flow_prior_block():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("A learnable prior can also be given as a plain distribution", 1)[1]
    namespace = {}
    exec(compile(re.search(r"```python\n(.*?)```", section, re.S).group(1), "README", "exec"), namespace)
    vae, flow = namespace["vae"], namespace["flow"]
    assert {id(p) for p in vae.parameters()} >= {id(p) for p in flow.transforms[0].parameters()}


def test_subspace_distribution_block_follows_the_module_and_trains():
    scale = torch.nn.Parameter(torch.ones(1))
    prior = SubspacePrior([pinwheel_mixture(), dist.Laplace(torch.zeros(1), scale).to_event(1)])
    assert any(p is scale for p in prior.parameters())  # a learnable block's tensor trains with the prior
    prior.double()
    d = prior()
    assert d.sample().dtype == D64 and d.log_prob(torch.zeros(3, dtype=D64)).dtype == D64
