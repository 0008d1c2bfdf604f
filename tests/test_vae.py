import copy
import math
import pickle

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_decomp import DecompVAE
from pyro_decomp.data import pinwheel
from pyro_decomp.elbo import DecompositionELBO
from pyro_decomp.nets import ConvDecoder64, ConvEncoder64, MLPDecoder, MLPEncoder
from pyro_decomp.priors import GaussianPrior, pinwheel_mixture


def std_normal(d):
    return dist.Normal(torch.zeros(d), torch.ones(d)).to_event(1)


def make_vae(prior=None, likelihood="normal", d=2):
    prior = std_normal(d) if prior is None else prior
    return DecompVAE(MLPEncoder(2, d), MLPDecoder(d, 2), prior, likelihood=likelihood)


def traces(vae, x, **kw):
    guide_tr = poutine.trace(vae.guide).get_trace(x, **kw)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, **kw)
    return model_tr, guide_tr


@pytest.mark.parametrize("dataset_size", [None, 40, 1000])
def test_sites_shapes_and_plate_scale(dataset_size):
    vae = make_vae(d=3)
    x = torch.randn(8, 2)
    model_tr, guide_tr = traces(vae, x, dataset_size=dataset_size)
    n = 8 if dataset_size is None else dataset_size
    for tr in (model_tr, guide_tr):
        z = tr.nodes["z"]
        assert z["value"].shape == (8, 3)
        assert z["fn"].batch_shape == (8,) and z["fn"].event_shape == (3,)
        assert z["scale"] == pytest.approx(n / 8)
        frame = z["cond_indep_stack"][0]
        assert frame.name == "data" and frame.full_size == n and frame.size == 8 and frame.dim == -1
    xs = model_tr.nodes["x"]
    assert xs["is_observed"] and xs["fn"].event_shape == (2,) and xs["fn"].batch_shape == (8,)
    assert xs["scale"] == pytest.approx(n / 8)
    # the trace's log joint is the N/B-scaled sum of the batch's log-probabilities
    model_tr.compute_log_prob()
    zs = model_tr.nodes["z"]
    expected = (n / 8) * vae.prior_distribution().log_prob(zs["value"]).sum()
    assert torch.allclose(model_tr.log_prob_sum(lambda name, site: name == "z"), expected)


def test_image_observation_event_dims_are_all_after_batch():
    vae = DecompVAE(ConvEncoder64(4), ConvDecoder64(4), std_normal(4), likelihood="bernoulli")
    x = (torch.rand(3, 1, 64, 64) > 0.5).float()
    model_tr, _ = traces(vae, x)
    fn = model_tr.nodes["x"]["fn"]
    assert fn.batch_shape == (3,) and fn.event_shape == (1, 64, 64)


def test_laplace_likelihood_has_fixed_scale():
    vae = DecompVAE(MLPEncoder(5, 2), MLPDecoder(2, 5), std_normal(2), likelihood="laplace")
    model_tr, _ = traces(vae, torch.rand(4, 5))
    fn = model_tr.nodes["x"]["fn"].base_dist
    assert torch.allclose(fn.scale, torch.tensor(0.1))
    assert not any("scale" in name for name, _ in vae.named_parameters())


def test_normal_likelihood_scale_is_learnt():
    vae = make_vae()
    x, _ = pinwheel(num_per_class=20, seed=1)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    before = vae.log_obs_scale.item()
    for _ in range(5):
        svi.step(x)
    assert vae.log_obs_scale.item() != before


def test_short_svi_run_lowers_the_loss():
    x, _ = pinwheel(num_per_class=50, seed=3)
    locs = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]])
    prior = dist.MixtureSameFamily(dist.Categorical(torch.ones(4)), dist.Normal(locs, 0.03**0.5).to_event(1))
    vae = make_vae(prior)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 3e-3}), Trace_ELBO(num_particles=4))
    losses = [svi.step(x) for _ in range(300)]
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    # the loss falls by far more than its step-to-step Monte Carlo noise
    noise = torch.tensor(losses[-20:]).std().item()
    assert last < first - 5 * noise, (first, last, noise)


