"""The paper's three experiments as configurations: arms, seeds, evaluation options and scales.

The paper's three experiments (Mathieu et al., 2019, §5) as configurations, runs and a results report.

Each experiment is a grid of *arms* (a prior and the weights β, α of the decomposition objective
L_{α,β} = E_q[log p(x|z)] − β KL(q(z|x) ‖ p(z)) − α D(q(z), p(z)), eq. 7) trained over one or more seeds with
the package's own :func:`~pyro_decomp.training.build` and :class:`~pyro_decomp.training.Trainer`, then judged
with :mod:`pyro_decomp.metrics` and drawn with :mod:`pyro_decomp.plots`:

``clustering`` (§5.2)
    pinwheel data, the 4-component mixture prior at (±1, 0), (0, ±1) with variance 0.03, 2-D latents, an MLP
    with 100 hidden units and a Normal likelihood; (β=1, α=0) against (β=0, α=1, inclusive KL), each under
    two likelihoods (:data:`CLUSTERING_SETTINGS`, the arms' ``setting``): the paper's, whose decoder predicts
    the scale σ(z) per point (``decoder_*`` arms; the verdict), and one learnt global σ initialised at 0.1
    (``global_*`` arms); and a third setting, the paper's likelihood with the β term as the paper's code
    computes it, the KL against p(z)² (``paper_*`` arms, :mod:`~pyro_decomp.experiments.paper_beta`).
    Claim: the α term, not β, makes the aggregate encoding q(z) cluster like the prior.
    Measured on a held-out pinwheel draw: the adjusted Rand index (:func:`adjusted_rand_index`) between the
    arm of each point and the prior component nearest its encoder mean, how many components the encoder
    means use (those nearest to at least 5% of them), the likelihood's mean scale, D(q(z), p(z)), the
    mutual information I(x; z) and the reconstruction.
``independence`` (§5.1)
    dSprites (or the procedural :class:`~pyro_decomp.data.Shapes` on the same factor grid), 10-D latents,
    64×64 convolutional networks, a Bernoulli likelihood; priors {isotropic Gaussian, anisotropic Gaussian
    from the data's principal variances, the same with learnt variances, Student-t ν=9} × a β sweep. Claim:
    breaking the isotropic prior's rotation symmetry improves axis-aligned disentanglement at little cost in
    reconstruction. Measured: the Kim & Mnih disentanglement score (Student-t codes mapped through the prior's
    CDF first, as the paper does), MIG, the reconstruction error, and whether the run collapsed (the largest
    variance of an encoder-mean coordinate over the data below ``measure.ACTIVE_VARIANCE``).
``sparsity`` (§5.3)
    Fashion-MNIST at 32×32 (or the shapes resized to 32×32, class = shape, when the files are absent),
    50-D latents, DCGAN networks, a Laplace likelihood of scale 0.1, the spike-and-slab prior with
    γ ∈ {0, 0.8} and the per-dimension IMQ MMD with α ∈ {0, 100, ...}. Claim: the sparse prior *with*
    α > 0 gives sparser codes than either alone, at a modest cost in likelihood. Measured on the test
    split: the normalised Hoyer sparsity of the encoder means, the reconstruction and IWAE
    log-likelihoods, and D̂.

Every experiment comes at three scales (:data:`SCALES`): ``smoke`` (seconds, for tests), ``cpu`` and
``paper`` (the paper's settings, for a GPU). :func:`reproduce` runs one experiment or all of them and writes
``report.md`` with tables (mean ± standard deviation over seeds), figures, whether each claim held at that
scale, and the command that regenerates it.

The ``cpu`` scale takes about 2 h 15 min of ``pyro-decomp reproduce all`` on a 2-core CPU, two runs at
a time, one thread each (the default ``workers=2``). Per-run times were measured two runs at a time on a
2-core machine that other jobs shared (load about 3) ("shared"), and in the earlier sequential run of
``docs/results`` (one run at a time, one thread), which gives the budget of a machine without other load
("idle"):

* clustering: the paper's settings (500 epochs of the 400-point draw, one batch of 400 each), 3
  settings × 2 arms × 20 seeds = 120 runs of 4–6 s training and at most 1.5 s evaluation; about
  6 minutes;
* independence: the shapes grid at every 2nd scale, 4th orientation and 4th x and y position (5,760
  images), 4 epochs (360 steps of 64) per run, 4 priors × β ∈ {1, 2, 4, 8} × 5 seeds = 80 runs; the
  metrics on all 5,760 images (800 votes of 100 points); 85–112 s training and 10–16 s evaluation per run
  (62 s in all sequentially); 40 minutes idle, 70 shared;
* sparsity: γ ∈ {0, 0.8} × α ∈ {0, 100} × 3 seeds = 12 runs, DCGAN width 32; Fashion-MNIST for 3 epochs
  (360 steps of 500; 282 s a run sequentially) or, without it, the shapes at 32×32 (23,040 images, 18,432 for
  training) for 10 epochs (370 steps; 370–400 s training and 9–21 s evaluation per run shared); the
  metrics on 2,000 test images (IWAE on 200 images × 100 samples); 30 minutes idle, 40 shared.

Since the independence runs are also scored with DCI and SAP (about 60 s more evaluation per run), its
80 runs take 197 run-minutes (about 100 minutes wall on two workers), measured on 3 December; in all
about 2 h 15 min idle. Before those metrics, measured for
``docs/results`` (Fashion-MNIST present, otherwise idle): 70.4 minutes (clustering 4.2, independence 41.0,
sparsity 25.2), before the clustering experiment had its third setting, whose 40 runs took 34 minutes on the
same machine under a load of 8–14 (about 2 minutes idle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from pyro_decomp.config import RunConfig
from pyro_decomp.data import DSPRITES_FILENAME
from pyro_decomp.data.fashion_mnist import FASHION_MNIST_FILES
from pyro_decomp.priors import PRIORS

__all__ = [
    "BETA_TERMS",
    "CLUSTERING_SETTINGS",
    "EXPERIMENTS",
    "SCALES",
    "Arm",
    "ExperimentConfig",
    "experiment_config",
    "fmt_number",
]

EXPERIMENTS = ("clustering", "independence", "sparsity")
SCALES = ("smoke", "cpu", "paper")


# ---------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class Arm:
    """One setting of an experiment: a prior (a name of :data:`pyro_decomp.priors.PRIORS` and its options)
    and the objective's β (overlap), α (alignment) and divergence D.

    :param name: identifier used for run directories and file names (letters, digits, ``._-``).
    :param label: how tables and figures name it.
    :param group: arms that share a prior share a group (independence: one group per prior, across β).
    :param network_options: options of the networks that this arm sets over the experiment's (clustering:
        ``{"scale": "decoder"}`` or ``{"scale": "global"}``, the likelihood's scale).
    :param setting: arms compared with each other share a setting, and the report gives each setting a
        table of its own (clustering: ``"decoder"`` and ``"global"``, the two likelihoods, and ``"paper"``,
        the paper's β term); ``""``: one table.
    :param beta_term: ``""``: the β term is β KL(q(z|x) ‖ p(z)), as the library computes it; ``"paper"``: the
        KL against p(z)², E_q[log q(z|x)] − 2 E_q[log p(z)], as the paper's code computes it for the
        pinwheel mixture (:mod:`pyro_decomp.experiments.paper_beta`; a mixture prior only). The run's
        ``config.json`` does not record it: the arm does.
    """

    name: str
    prior: str
    beta: float
    alpha: float
    divergence: str
    prior_options: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    group: str = ""
    network_options: Mapping[str, Any] = field(default_factory=dict)
    setting: str = ""
    beta_term: str = ""


# Evaluation options and what they mean; every experiment takes a subset (see ``_EVALUATION_KEYS``).
_EVALUATION_DOC = {
    "eval_points": "points encoded for the metrics (None: the whole evaluation set)",
    "recon_points": "points on which the reconstruction log-likelihood is averaged",
    "num_votes": "Kim & Mnih disentanglement: number of votes",
    "votes_size": "Kim & Mnih disentanglement: points per vote",
    "mig_bins": "MIG: bins per code dimension",
    "iwae_points": "test points of the IWAE log-likelihood",
    "iwae_samples": "importance samples per point of the IWAE log-likelihood",
    "divergence_points": "held-out points of D(q(z), p(z))",
    "divergence_batch": "points per batch of the held-out D(q(z), p(z)) (None: one batch)",
}
_EVALUATION_KEYS = {
    "clustering": ("divergence_points",),
    "independence": ("eval_points", "recon_points", "num_votes", "votes_size", "mig_bins"),
    "sparsity": (
        "eval_points",
        "recon_points",
        "iwae_points",
        "iwae_samples",
        "divergence_points",
        "divergence_batch",
    ),
}


@dataclass
class ExperimentConfig:
    """An experiment at one scale: the settings shared by its runs, its arms, seeds and evaluation.

    :param name: one of :data:`EXPERIMENTS`.
    :param scale: one of :data:`SCALES`.
    :param run: the :class:`~pyro_decomp.training.RunConfig` shared by every run (data, networks, likelihood,
        epochs, batch size, learning rate); each arm sets its prior, β, α and divergence, each seed its seed.
    :param arms: the settings compared.
    :param seeds: training seeds; every arm is trained once per seed.
    :param evaluation: options of the measurements (see ``_EVALUATION_DOC``).
    :param stand_in: a short description of the data used instead of the paper's, or ``""``.
    :param subset_steps: ground-truth data only: keep every k-th value of each factor (a smaller complete
        grid) when the data set itself cannot subsample (the dSprites file).
    """

    name: str
    scale: str
    run: Any
    arms: Tuple[Arm, ...]
    seeds: Tuple[int, ...]
    evaluation: Dict[str, Any]
    stand_in: str = ""
    subset_steps: Optional[Dict[str, int]] = None

    def validate(self) -> ExperimentConfig:
        """Check every setting; :class:`ValueError` names the first bad one. Returns ``self``."""

        if self.name not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {self.name!r}; expected one of {EXPERIMENTS}")
        if self.scale not in SCALES:
            raise ValueError(f"unknown scale {self.scale!r}; expected one of {SCALES}")
        if not isinstance(self.run, RunConfig):
            raise ValueError(f"run must be a RunConfig, got {type(self.run).__name__}")
        if not self.arms:
            raise ValueError(f"experiment {self.name!r} needs at least one arm, got none")
        names = [arm.name for arm in self.arms]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"arm names must be unique, got {duplicated} more than once")
        for arm in self.arms:
            if not arm.name or not all(c.isalnum() or c in "._-" for c in arm.name):
                raise ValueError(f"arm name {arm.name!r} must be non-empty letters, digits, '.', '_' or '-'")
            if not isinstance(arm.setting, str) or not all(c.isalnum() or c in "._-" for c in arm.setting):
                raise ValueError(
                    f"arm {arm.name!r}: setting {arm.setting!r} must be letters, digits, '.', '_' or '-'"
                )
            if arm.prior not in PRIORS:
                raise ValueError(f"arm {arm.name!r}: unknown prior {arm.prior!r}; expected one of {PRIORS}")
            _check_beta_term(arm, self.run)
            self.run_config(arm, self.seeds[0] if self.seeds else 0)  # RunConfig checks β, α, divergence...
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed, got none")
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ValueError(f"seeds must be non-negative integers, got {seed!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        allowed = _EVALUATION_KEYS[self.name]
        unknown = sorted(set(self.evaluation) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown evaluation options {unknown} for experiment {self.name!r}; "
                f"expected some of {allowed}"
            )
        for key, value in self.evaluation.items():
            if value is None and key in ("eval_points", "divergence_batch"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"evaluation option {key} must be a positive integer, got {value!r}")
        if self.subset_steps is not None:
            for key, step in self.subset_steps.items():
                if isinstance(step, bool) or not isinstance(step, int) or step < 1:
                    raise ValueError(
                        f"subset step for factor {key!r} must be a positive integer, got {step!r}"
                    )
        return self

    def run_config(self, arm: Arm, seed: int):
        """The :class:`~pyro_decomp.training.RunConfig` of ``arm`` trained with ``seed``."""
        return self.run.replace(
            network_options={**self.run.network_options, **dict(arm.network_options)},
            prior=arm.prior,
            prior_options=dict(arm.prior_options),
            beta=float(arm.beta),
            alpha=float(arm.alpha),
            divergence=arm.divergence,
            seed=int(seed),
        )

    def settings(self) -> Dict[str, Any]:
        """The settings shared by the runs, as plain values (for the report)."""
        run = self.run
        keep = (
            "dataset",
            "data_options",
            "latent_dim",
            "network",
            "network_options",
            "likelihood",
            "likelihood_scale",
            "epochs",
            "batch_size",
            "lr",
            "num_particles",
            "analytic_kl",
        )
        values = {k: getattr(run, k) for k in keep}
        values["seeds"] = list(self.seeds)
        values["evaluation"] = dict(self.evaluation)
        if self.subset_steps:
            values["subset_steps"] = dict(self.subset_steps)
        return values


#: how the β term reads the prior: the library's KL (``""``), or the paper's code's KL against p(z)²
#: (``"paper"``)
BETA_TERMS = ("", "paper")


def _check_beta_term(arm: Arm, run) -> None:
    if arm.beta_term not in BETA_TERMS:
        raise ValueError(
            f"arm {arm.name!r}: unknown beta_term {arm.beta_term!r}; expected one of {BETA_TERMS}"
        )
    if arm.beta_term == "paper":
        if arm.prior not in ("pinwheel", "mixture"):
            raise ValueError(
                f"arm {arm.name!r}: the paper's β term is set up for a mixture prior ('pinwheel' or "
                f"'mixture'), got {arm.prior!r}"
            )
        if not run.analytic_kl:
            raise ValueError(
                f"arm {arm.name!r}: the paper's β term is the KL registered against the prior, which the "
                "ELBO reads only with analytic_kl=True; got analytic_kl=False"
            )


# Every k-th value of (shape, scale, orientation, position_x, position_y) for the shapes grid per scale.
_SHAPES_SUBSAMPLE = {
    "smoke": {"scale": 3, "orientation": 20, "position_x": 8, "position_y": 8},  # 3·2·2·4·4 = 192 images
    "cpu": {"scale": 2, "orientation": 4, "position_x": 4, "position_y": 4},  # 3·3·10·8·8 = 5,760 images
    "paper": {},  # the whole grid, 737,280 images
}
# the stand-in for Fashion-MNIST: shapes at 32×32, class = shape
_STAND_IN_SUBSAMPLE = {
    "smoke": {"scale": 3, "orientation": 20, "position_x": 8, "position_y": 8},
    "cpu": {"scale": 2, "orientation": 4, "position_x": 2, "position_y": 2},  # 23,040 images
    "paper": {"orientation": 4, "position_x": 2, "position_y": 2},  # 46,080 images
}

# Scale-dependent settings of each experiment (the rest are the paper's and fixed).
_SCALE_SETTINGS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "clustering": {
        "smoke": {"epochs": 10, "num_per_class": 25, "seeds": (0,), "divergence_points": 100},
        "cpu": {"epochs": 500, "num_per_class": 100, "seeds": tuple(range(20)), "divergence_points": 400},
        "paper": {"epochs": 500, "num_per_class": 100, "seeds": tuple(range(20)), "divergence_points": 400},
    },
    "independence": {
        "smoke": {
            "epochs": 1,
            "betas": (1.0, 4.0),
            "seeds": (0,),
            "network_options": {"hidden": 32},
            "evaluation": {
                "eval_points": None,
                "recon_points": 128,
                "num_votes": 100,
                "votes_size": 20,
                "mig_bins": 10,
            },
        },
        "cpu": {
            "epochs": 4,
            "betas": (1.0, 2.0, 4.0, 8.0),
            "seeds": (0, 1, 2, 3, 4),
            "network_options": {},
            "evaluation": {
                "eval_points": None,
                "recon_points": 2000,
                "num_votes": 800,
                "votes_size": 100,
                "mig_bins": 20,
            },
        },
        "paper": {
            "epochs": 20,
            "betas": (1.0, 2.0, 4.0, 8.0),
            "seeds": (0, 1, 2),
            "network_options": {},
            "evaluation": {
                "eval_points": None,
                "recon_points": 10000,
                "num_votes": 800,
                "votes_size": 1000,
                "mig_bins": 20,
            },
        },
    },
    "sparsity": {
        "smoke": {
            "epochs": {"fashion-mnist": 1, "shapes": 1},  # by data source
            "alphas": (0.0, 100.0),
            "seeds": (0,),
            "network_options": {"width": 8},
            "batch_size": 100,
            "evaluation": {
                "eval_points": None,
                "recon_points": 64,
                "iwae_points": 16,
                "iwae_samples": 8,
                "divergence_points": 64,
                "divergence_batch": None,
            },
        },
        "cpu": {
            "epochs": {"fashion-mnist": 3, "shapes": 10},  # by data source
            "alphas": (0.0, 100.0),
            "seeds": (0, 1, 2),
            "network_options": {},
            "batch_size": 500,
            "evaluation": {
                "eval_points": 2000,
                "recon_points": 2000,
                "iwae_points": 200,
                "iwae_samples": 100,
                "divergence_points": 2000,
                "divergence_batch": 500,
            },
        },
        "paper": {
            "epochs": {"fashion-mnist": 80, "shapes": 80},  # by data source
            "alphas": (0.0, 10.0, 100.0, 1000.0),
            "seeds": (0, 1, 2),
            "network_options": {},
            "batch_size": 500,
            "evaluation": {
                "eval_points": None,
                "recon_points": 10000,
                "iwae_points": 10000,
                "iwae_samples": 1000,
                "divergence_points": 10000,
                "divergence_batch": 500,
            },
        },
    },
}

# The clustering experiment's settings and how tables name them: two likelihoods (the network option ``scale``
# of the MLP decoder), the paper's, where the decoder predicts a per-point scale σ(z), and one learnt global σ
# initialised at 0.1; and the paper's likelihood with the paper's β term (the KL against p(z)²).
CLUSTERING_SETTINGS = {"decoder": "decoder σ(z)", "global": "global σ", "paper": "paper's β term"}
# per setting: (the decoder's ``scale`` option, the arms' ``beta_term``)
_CLUSTERING_SETTING_OPTIONS = {
    "decoder": ("decoder", ""),
    "global": ("global", ""),
    "paper": ("decoder", "paper"),
}

_INDEPENDENCE_PRIORS = (
    ("iso", "isotropic Gaussian", "gaussian", {"variance": "iso"}),
    ("pca", "anisotropic Gaussian (PCA)", "gaussian", {"variance": "pca"}),
    ("learnt", "anisotropic Gaussian (learnt)", "gaussian", {"variance": "pca", "learn_variance": True}),
    ("student-t", "Student-t ν=9", "student-t", {"df": 9.0}),
)


def _fashion_mnist_present(data_root: Optional[str]) -> bool:
    if data_root is None:
        return False

    raw = Path(data_root).expanduser() / "FashionMNIST" / "raw"
    return all((raw / n).exists() or (raw / (n + ".gz")).exists() for n in FASHION_MNIST_FILES)


def _dsprites_present(data_root: Optional[str]) -> bool:
    if data_root is None:
        return False

    return (Path(data_root).expanduser() / DSPRITES_FILENAME).exists()


def fmt_number(value: float) -> str:
    return f"{value:g}"


def experiment_config(
    name: str,
    scale: str = "smoke",
    seeds: Optional[Sequence[int]] = None,
    data_root: Optional[str] = None,
) -> ExperimentConfig:
    """The configuration of experiment ``name`` at ``scale``.

    :param name: one of :data:`EXPERIMENTS`.
    :param scale: one of :data:`SCALES`.
    :param seeds: training seeds (default: the scale's, see ``_SCALE_SETTINGS``).
    :param data_root: directory of the data files. ``independence`` uses the dSprites file there when present
        (else the procedural shapes, rendered in memory for small grids or cached there); ``sparsity`` uses
        Fashion-MNIST there (``FashionMNIST/raw/``) when present, else the shapes at 32×32.
    :raises ValueError: for an unknown name or scale, or bad seeds.
    """

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; expected one of {EXPERIMENTS}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")
    s = _SCALE_SETTINGS[name][scale]
    seeds = tuple(s["seeds"]) if seeds is None else tuple(seeds)
    stand_in, subset_steps = "", None
    if name == "clustering":
        run = RunConfig(
            dataset="pinwheel",
            data_options={"num_per_class": s["num_per_class"], "seed": 0, "test_seed": 1},
            latent_dim=2,
            network="mlp",
            network_options={"hidden": [100]},
            likelihood="normal",
            likelihood_scale=0.1,
            epochs=s["epochs"],
            batch_size=400,
            lr=1e-3,
            checkpoint_every=s["epochs"],
            device="auto",
        )
        arms = tuple(
            Arm(
                f"{setting}_beta{fmt_number(beta)}_alpha{fmt_number(alpha)}",
                "pinwheel",
                beta,
                alpha,
                "inclusive-kl",
                label=f"{short}: β={fmt_number(beta)}, α={fmt_number(alpha)}"
                + (" (inclusive KL)" if alpha > 0 else ""),
                group="alpha" if alpha > 0 else "beta",
                network_options={"scale": _CLUSTERING_SETTING_OPTIONS[setting][0]},
                setting=setting,
                beta_term=_CLUSTERING_SETTING_OPTIONS[setting][1],
            )
            for setting, short in CLUSTERING_SETTINGS.items()
            for beta, alpha in ((1.0, 0.0), (0.0, 1.0))
        )
        evaluation = {"divergence_points": s["divergence_points"]}
    elif name == "independence":
        if _dsprites_present(data_root):
            dataset, data_options = "dsprites", {"progress": scale == "paper"}
            subset_steps = dict(_SHAPES_SUBSAMPLE[scale]) or None
        else:
            dataset = "shapes"
            data_options = {"subsample": dict(_SHAPES_SUBSAMPLE[scale]), "progress": scale == "paper"}
            stand_in = (
                "the procedural shapes of `pyro_decomp.data.Shapes` (the dSprites factor grid, not "
                "pixel-identical to DeepMind's file), because the dSprites file was not found"
                + (f" in {data_root}" if data_root else " (no --data-root given)")
            )
        run = RunConfig(
            dataset=dataset,
            data_root=data_root,
            data_options=data_options,
            latent_dim=10,
            network="conv64",
            network_options=dict(s["network_options"]),
            likelihood="bernoulli",
            epochs=s["epochs"],
            batch_size=64,
            lr=5e-4,
            checkpoint_every=1,
            device="auto",
            num_workers=4 if scale == "paper" else 0,
        )
        arms = tuple(
            Arm(
                f"{key}_beta{fmt_number(beta)}",
                prior,
                beta,
                0.0,
                "mmd",
                dict(options),
                label=f"{label}, β={fmt_number(beta)}",
                group=key,
            )
            for key, label, prior, options in _INDEPENDENCE_PRIORS
            for beta in s["betas"]
        )
        evaluation = dict(s["evaluation"])
    else:
        if scale != "smoke" and _fashion_mnist_present(data_root):
            dataset, data_options = "fashion-mnist", {}
        else:
            dataset = "shapes"
            data_options = {"subsample": dict(_STAND_IN_SUBSAMPLE[scale]), "progress": False}
            if scale == "smoke":
                why = "which the smoke scale always uses"
            else:
                where = f"in {data_root}/FashionMNIST/raw" if data_root else "(no --data-root given)"
                why = f"because Fashion-MNIST was not found {where}"
            stand_in = (
                "the procedural shapes resized to 32×32 (class = shape: square, ellipse, heart; a random "
                f"80/20 train/test split), {why}"
            )
        run = RunConfig(
            dataset=dataset,
            data_root=data_root,
            data_options=data_options,
            latent_dim=50,
            network="dcgan32",
            network_options=dict(s["network_options"]),
            likelihood="laplace",
            likelihood_scale=0.1,
            epochs=s["epochs"][dataset],
            batch_size=s["batch_size"],
            lr=5e-4,
            checkpoint_every=1,
            device="auto",
            num_workers=4 if scale == "paper" and dataset == "fashion-mnist" else 0,
        )
        arms = tuple(
            Arm(
                f"gamma{fmt_number(gamma)}_alpha{fmt_number(alpha)}",
                "sparse",
                1.0,
                alpha,
                "mmd",
                {"gamma": gamma},
                label=f"γ={fmt_number(gamma)}, α={fmt_number(alpha)}",
                group=f"gamma{fmt_number(gamma)}",
            )
            for gamma in (0.0, 0.8)
            for alpha in s["alphas"]
        )
        evaluation = dict(s["evaluation"])
    return ExperimentConfig(name, scale, run, arms, seeds, evaluation, stand_in, subset_steps).validate()
