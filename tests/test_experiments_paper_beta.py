"""The paper's β term (the KL against p(z)²) as an experiment setting, and the collapse rule of the report."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from pyro_decomp.elbo import DecompositionELBO
from pyro_decomp.experiments import Arm, experiment_config
from pyro_decomp.experiments.measure import ACTIVE_VARIANCE, code_variances
from pyro_decomp.experiments.paper_beta import (
    PaperBetaTerm,
    PaperBetaTermMixture,
    paper_beta_term_prior,
)
from pyro_decomp.experiments.verdicts import COLUMNS, collapsed_runs, uncollapsed_differences
from pyro_decomp.priors import GaussianPrior, pinwheel_mixture

MU = torch.tensor([[0.3, -1.2], [1.5, 0.4], [-0.7, 0.0]])
S = torch.tensor([[0.5, 0.2], [1.1, 0.7], [0.3, 2.0]])
M = torch.tensor([0.2, -0.5])
SIGMA = torch.tensor([1.3, 0.6])


def _paper_term_closed_form(mu, s, m, sigma):
    """E_q[log q(z)] − 2 E_q[log p(z)] per row for q = N(mu, diag s²), p = N(m, diag σ²), from the Gaussian
    integrals E_q[log q] = −½ Σ_d log(2πe s_d²) and E_q[(z_d − m_d)²] = s_d² + (mu_d − m_d)²."""
    e_log_q = -0.5 * (torch.log(2 * math.pi * math.e * s**2)).sum(-1)
    e_log_p = (-0.5 * torch.log(2 * math.pi * sigma**2) - (s**2 + (mu - m) ** 2) / (2 * sigma**2)).sum(-1)
    return e_log_q - 2 * e_log_p


def test_paper_kl_is_the_closed_form_for_gaussians():
    q = dist.Normal(MU, S).to_event(1)
    p = PaperBetaTerm(dist.Normal(M, SIGMA).to_event(1))
    expected = _paper_term_closed_form(MU, S, M, SIGMA)
    assert torch.allclose(kl_divergence(q, p), expected, atol=1e-5)
    # and it is not the library's KL, which stays KL(q ‖ p)
    assert not torch.allclose(kl_divergence(q, p.base), expected, atol=1e-2)


def test_paper_kl_by_monte_carlo_without_a_closed_form():
    # the same Gaussian as a one-component mixture, which has no registered KL: the one-draw estimate
    # log q(z̃) − 2 log p(z̃) averages to the closed form within 4 standard errors
    base = dist.MixtureSameFamily(
        dist.Categorical(logits=torch.zeros(1)), dist.Normal(M.unsqueeze(0), SIGMA.unsqueeze(0)).to_event(1)
    )
    n = 20000
    q = dist.Normal(MU[0], S[0]).to_event(1).expand([n])
    torch.manual_seed(0)
    draws = kl_divergence(q, PaperBetaTerm(base))
    assert draws.shape == (n,)
    expected = float(_paper_term_closed_form(MU[0], S[0], M, SIGMA))
    se = float(draws.std()) / math.sqrt(n)
    assert abs(float(draws.mean()) - expected) < 4 * se


def test_paper_kl_on_the_pinwheel_mixture_is_log_q_minus_twice_log_p_on_one_draw():
    prior = paper_beta_term_prior(pinwheel_mixture())
    p = prior()
    q = dist.Normal(MU, S).to_event(1)
    torch.manual_seed(3)
    kl = kl_divergence(q, p)
    torch.manual_seed(3)
    z = q.rsample()
    assert torch.allclose(kl, q.log_prob(z) - 2 * p.base.log_prob(z))


def test_wrapper_is_the_prior_in_every_other_respect():
    base_module = pinwheel_mixture()
    wrapped = paper_beta_term_prior(base_module)
    assert isinstance(wrapped, PaperBetaTermMixture)
    assert wrapped.state_dict().keys() == base_module.state_dict().keys()  # checkpoints load into either
    base, p = base_module(), wrapped()
    z = torch.randn(7, 2)
    assert torch.equal(p.log_prob(z), base.log_prob(z))
    expanded = p.expand([7])
    assert isinstance(expanded, PaperBetaTerm) and expanded.batch_shape == (7,)
    torch.manual_seed(1)
    a = p.sample((5,))
    torch.manual_seed(1)
    assert torch.equal(a, base.sample((5,)))
    with pytest.raises(ValueError, match="MixturePrior"):
        paper_beta_term_prior(GaussianPrior(2))


def _elbo_parts(prior, alpha):
    """DecompositionELBO's per-point parts on a 3-point batch with the guide q = N(MU, diag S²)."""
    x = torch.zeros(3, 2)

    def model(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(MU, S).to_event(1))

    pyro.set_rng_seed(11)
    elbo = DecompositionELBO(beta=1.0, alpha=alpha, divergence="inclusive-kl")
    return elbo.loss_components(model, guide, x)


def test_through_the_elbo_only_the_beta_term_changes():
    base = dist.Normal(M, SIGMA).to_event(1)
    plain, paper = _elbo_parts(base, 1.0), _elbo_parts(PaperBetaTerm(base), 1.0)
    expected = float(_paper_term_closed_form(MU, S, M, SIGMA).mean())
    assert paper["kl"] == pytest.approx(expected, rel=1e-5)
    assert plain["kl"] == pytest.approx(float(kl_divergence(dist.Normal(MU, S).to_event(1), base).mean()))
    # the divergence (the inclusive KL reads log p at prior draws) and the likelihood are p(z)'s
    assert paper["divergence"] == pytest.approx(plain["divergence"], rel=1e-6)
    assert paper["reconstruction"] == pytest.approx(plain["reconstruction"], rel=1e-6)