def test_user_written_prior_works():
    d = 3
    prior = dist.Laplace(0.0, 1.0).expand([d]).to_event(1)
    vae = DecompVAE(MLPEncoder(2, d), MLPDecoder(d, 2), prior)
    x, _ = pinwheel(num_per_class=10)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    for _ in range(3):
        assert torch.isfinite(torch.tensor(svi.step(x)))
    assert vae.sample(7).shape == (7, 2)


def test_learnable_prior_module_gets_gradients():
    class LearntScale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.log_scale = torch.nn.Parameter(torch.zeros(2))

        def forward(self):
            return dist.Normal(torch.zeros(2), self.log_scale.exp()).to_event(1)

    prior = LearntScale()
    vae = make_vae(prior)
    x, _ = pinwheel(num_per_class=10)
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert prior.log_scale.grad is not None and prior.log_scale.grad.abs().sum() > 0


def test_mismatched_dimension_names_both_numbers():
    with pytest.raises(ValueError, match=r"latent_dim 2 but the prior has event_shape \(3,\)"):
        DecompVAE(MLPEncoder(2, 2), MLPDecoder(2, 2), std_normal(3))


@pytest.mark.parametrize(
    "prior,msg",
    [
        (dist.Normal(0.0, 1.0), r"event_shape \(D,\), got event_shape \(\)"),
        (dist.Normal(torch.zeros(4, 2), 1.0).to_event(1), r"batch_shape \(\), got \(4,\)"),
        ("gaussian", "prior must be a pyro Distribution"),
    ],
)
def test_bad_priors_rejected(prior, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        DecompVAE(MLPEncoder(2, 2), MLPDecoder(2, 2), prior)


def test_bad_inputs_rejected():
    vae = make_vae()
    with pytest.raises(ValueError, match="at least 2 dims"):
        vae.model(torch.randn(5))
    with pytest.raises(ValueError, match=r"dataset_size must be an integer >= the batch size 5, got 3"):
        vae.guide(torch.randn(5, 2), dataset_size=3)
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        make_vae(likelihood="poisson")


def test_custom_likelihood_callable():
    vae = make_vae(likelihood=lambda loc: dist.StudentT(4.0, loc, 0.5))
    model_tr, _ = traces(vae, torch.randn(6, 2))
    assert model_tr.nodes["x"]["fn"].event_shape == (2,)


def test_encode_decode_reconstruct_sample():
    vae = DecompVAE(ConvEncoder64(4), ConvDecoder64(4), std_normal(4), likelihood="bernoulli")
    x = torch.rand(3, 1, 64, 64)
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (3, 4)
    r = vae.reconstruct(x)
    assert r.shape == x.shape and ((r >= 0) & (r <= 1)).all()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(vae.sample(2, generator=g1), vae.sample(2, generator=g2))


def test_vectorised_particles_shape():
    vae = make_vae(d=3)
    elbo = Trace_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(vae.model, vae.guide, torch.randn(6, 2))
    assert torch.isfinite(loss)
    pyro.clear_param_store()


# ---------------------------------------------------------------- prior and subsample caches
def _vae(prior):
    return DecompVAE(MLPEncoder(2, 2), MLPDecoder(2, 2), prior)


def test_fixed_prior_is_built_once_and_again_when_its_tensors_change():
    vae = _vae(pinwheel_mixture())
    first = vae.prior_distribution()
    assert vae.prior_distribution() is first
    locs = first.locs.clone()

    vae.prior.locs.mul_(2.0)  # in place
    second = vae.prior_distribution()
    assert second is not first and torch.equal(second.locs, 2 * locs)

    state = {k: v.clone() for k, v in vae.state_dict().items()}
    state["prior.locs"] = 3 * locs
    vae.load_state_dict(state)  # copied in place
    third = vae.prior_distribution()
    assert torch.equal(third.locs, 3 * locs)

    vae.double()  # buffers replaced
    fourth = vae.prior_distribution()
    assert fourth.locs.dtype == torch.float64 and torch.equal(fourth.locs, (3 * locs).double())
    assert vae.prior_distribution() is fourth

    with pyro.validation_enabled(False):  # a distribution keeps the validation setting it was built under
        fifth = vae.prior_distribution()
        assert fifth is not fourth and not fifth._validate_args
    assert vae.prior_distribution()._validate_args


def test_learnable_and_user_priors_are_built_on_every_call():
    vae = _vae(pinwheel_mixture(learn=True))
    a, b = vae.prior_distribution(), vae.prior_distribution()
    assert a is not b
    a.log_prob(torch.zeros(2)).backward()
    b.log_prob(torch.ones(2)).backward()  # each call has its own graph
    assert vae.prior.locs.grad is not None

    class Shifted(GaussianPrior):  # a user's subclass may do anything in forward
        def forward(self):
            return super().forward()

    vae = _vae(Shifted(2))
    assert vae.prior_distribution() is not vae.prior_distribution()


def test_copies_and_pickles_leave_the_caches_behind():
    vae = _vae(pinwheel_mixture())
    vae.prior_distribution()
    for clone in (copy.deepcopy(vae), pickle.loads(pickle.dumps(vae))):
        assert "_prior_cache" not in clone.__dict__
        d = clone.prior_distribution()
        assert d.locs.data_ptr() == clone.prior.locs.data_ptr()


# ---------------------------------------------------------- a decoder that predicts its likelihood's scale
class TupleDecoder(torch.nn.Module):
    """A user's decoder ``z (..., 2) -> (loc, scale)`` each ``(..., 3)`` that does not declare
    ``predicts_scale``."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 6)

    def forward(self, z):
        loc, raw = self.lin(z).chunk(2, dim=-1)
        return loc, torch.nn.functional.softplus(raw) + 0.05


def scale_vae(likelihood="normal", d=2, **kw):
    return DecompVAE(
        MLPEncoder(2, d), MLPDecoder(d, 2, scale="decoder"), std_normal(d), likelihood=likelihood, **kw
    )


@pytest.mark.parametrize("likelihood,family", [("normal", dist.Normal), ("laplace", dist.Laplace)])
@pytest.mark.parametrize("dataset_size", [None, 40])
def test_decoder_scale_log_likelihood_is_per_point(likelihood, family, dataset_size):
    # log p(x|z) = sum_i log Lik(x_i; loc_i(z), scale_i(z)), scaled by N / B in the data plate
    vae = scale_vae(likelihood)
    x, _ = pinwheel(num_per_class=2, seed=4)  # B = 8
    model_tr, guide_tr = traces(vae, x, dataset_size=dataset_size)
    z = guide_tr.nodes["z"]["value"]
    assert torch.equal(model_tr.nodes["z"]["value"], z)
    loc, scale = vae.decoder(z)
    assert not torch.allclose(scale, scale[0])  # a per-point scale, not a shared one
    n = 8 if dataset_size is None else dataset_size
    expected = (n / 8) * family(loc, scale).log_prob(x).sum()
    fn = model_tr.nodes["x"]["fn"]
    assert fn.batch_shape == (8,) and fn.event_shape == (2,)
    model_tr.compute_log_prob()
    assert torch.allclose(model_tr.log_prob_sum(lambda name, site: name == "x"), expected)


def test_decoder_scale_replaces_the_global_scale_parameter():
    vae = scale_vae()
    assert vae.decoder_scale
    names = {name for name, _ in vae.named_parameters()}
    assert not hasattr(vae, "log_obs_scale") and "log_obs_scale" not in names
    assert {"decoder.raw_scale.weight", "decoder.raw_scale.bias"} <= names
    # every parameter gets a gradient from the loss
    x, _ = pinwheel(num_per_class=5, seed=2)
    Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.parameters())
    # a tensor decoder keeps the global scale and its state dict; loading it back is unchanged
    old = make_vae()
    assert not old.decoder_scale and "log_obs_scale" in old.state_dict()
    fresh = make_vae()
    fresh.load_state_dict(old.state_dict())
    assert torch.equal(fresh.log_obs_scale, old.log_obs_scale)
    clone = scale_vae()
    clone.load_state_dict(vae.state_dict())
    z = torch.randn(4, 2)
    assert all(torch.equal(a, b) for a, b in zip(clone.decoder(z), vae.decoder(z)))


def test_decoder_scale_flag_for_a_users_decoder():
    x = torch.randn(5, 3)
    vae = DecompVAE(MLPEncoder(3, 2), TupleDecoder(), std_normal(2), decoder_scale=True)
    model_tr, guide_tr = traces(vae, x)
    loc, scale = vae.decoder(guide_tr.nodes["z"]["value"])
    model_tr.compute_log_prob()
    expected = dist.Normal(loc, scale).log_prob(x).sum()
    assert torch.allclose(model_tr.log_prob_sum(lambda name, site: name == "x"), expected)
    # without the flag the VAE has a global scale: a (loc, scale) decoder is then a clear error
    vae = DecompVAE(MLPEncoder(3, 2), TupleDecoder(), std_normal(2))
    with pytest.raises(ValueError, match=r"returned \(loc, scale\).*decoder_scale=True"):
        vae.model(x)
    # and the other way round
    vae = DecompVAE(MLPEncoder(2, 2), MLPDecoder(2, 2), std_normal(2), decoder_scale=True)
    with pytest.raises(ValueError, match=r"decoder_scale=True.*returned a tensor"):
        vae.model(torch.randn(5, 2))


def test_decoder_scale_with_bernoulli_is_rejected():
    with pytest.raises(ValueError, match="'bernoulli'.*no scale"):
        scale_vae("bernoulli")
    vae = make_vae(likelihood="bernoulli")
    loc = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="'bernoulli'.*no scale"):
        vae.likelihood((loc, torch.ones(3, 2)), 1)
    with pytest.raises(ValueError, match=r"decoder_scale must be True, False or None, got 'yes'"):
        DecompVAE(MLPEncoder(2, 2), MLPDecoder(2, 2), std_normal(2), decoder_scale="yes")


def test_decoder_scale_custom_likelihood_receives_the_pair():
    vae = scale_vae(lambda params: dist.StudentT(4.0, params[0], params[1]))
    model_tr, guide_tr = traces(vae, torch.randn(6, 2))
    assert model_tr.nodes["x"]["fn"].event_shape == (2,)
    loc, _ = vae.decoder(torch.zeros(3, 2))
    assert torch.allclose(vae.decode(torch.zeros(3, 2)), loc)  # the Student-t's mean


def test_decoder_scale_decode_reconstruct_sample_return_the_location():
    vae = scale_vae(d=3)
    z = torch.randn(4, 3)
    assert torch.equal(vae.decode(z), vae.decoder(z)[0])
    assert vae.decode(torch.randn(5, 4, 3)).shape == (5, 4, 2)
    x, _ = pinwheel(num_per_class=2)
    r = vae.reconstruct(x)
    assert r.shape == x.shape and torch.equal(r, vae.decoder(vae.encoder(x)[0])[0])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s = vae.sample(7, generator=g1)
    assert s.shape == (7, 2) and torch.equal(s, vae.sample(7, generator=g2))


def test_decoder_scale_vectorised_particles():
    vae = scale_vae(d=3)
    elbo = Trace_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(vae.model, vae.guide, torch.randn(6, 2))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("beta,alpha", [(1.0, 0.0), (0.0, 1.0)])
def test_decoder_scale_is_learnt_on_pinwheel(beta, alpha):
    # the paper's pinwheel setting with its per-point decoder scale σ(z), starting near softplus(0) = 0.69.
    # Training must move it far beyond float noise, towards the maximum-likelihood scale: for a Normal,
    # argmax_σ E[log N(x; μ, σ)] = sqrt(E[(x − μ)²]), the root mean square of the residuals at z ~ q(z|x)
    pyro.set_rng_seed(0)
    x, _ = pinwheel(num_per_class=25, seed=0)
    vae = DecompVAE(MLPEncoder(2, 2), MLPDecoder(2, 2, scale="decoder"), pinwheel_mixture())

    def mean_scale_and_rms_residual():
        with torch.no_grad():
            loc, scale = vae.decoder(vae.encoder_distribution(x).sample((20,)))
            return scale.mean().item(), (x - loc).square().mean().sqrt().item()

    before, _ = mean_scale_and_rms_residual()
    elbo = DecompositionELBO(beta=beta, alpha=alpha, divergence="inclusive-kl")
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), elbo)
    losses = torch.tensor([svi.step(x) for _ in range(80)])
    after, rms = mean_scale_and_rms_residual()
    assert 0.4 < before < 1.0
    assert abs(after - before) > 0.2, (before, after)
    assert 1 / 1.5 < after / rms < 1.5, (after, rms)
    first, last = losses[:10].mean(), losses[-10:].mean()
    noise = losses[-10:].std()
    assert last < first - 3 * noise, (first, last, noise)
    pyro.clear_param_store()


def test_double_model_with_a_laplace_distribution_prior_trains_and_samples_float64():
    prior = dist.Laplace(torch.zeros(2), torch.ones(2)).to_event(1)
    vae = make_vae(prior).double()
    x = pinwheel(num_per_class=8, dtype=torch.float64)[0]
    assert x.dtype == torch.float64
    assert vae.prior_distribution().base_dist.loc.dtype == torch.float64
    elbo = DecompositionELBO(beta=1.0, alpha=1.0, divergence="inclusive-kl")
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), elbo)
    losses = [svi.step(x) for _ in range(20)]
    assert all(torch.isfinite(torch.tensor(losses)))
    samples = vae.sample(5)
    assert samples.dtype == torch.float64 and samples.shape == (5, 2)
    assert elbo.loss_components(vae.model, vae.guide, x)["loss"] == pytest.approx(
        losses[-1] / len(x), rel=0.5
    )
    # and back: the prior follows the model to float32 as well
    vae.float()
    assert vae.prior_distribution().base_dist.scale.dtype == torch.float32
    assert vae.sample(2).dtype == torch.float32


def test_default_dtype_float64_end_to_end():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = pinwheel(num_per_class=8)[0]
        assert x.dtype == torch.float64
        vae = make_vae(pinwheel_mixture())
        svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), DecompositionELBO(alpha=1.0))
        assert all(math.isfinite(svi.step(x)) for _ in range(3))
        assert vae.sample(3).dtype == torch.float64
    finally:
        torch.set_default_dtype(old)


def test_import_and_pinwheel_training_need_no_torchvision(tmp_path):
    import os
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torchvision'] = None\n"
        "import torch; torch.set_num_threads(1)\n"
        "import pyro_decomp\n"
        "config = pyro_decomp.RunConfig(dataset='pinwheel', data_options={'num_per_class': 10},\n"
        "    network_options={'hidden': [8]}, epochs=1, batch_size=20, device='cpu')\n"
        "run = pyro_decomp.train(config, sys.argv[1], progress=False)\n"
        "print('trained', run.epoch, sys.modules.get('torchvision') is not None)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "trained 1 False"  # and fashion_mnist refuses in one line (test_data_fashion.py)
