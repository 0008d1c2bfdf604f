"""The experiments' configurations: every scale validates, the paper scale is the paper's settings."""

import pytest

from pyro_decomp.experiments import EXPERIMENTS, SCALES, Arm, experiment_config, reproduce


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("scale", SCALES)
def test_every_config_validates(name, scale):
    config = experiment_config(name, scale)
    assert config.validate() is config
    assert len(config.seeds) >= 1
    for arm in config.arms:
        run = config.run_config(arm, config.seeds[0])
        assert (run.beta, run.alpha, run.prior) == (arm.beta, arm.alpha, arm.prior)


def test_paper_scale_is_the_papers_settings():
    c = experiment_config("clustering", "paper").run
    assert (c.latent_dim, c.network, c.likelihood, c.batch_size, c.lr, c.epochs) == (
        2,
        "mlp",
        "normal",
        400,
        1e-3,
        500,
    )
    arms = experiment_config("clustering", "paper").arms
    assert {(a.beta, a.alpha, a.divergence, a.prior) for a in arms} == {
        (1.0, 0.0, "inclusive-kl", "pinwheel"),
        (0.0, 1.0, "inclusive-kl", "pinwheel"),
    }
    # both likelihoods, each with both arms: the paper's (the decoder predicts σ) and one learnt global σ
    config = experiment_config("clustering", "paper")
    arm_grid = ((1.0, 0.0), (0.0, 1.0))
    assert {(a.setting, a.beta, a.alpha) for a in arms} == {
        (setting, beta, alpha) for setting in ("decoder", "global", "paper") for beta, alpha in arm_grid
    }
    for arm in arms:
        run = config.run_config(arm, 0)
        scale = "decoder" if arm.setting == "paper" else arm.setting  # the paper's β term: its likelihood
        assert run.network_options == {"hidden": [100], "scale": scale}
        assert run.likelihood_scale == 0.1
    ind = experiment_config("independence", "paper")
    c = ind.run
    assert (c.latent_dim, c.network, c.likelihood, c.batch_size, c.lr, c.epochs) == (
        10,
        "conv64",
        "bernoulli",
        64,
        5e-4,
        20,
    )
    assert ind.run.data_options.get("subsample") == {}  # the whole grid
    assert {a.beta for a in ind.arms} >= {1.0, 2.0, 4.0, 8.0}
    assert {a.group for a in ind.arms} == {"iso", "pca", "learnt", "student-t"}
    t = next(a for a in ind.arms if a.group == "student-t")
    assert t.prior_options == {"df": 9.0}
    sp = experiment_config("sparsity", "paper")
    c = sp.run
    assert (c.latent_dim, c.network, c.likelihood, c.likelihood_scale, c.batch_size, c.lr, c.epochs) == (
        50,
        "dcgan32",
        "laplace",
        0.1,
        500,
        5e-4,
        80,
    )
    grid = {(a.prior_options["gamma"], a.alpha) for a in sp.arms}
    assert grid >= {(0.0, 0.0), (0.0, 100.0), (0.8, 0.0), (0.8, 100.0)}
    assert {a.divergence for a in sp.arms} == {"mmd"}  # the per-dimension IMQ kernel


def test_clustering_arms_and_cpu_seeds():
    config = experiment_config("clustering", "cpu")
    assert [a.name for a in config.arms] == [
        "decoder_beta1_alpha0",
        "decoder_beta0_alpha1",
        "global_beta1_alpha0",
        "global_beta0_alpha1",
        "paper_beta1_alpha0",
        "paper_beta0_alpha1",
    ]
    assert len(config.seeds) == 20
    assert len(experiment_config("clustering", "smoke").seeds) == 1
    assert experiment_config("independence", "cpu").seeds == (0, 1, 2, 3, 4)
    assert len(experiment_config("sparsity", "cpu").seeds) == 3
    # an arm's network options are merged over the experiment's, whatever the data set's default
    arm = config.arms[0]
    run = config.run.replace(network_options={"hidden": [100], "scale": "global"})
    config.run = run
    assert config.run_config(arm, 0).network_options["scale"] == "decoder"


def test_data_root_selects_the_real_data(tmp_path):
    assert experiment_config("independence", "cpu", data_root=str(tmp_path)).run.dataset == "shapes"
    (tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz").write_bytes(b"")
    config = experiment_config("independence", "cpu", data_root=str(tmp_path))
    assert config.run.dataset == "dsprites" and config.subset_steps and not config.stand_in
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (raw / name).write_bytes(b"")
    assert experiment_config("sparsity", "cpu", data_root=str(tmp_path)).stand_in  # one file missing
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    config = experiment_config("sparsity", "cpu", data_root=str(tmp_path))
    assert config.run.dataset == "fashion-mnist" and not config.stand_in
    assert experiment_config("sparsity", "smoke", data_root=str(tmp_path)).stand_in  # smoke: always built in


def test_config_errors():
    with pytest.raises(ValueError, match="'bogus'"):
        experiment_config("bogus", "cpu")
    with pytest.raises(ValueError, match="'huge'"):
        experiment_config("clustering", "huge")
    with pytest.raises(ValueError, match="-1"):
        experiment_config("clustering", "smoke", seeds=[-1])
    with pytest.raises(ValueError, match="distinct"):
        experiment_config("clustering", "smoke", seeds=[3, 3])
    with pytest.raises(ValueError, match="at least one seed"):
        experiment_config("clustering", "smoke", seeds=[])
    config = experiment_config("clustering", "smoke")
    config.evaluation["votes"] = 3
    with pytest.raises(ValueError, match="votes"):
        config.validate()
    config = experiment_config("clustering", "smoke")
    config.evaluation["divergence_points"] = 0
    with pytest.raises(ValueError, match="divergence_points"):
        config.validate()
    config = experiment_config("clustering", "smoke")
    config.arms = config.arms + (config.arms[0],)
    with pytest.raises(ValueError, match="unique"):
        config.validate()
    config.arms = (Arm("bad", "pinwheel", -1.0, 0.0, "inclusive-kl"),)
    with pytest.raises(ValueError, match="beta"):
        config.validate()
    config.arms = (Arm("bad", "laplace", 1.0, 0.0, "mmd"),)
    with pytest.raises(ValueError, match="'laplace'"):
        config.validate()
    config.arms = (Arm("bad", "pinwheel", 1.0, 0.0, "inclusive-kl", setting="a b"),)
    with pytest.raises(ValueError, match="setting"):
        config.validate()
    config.arms = (Arm("bad", "pinwheel", 1.0, 0.0, "inclusive-kl", network_options={"width": 3}),)
    with pytest.raises(ValueError, match="width"):
        config.validate()
    with pytest.raises(ValueError, match="'nope'"):
        reproduce("nope", "smoke", "unused")
    with pytest.raises(ValueError, match="workers"):
        reproduce("clustering", "smoke", "unused", workers=0)