def test_clustering_config_has_the_papers_beta_term_setting():
    config = experiment_config("clustering", "cpu")
    paper = [a for a in config.arms if a.setting == "paper"]
    assert {(a.beta, a.alpha, a.beta_term) for a in paper} == {(1.0, 0.0, "paper"), (0.0, 1.0, "paper")}
    assert all(a.beta_term == "" for a in config.arms if a.setting != "paper")
    for arm in paper:  # everything else as in table 1: the paper's likelihood, the same seeds
        assert config.run_config(arm, 0).network_options["scale"] == "decoder"
    assert len(config.seeds) == 20
    config.arms = (Arm("bad", "gaussian", 1.0, 0.0, "mmd", beta_term="paper"),)
    with pytest.raises(ValueError, match="mixture prior"):
        config.validate()
    config.arms = (Arm("bad", "pinwheel", 1.0, 0.0, "mmd", beta_term="doubled"),)
    with pytest.raises(ValueError, match="unknown beta_term 'doubled'"):
        config.validate()
    config.arms = (Arm("ok", "pinwheel", 1.0, 0.0, "mmd", beta_term="paper"),)
    config.run = config.run.replace(analytic_kl=False)
    with pytest.raises(ValueError, match="analytic_kl"):
        config.validate()


# ---------------------------------------------------------------------------------------------- collapse
def _encodings(collapsed: bool, n=500, d=10, seed=0):
    """Hand-built encoder means: constant codes plus round-off for a collapsed run; for a trained one, two
    dimensions that follow two factors (variance about 1) and eight that ignore x."""
    g = torch.Generator().manual_seed(seed)
    codes = 0.3 + 1e-4 * torch.randn(n, d, generator=g)
    if not collapsed:
        factors = torch.rand(n, 2, generator=g) * math.sqrt(12) - math.sqrt(3)  # variance 1
        codes[:, :2] = factors
    return codes


def test_collapse_rule_on_hand_built_encodings():
    flat, trained = code_variances(_encodings(True)), code_variances(_encodings(False))
    assert flat.shape == trained.shape == (10,)
    assert float(flat.max()) < ACTIVE_VARIANCE  # counted as collapsed
    assert float(trained.max()) > ACTIVE_VARIANCE  # not collapsed
    assert int((trained > ACTIVE_VARIANCE).sum()) == 2  # its two active dimensions
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        code_variances(torch.zeros(1, 3))


def test_collapsed_runs_are_counted_and_left_out_of_the_paired_differences():
    arms = [
        {"name": "iso_beta4", "group": "iso", "beta": 4.0, "label": "iso, β=4"},
        {"name": "pca_beta4", "group": "pca", "beta": 4.0, "label": "pca, β=4"},
    ]
    scores = {"iso_beta4": [0.5, 0.6, 0.2, 0.55], "pca_beta4": [0.6, 0.7, 0.9, 0.6]}
    runs = []
    for name, values in scores.items():
        for seed, score in enumerate(values):
            # seed 2 of the isotropic prior collapsed (constant codes), every other run is trained
            codes = _encodings(name == "iso_beta4" and seed == 2, seed=seed)
            metric = {
                "disentanglement": score,
                "reconstruction_error": 100.0,
                "max_code_variance": float(code_variances(codes).max()),
            }
            runs.append({"arm": name, "seed": seed, "metrics": metric})
    result = {"arms": arms, "runs": runs}
    assert collapsed_runs(result) == {("iso_beta4", 2)}
    column = next(c for c in COLUMNS["independence"] if c[0] == "max_code_variance")
    values = [r["metrics"]["max_code_variance"] for r in runs if r["arm"] == "iso_beta4"]
    assert column[2](values) == "1"  # the table's count of collapsed runs
    (row,) = uncollapsed_differences(result)
    assert row["collapsed"] == (0, 1) and row["pairs"] == 3
    diffs = torch.tensor([0.1, 0.1, 0.05], dtype=torch.float64)
    mean, se, n = row["disentanglement"]
    assert n == 3 and mean == pytest.approx(float(diffs.mean()))
    assert se == pytest.approx(float(diffs.std()) / math.sqrt(3))
    # runs measured before the collapse metric existed: no rows, not a silent "none collapsed"
    for r in runs:
        del r["metrics"]["max_code_variance"]
    assert uncollapsed_differences(result) == []


def test_at_beta_zero_the_papers_beta_term_trains_bitwise_as_the_plain_prior(tmp_path):
    """The (β=0, α=1) arm of the paper's-β-term setting has no β term, so it must train exactly as table 1's
    arm: the Monte Carlo KL that the wrapper registers draws z̃ ~ q(z|x), and the step's record of the
    omitted KL must not take those draws from the training's random stream."""
    from pyro_decomp.experiments.measure import train_run

    config = experiment_config("clustering", "smoke")
    arms = {a.name: a for a in config.arms}
    states = []
    for name in ("decoder_beta0_alpha1", "paper_beta0_alpha1"):
        pyro.clear_param_store()
        vae, *_ = train_run(config, arms[name], 0, tmp_path / name, None, progress=False)
        states.append({k: v.clone() for k, v in vae.state_dict().items()})
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
