"""Training decomposition VAEs: run configurations, the model builder, the SVI loop, checkpoints and resume.

A run is described by a :class:`RunConfig` (plain JSON, saved as ``RUN_DIR/config.json``). :func:`build`
turns it into the objects of Mathieu et al. (2019): the :class:`~pyro_decomp.vae.DecompVAE` with the data
set's networks and likelihood, the prior, the :class:`~pyro_decomp.elbo.DecompositionELBO`

    L_{α,β} = Σ_n ( E_{q(z|x_n)}[log p(x_n|z)] − β KL(q(z|x_n) ‖ p(z)) ) − α N D(q(z), p(z))

and the training and test sets. :class:`Trainer` minimises −L with Pyro SVI and Adam (amsgrad, as the
paper), one minibatch at a time with ``dataset_size = N`` so that the data plate scales by N/B. Each epoch
appends a line to ``RUN_DIR/metrics.jsonl``; checkpoints (``RUN_DIR/checkpoint.pt``) hold the model (and with
it the prior), the optimiser, the random number generators and the position in the run, are written atomically
and are read back with ``torch.load(weights_only=True)`` only.

The order of the data in epoch e is a function of (seed, e) alone, so a run resumed from a checkpoint takes
the same steps as one that never stopped: on CPU with one thread the parameters agree bitwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import random
import signal
import threading
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer.util import zero_grads
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from pyro_decomp._atomic import atomic_open
from pyro_decomp.distributed import (
    DistributedContext,
    GatheredDivergence,
    all_reduce_mean,
    average_gradients,
    broadcast_module,
    init_distributed,
    shutdown,
)

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "CheckpointError",
    "DATASETS",
    "DATASET_DEFAULTS",
    "METRICS_NAME",
    "NETWORKS",
    "NonFiniteLossError",
    "RunConfig",
    "Trainer",
    "TrainingInterrupted",
    "build",
    "load_checkpoint",
    "load_run",
    "read_metrics",
    "resolve_device",
    "resume",
    "save_checkpoint",
    "train",
]

DATASETS = ("pinwheel", "shapes", "dsprites", "fashion-mnist")
NETWORKS = ("mlp", "conv64", "dcgan32")
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "pyro_decomp.checkpoint"
CHECKPOINT_VERSION = 1

# The paper's settings per data set (Mathieu et al., 2019, §5 and appendix): networks, likelihood, latent size
# and the objective of each experiment. ``RunConfig`` fields left as None take these values.
DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "pinwheel": {
        "prior": "pinwheel",
        "latent_dim": 2,
        "network": "mlp",
        "likelihood": "normal",
        "likelihood_scale": 0.1,
        "beta": 0.0,
        "alpha": 1.0,
        "divergence": "inclusive-kl",
        "epochs": 500,
        "batch_size": 400,
        "lr": 1e-3,
        "checkpoint_every": 100,
        "num_threads": 1,
    },
    "shapes": {
        "prior": "gaussian",
        "latent_dim": 10,
        "network": "conv64",
        "likelihood": "bernoulli",
        "likelihood_scale": 0.1,
        "beta": 1.0,
        "alpha": 0.0,
        "divergence": "mmd",
        "epochs": 30,
        "batch_size": 64,
        "lr": 5e-4,
        "checkpoint_every": 1,
        "num_threads": None,
    },
    "fashion-mnist": {
        "prior": "sparse",
        "latent_dim": 50,
        "network": "dcgan32",
        "likelihood": "laplace",
        "likelihood_scale": 0.1,
        "beta": 1.0,
        "alpha": 100.0,
        "divergence": "mmd",
        "epochs": 80,
        "batch_size": 500,
        "lr": 1e-3,
        "checkpoint_every": 1,
        "num_threads": None,
    },
}
DATASET_DEFAULTS["dsprites"] = dict(DATASET_DEFAULTS["shapes"])

_NETWORK_OPTIONS = {"mlp": ("hidden",), "conv64": ("hidden",), "dcgan32": ("width",)}


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupt, or carries anything but tensors and plain data."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; no parameter was updated with it, no checkpoint written after it."""

    def __init__(self, message: str, epoch: int, step: int, components: Dict[str, float]):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.components = components


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT (Ctrl-C) after writing a checkpoint at ``checkpoint`` (None: no run dir)."""

    def __init__(self, message: str, checkpoint: Optional[str], epoch: int, step: int):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step = step


# ---------------------------------------------------------------------------------------------- configuration
def _is_json(value) -> bool:
    try:
        return json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError):
        return False


def _check_number(name, value, lower, strict, kind=float):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if kind is int and int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not math.isfinite(value) or (value <= lower if strict else value < lower):
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be {rel} {lower}, got {value!r}")
    return kind(value)


@dataclass
class RunConfig:
    """Every setting of a training run; fields left as None take the data set's :data:`DATASET_DEFAULTS`.

    :param dataset: one of :data:`DATASETS`.
    :param data_root: directory of the data files (dSprites, Fashion-MNIST) or the shapes cache.
    :param data_options: keyword arguments of the data set (pinwheel: ``num_classes``, ``num_per_class``,
        ``radial_std``, ``tangential_std``, ``rate``, ``seed`` and ``test_seed``, by default seed + 1, for the
        held-out draw; shapes: ``subsample``; dSprites and Fashion-MNIST: ``download``).
    :param prior: a name of :data:`pyro_decomp.priors.PRIORS`; ``prior_options`` its keyword arguments
        (``variance``, ``learn_variance``, ``df``, ``gamma``, ``scale``, ...). For ``variance="pca"`` the
        training data are passed to the prior.
    :param beta: β ≥ 0, the weight of KL(q(z|x) ‖ p(z)) (overlap).
    :param alpha: α ≥ 0, the weight of N·D(q(z), p(z)) (alignment).
    :param divergence: a name of :data:`pyro_decomp.divergences.DIVERGENCES`.
    :param global_divergence: under ``torch.distributed``, estimate D on the batch of all processes.
    :param latent_dim: D.
    :param network: one of :data:`NETWORKS`; ``network_options``: ``hidden`` (mlp: list of sizes, conv64: the
        width of the linear layer) or ``width`` (dcgan32).
    :param likelihood: ``"normal"``, ``"bernoulli"`` or ``"laplace"``; ``likelihood_scale`` the Laplace scale
        or the Normal scale's initial value.
    :param analytic_kl: use the closed-form KL when one is registered for (encoder, prior).
    :param num_particles: samples of z per data point (vectorised when > 1).
    :param epochs: the total number of epochs of the run.
    :param batch_size: minibatch size B per process.
    :param lr: Adam's learning rate.
    :param seed: seeds the initialisation, the sampling and the data order of every epoch.
    :param device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    :param checkpoint_every: write a checkpoint every this many epochs (and always at the end).
    :param num_workers: DataLoader worker processes for image data sets.
    :param num_threads: torch's intra-op CPU threads for the run (None: torch's default). Small models such as
        pinwheel's MLP train fastest on one thread; bitwise reproducibility also needs the same number.
    """

    dataset: str = "pinwheel"
    data_root: Optional[str] = None
    data_options: Dict[str, Any] = field(default_factory=dict)
    prior: Optional[str] = None
    prior_options: Dict[str, Any] = field(default_factory=dict)
    beta: Optional[float] = None
    alpha: Optional[float] = None
    divergence: Optional[str] = None
    global_divergence: bool = False
    latent_dim: Optional[int] = None
    network: Optional[str] = None
    network_options: Dict[str, Any] = field(default_factory=dict)
    likelihood: Optional[str] = None
    likelihood_scale: Optional[float] = None
    analytic_kl: bool = True
    num_particles: int = 1
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    seed: int = 0
    device: str = "auto"
    checkpoint_every: Optional[int] = None
    num_workers: int = 0
    num_threads: Optional[int] = None

    def __post_init__(self):
        from pyro_decomp.vae import LIKELIHOODS

        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of {DATASETS}")
        self.beta = _check_number("beta", self.beta, 0.0, False)
        self.alpha = _check_number("alpha", self.alpha, 0.0, False)
        self.latent_dim = _check_number("latent_dim", self.latent_dim, 0, True, int)
        self.likelihood_scale = _check_number("likelihood_scale", self.likelihood_scale, 0.0, True)
        self.num_particles = _check_number("num_particles", self.num_particles, 0, True, int)
        self.epochs = _check_number("epochs", self.epochs, 0, True, int)
        self.batch_size = _check_number("batch_size", self.batch_size, 1, True, int)
        self.lr = _check_number("lr", self.lr, 0.0, True)
        self.seed = _check_number("seed", self.seed, 0, False, int)
        self.checkpoint_every = _check_number("checkpoint_every", self.checkpoint_every, 0, True, int)
        self.num_workers = _check_number("num_workers", self.num_workers, 0, False, int)
        self.num_threads = _check_number("num_threads", self.num_threads, 0, True, int)
        if self.network is not None and self.network not in NETWORKS:
            raise ValueError(f"unknown network {self.network!r}; expected one of {NETWORKS}")
        if self.likelihood is not None and self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; expected one of {LIKELIHOODS}")
        _check_device_name(self.device)
        for name in ("global_divergence", "analytic_kl"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("data_options", "prior_options", "network_options"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not _is_json(value):
                raise ValueError(f"{name} must be a JSON object (a dict of plain values), got {value!r}")
        for name in ("data_root", "prior", "divergence"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}")

    def resolved(self) -> RunConfig:
        """A copy with every None replaced by the data set's default (:data:`DATASET_DEFAULTS`)."""
        values = dataclasses.asdict(self)
        for key, default in DATASET_DEFAULTS[self.dataset].items():
            if values[key] is None:
                values[key] = default
        return RunConfig(**values)

    def replace(self, **changes) -> RunConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-compatible dict of every field."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; the ``pyro_decomp_version`` key of ``config.json`` is ignored."""
        if not isinstance(values, dict):
            raise ValueError(f"a run configuration must be a JSON object, got {type(values).__name__}")
        values = {k: v for k, v in values.items() if k != "pyro_decomp_version"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown run configuration keys {unknown}; expected some of {sorted(known)}")
        return cls(**values)

    def to_json(self) -> str:
        """The configuration as JSON text, with the package version."""
        from pyro_decomp import __version__

        return json.dumps({**self.to_dict(), "pyro_decomp_version": __version__}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Parse :meth:`to_json`'s output."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str) -> RunConfig:
        """Read a run's ``config.json`` (a file or a run directory)."""
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"no run configuration at {path}: is this a run directory?") from None
        try:
            return cls.from_json(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None

    def save(self, path: str) -> None:
        """Write :meth:`to_json` to ``path`` atomically."""
        _atomic_write_bytes(path, (self.to_json() + "\n").encode())


def _check_device_name(name) -> None:
    if not isinstance(name, str):
        raise ValueError(f"device must be a string, got {name!r}")
    if name in ("auto", "cpu", "cuda"):
        return
    if name.startswith("cuda:") and name[5:].isdigit():
        return
    raise ValueError(f"unknown device {name!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    _check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was requested but CUDA is not available (torch.cuda.is_available() is "
                "False); use --device cpu or --device auto"
            )
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------- builder
def _first_tensor(item):
    return item[0] if isinstance(item, (tuple, list)) else item


def _data_matrix(dataset: Dataset, max_points: int = 10000, seed: int = 0) -> torch.Tensor:
    """Up to ``max_points`` inputs of ``dataset`` flattened to ``(n, F)`` (a seeded random subset)."""
    if isinstance(dataset, TensorDataset):
        x = dataset.tensors[0]
        if len(x) > max_points:
            x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_points]]
        return x.reshape(len(x), -1).float()
    n = len(dataset)
    idx = torch.arange(n)
    if n > max_points:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_points]
    x = torch.stack([_first_tensor(dataset[int(i)]) for i in idx])
    return x.reshape(len(x), -1).float()


def _build_data(cfg: RunConfig) -> Tuple[Dataset, Dataset]:
    opts = dict(cfg.data_options)
    if cfg.dataset == "pinwheel":
        from pyro_decomp.data import pinwheel

        test_seed = opts.pop("test_seed", None)
        seed = opts.pop("seed", 0)
        x, y = pinwheel(seed=seed, **opts)
        xt, yt = pinwheel(seed=seed + 1 if test_seed is None else test_seed, **opts)
        return TensorDataset(x, y), TensorDataset(xt, yt)
    if cfg.dataset == "shapes":
        from pyro_decomp.data import Shapes

        data = Shapes(root=cfg.data_root, **opts)
        return data, data
    if cfg.dataset == "dsprites":
        from pyro_decomp.data import DSprites

        if cfg.data_root is None:
            raise ValueError(
                "the dsprites data set needs --data-root: the directory of "
                "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz (add --data-option download=true to fetch it)"
            )
        data = DSprites(cfg.data_root, **opts)
        return data, data
    from pyro_decomp.data import fashion_mnist

    if cfg.data_root is None:
        raise ValueError(
            "the fashion-mnist data set needs --data-root: the directory that holds FashionMNIST/raw/ "
            "(add --data-option download=true to fetch it)"
        )
    return fashion_mnist(cfg.data_root, train=True, **opts), fashion_mnist(cfg.data_root, train=False, **opts)


def _build_networks(cfg: RunConfig, obs_shape: Tuple[int, ...]):
    from pyro_decomp import nets

    opts = dict(cfg.network_options)
    unknown = sorted(set(opts) - set(_NETWORK_OPTIONS[cfg.network]))
    if unknown:
        raise ValueError(
            f"unknown network options {unknown} for network {cfg.network!r}; "
            f"expected some of {list(_NETWORK_OPTIONS[cfg.network])}"
        )
    d = cfg.latent_dim
    if cfg.network == "mlp":
        hidden = tuple(opts.get("hidden", (100,)))
        return nets.MLPEncoder(obs_shape, d, hidden=hidden), nets.MLPDecoder(d, obs_shape, hidden=hidden)
    if cfg.network == "conv64":
        enc, dec = nets.ConvEncoder64(d, **opts), nets.ConvDecoder64(d, **opts)
    else:
        output = "logits" if cfg.likelihood == "bernoulli" else "sigmoid"
        enc, dec = nets.DCGANEncoder32(d, **opts), nets.DCGANDecoder32(d, output=output, **opts)
    if tuple(enc.in_shape) != tuple(obs_shape):
        raise ValueError(
            f"network {cfg.network!r} takes inputs of shape {tuple(enc.in_shape)}, but the {cfg.dataset} "
            f"data have shape {tuple(obs_shape)}"
        )
    return enc, dec


def _build_prior(cfg: RunConfig, train_set: Dataset):
    from pyro_decomp.priors import build_prior

    opts = dict(cfg.prior_options)
    if cfg.prior == "gaussian" and opts.get("variance") == "pca":
        opts["data"] = _data_matrix(train_set, seed=cfg.seed)
    return build_prior(cfg.prior, cfg.latent_dim, **opts)


def _build_elbo(cfg: RunConfig):
    from pyro_decomp.divergences import build_divergence
    from pyro_decomp.elbo import DecompositionELBO

    divergence = build_divergence(cfg.divergence)
    if cfg.global_divergence:
        divergence = GatheredDivergence(divergence)
    return DecompositionELBO(
        beta=cfg.beta,
        alpha=cfg.alpha,
        divergence=divergence,
        analytic_kl=cfg.analytic_kl,
        num_particles=cfg.num_particles,
        vectorize_particles=cfg.num_particles > 1,
        max_plate_nesting=1,
    )


def build(config: RunConfig, data: Optional[Tuple[Dataset, Dataset]] = None):
    """Build ``(vae, elbo, train_set, test_set)`` for a run, as the paper sets up each data set.

    ``data``: a ``(train_set, test_set)`` pair to use instead of loading ``config.dataset`` (for data sets the
    builder does not know, such as a stand-in); networks, prior and ELBO are still chosen by ``config``.

    pinwheel → MLP with 100 hidden units and a Normal likelihood with learnt scale, 2-D latents, the
    4-component mixture prior; shapes/dsprites → 64×64 convolutional nets and a Bernoulli likelihood, 10-D
    latents;
    fashion-mnist → DCGAN 32×32 nets and a Laplace likelihood (scale 0.1), 50-D latents (override any of these
    in ``config``). For ground-truth data (shapes, dSprites) the test set is the training set, on which the
    disentanglement metrics are defined; pinwheel's is an independent draw; Fashion-MNIST's its test split.
    Network initialisation draws from torch's global generator: seed it first for a reproducible build.
    """
    from pyro_decomp.vae import DecompVAE

    cfg = config.resolved()
    train_set, test_set = _build_data(cfg) if data is None else data
    if len(train_set) < 2:
        raise ValueError(f"the training set has {len(train_set)} points; at least 2 are needed")
    obs_shape = tuple(_first_tensor(train_set[0]).shape)
    encoder, decoder = _build_networks(cfg, obs_shape)
    prior = _build_prior(cfg, train_set)
    vae = DecompVAE(
        encoder,
        decoder,
        prior,
        likelihood=cfg.likelihood,
        likelihood_scale=cfg.likelihood_scale,
        latent_dim=cfg.latent_dim,
        obs_shape=obs_shape,
    )
    return vae, _build_elbo(cfg), train_set, test_set


# ---------------------------------------------------------------------------------------------- files
def _atomic_write(path: str, write) -> None:
    """Write via ``write(file)`` to a temporary file next to ``path``, fsync it, rename it over ``path``."""
    with atomic_open(path) as f:
        write(f)


def _atomic_write_bytes(path: str, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def save_checkpoint(state: Dict[str, Any], path: str) -> None:
    """``torch.save(state)`` atomically: a temporary file in the same directory, flush, fsync, ``os.replace``.

    A kill at any moment leaves either the previous file or the new one, never a partial file at ``path``.
    """
    _atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :class:`Trainer` with ``torch.load(..., weights_only=True)``.

    :raises CheckpointError: the file is missing, truncated or corrupt, holds pickled objects other than
        tensors and plain containers (refused, never executed), or is not a pyro_decomp checkpoint.
    """
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it holds pickled objects other than tensors and plain "
            f"containers, which could run code when loaded ({str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated or corrupt ({str(e).splitlines()[0]})"
        ) from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pyro_decomp checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if state.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {state.get('format_version')!r}; this version of "
            f"pyro_decomp reads version {CHECKPOINT_VERSION}"
        )
    return state


def read_metrics(run_dir: str) -> List[Dict[str, Any]]:
    """The per-epoch records of ``RUN_DIR/metrics.jsonl`` (an empty list when there are none)."""
    path = os.path.join(run_dir, METRICS_NAME)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut short by a kill: what follows cannot be trusted
    return records


def _rng_state() -> Dict[str, Any]:
    """The torch, CUDA, Python and NumPy generator states as tensors and plain values (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss,
        },
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------------------- trainer
def _fmt(components: Dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in components.items())


class Trainer:
    """The SVI loop of a decomposition VAE, with progress, metrics, checkpoints, resume and data parallelism.

    Each step minimises the minibatch estimate of −L (see :mod:`pyro_decomp.training`) for ``x`` of B points
    with ``dataset_size = N``: ``elbo.loss_and_grads`` computes the gradients, which are averaged over
    processes when ``context`` is distributed, and Pyro's Adam (amsgrad) applies them to the parameters seen
    in the step. The data order of epoch e is ``DistributedSampler(seed=seed).set_epoch(e)``'s (a permutation
    drawn from a generator seeded with seed + e, split over processes).

    :param vae: a :class:`~pyro_decomp.vae.DecompVAE` (moved to ``device``).
    :param elbo: the loss, e.g. a :class:`~pyro_decomp.elbo.DecompositionELBO` or any ``pyro.infer.ELBO``;
        per-epoch loss components are logged when it has ``loss_components``.
    :param train_set: a Dataset of inputs or of ``(input, ...)`` tuples.
    :param config: the run's :class:`RunConfig` (``epochs``, ``batch_size``, ``lr``, ``seed``,
        ``checkpoint_every`` are used here).
    :param run_dir: where ``config.json``, ``metrics.jsonl`` and ``checkpoint.pt`` go (None: nothing written).
    :param device: a torch device (default: ``resolve_device(config.device)``).
    :param context: the :class:`~pyro_decomp.distributed.DistributedContext` (default: one process).
    :param progress: show tqdm progress bars (rank 0 only).
    """

    def __init__(
        self,
        vae,
        elbo,
        train_set: Dataset,
        config: RunConfig,
        run_dir: Optional[str] = None,
        *,
        device=None,
        context: Optional[DistributedContext] = None,
        progress: bool = True,
    ):
        self.config = config.resolved()
        self.context = context if context is not None else DistributedContext()
        self.device = torch.device(device) if device is not None else resolve_device(self.config.device)
        self.vae = vae.to(self.device)
        self.elbo = elbo
        self.train_set = train_set
        self.dataset_size = len(train_set)
        if self.dataset_size < 2:
            raise ValueError(f"the training set has {self.dataset_size} points; at least 2 are needed")
        self.run_dir = run_dir
        self.progress = bool(progress) and self.context.is_main
        self.optim = pyro.optim.Adam({"lr": self.config.lr, "amsgrad": True})
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self._partial = {"loss_sum": 0.0, "steps": 0}
        self._pending_optim_state: Dict[str, Any] = {}
        self._stop_requested = False
        self._in_update = False
        self.history: List[Dict[str, Any]] = []
        pyro.clear_param_store()

    # ------------------------------------------------------------------ paths
    def _path(self, name: str) -> Optional[str]:
        return None if self.run_dir is None else os.path.join(self.run_dir, name)

    @property
    def checkpoint_path(self) -> Optional[str]:
        return self._path(CHECKPOINT_NAME)

    @property
    def metrics_path(self) -> Optional[str]:
        return self._path(METRICS_NAME)

    @property
    def writes_files(self) -> bool:
        return self.run_dir is not None and self.context.is_main

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Everything a resume needs, as tensors and plain values (``torch.load(weights_only=True)``-safe)."""
        from pyro_decomp import __version__

        optim_state = dict(self._pending_optim_state)
        optim_state.update(self.optim.get_state())
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "pyro_decomp_version": __version__,
            "epoch": self.epoch,
            "step": self.step_in_epoch,
            "global_step": self.global_step,
            "partial": dict(self._partial),
            "model": self.vae.state_dict(),
            "optimizer": optim_state,
            "rng": _rng_state(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: model, optimiser (applied to each parameter on its first step), RNGs
        and the position in the run (epochs done and steps done in the next epoch)."""
        self.vae.load_state_dict(state["model"])
        pyro.clear_param_store()
        self._pending_optim_state = dict(state["optimizer"])
        self.optim.set_state(dict(state["optimizer"]))
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step"])
        self.global_step = int(state["global_step"])
        self._partial = {
            "loss_sum": float(state["partial"]["loss_sum"]),
            "steps": int(state["partial"]["steps"]),
        }
        if self.context.is_main:
            _set_rng_state(state["rng"])
        else:
            pyro.set_rng_seed(self.config.seed + 7919 * self.context.rank + 104729 * self.global_step)

    def save(self, path: Optional[str] = None) -> Optional[str]:
        """Write a checkpoint (rank 0 only) to ``path`` (default ``RUN_DIR/checkpoint.pt``); return it."""
        path = path or self.checkpoint_path
        if path is None or not self.context.is_main:
            return None
        save_checkpoint(self.state_dict(), path)
        return path

    def restore(self, path: Optional[str] = None) -> Dict[str, Any]:
        """Load a checkpoint (default ``RUN_DIR/checkpoint.pt``) into this trainer; returns its contents."""
        path = path or self.checkpoint_path
        if path is None:
            raise ValueError("restore() needs a checkpoint path or a run_dir")
        state = load_checkpoint(path, map_location=self.device)
        self.load_state_dict(state)
        return state

    # ------------------------------------------------------------------ data
    def _epoch_batches(self, epoch: int) -> List[List[int]]:
        sampler = DistributedSampler(
            self.train_set,
            num_replicas=self.context.world_size,
            rank=self.context.rank,
            shuffle=True,
            seed=self.config.seed,
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        indices = list(iter(sampler))
        b = self.config.batch_size
        batches = [indices[i : i + b] for i in range(0, len(indices), b)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches.pop()  # one point has no aggregate encoding to compare with the prior
        return batches

    def _batches(self, batches: List[List[int]]):
        if isinstance(self.train_set, TensorDataset):
            x = self.train_set.tensors[0]
            for idx in batches:
                yield x[torch.as_tensor(idx)]
            return
        if hasattr(self.train_set, "images_at") and self.config.num_workers == 0:
            for idx in batches:  # ground-truth data sets read a whole batch at once
                yield self.train_set.images_at(torch.as_tensor(idx))
            return
        loader = DataLoader(
            self.train_set,
            batch_sampler=batches,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for batch in loader:
            yield _first_tensor(batch)

    # ------------------------------------------------------------------ one step
    def _fork_rng(self):
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    def loss_components(self, x: torch.Tensor) -> Dict[str, float]:
        """Per-data-point loss components of ``elbo`` on the batch ``x`` (averaged over processes), drawn from
        a forked generator so that logging them does not change the training run; {} when unavailable."""
        if not hasattr(self.elbo, "loss_components"):
            return {}
        with self._fork_rng(), torch.no_grad():
            comps = self.elbo.loss_components(
                self.vae.model, self.vae.guide, x, dataset_size=self.dataset_size
            )
        keys = sorted(comps)
        values = torch.tensor([float(comps[k]) for k in keys], dtype=torch.float64)
        if self.context.enabled:
            values = all_reduce_mean(values.to(self.device)).cpu()
        return dict(zip(keys, values.tolist()))

    def step(self, x: torch.Tensor, epoch: int = 0, step: int = 0) -> float:
        """One SVI step on the minibatch ``x``; returns the loss (full-data estimate, mean over processes).

        :raises NonFiniteLossError: the loss is NaN or infinite; the parameters are left unchanged.
        """
        failure = None
        with poutine.trace(param_only=True) as capture:
            try:
                loss = self.elbo.loss_and_grads(
                    self.vae.model, self.vae.guide, x, dataset_size=self.dataset_size
                )
            except ValueError as e:
                # with validation on, NaN network outputs fail as invalid distribution parameters
                if not self._non_finite_failure(e, x):
                    raise
                loss, failure = float("nan"), e
        named = sorted((name, site["value"].unconstrained()) for name, site in capture.trace.nodes.items())
        params = [p for _, p in named]
        stop = self._stop_requested
        if self.context.enabled:
            flags = torch.tensor([float(loss), float(stop)], dtype=torch.float64, device=self.device)
            all_reduce_mean(flags)
            loss, stop = float(flags[0]), bool(flags[1] > 0)
        if not math.isfinite(loss):
            zero_grads(set(params))
            try:
                with pyro.validation_enabled(False):
                    components = self.loss_components(x)
            except (ValueError, RuntimeError):
                components = {}
            cause = "" if failure is None else f" ({str(failure).splitlines()[0]})"
            last = (
                f"the last good checkpoint {self.checkpoint_path} is left in place"
                if self.checkpoint_path is not None and os.path.exists(self.checkpoint_path)
                else "no checkpoint was written after it"
            )
            raise NonFiniteLossError(
                f"non-finite loss {loss} at epoch {epoch}, step {step} "
                f"(global step {self.global_step + 1}){cause}; "
                f"loss components per data point: {_fmt(components) or 'unavailable'}; no parameter was "
                f"updated with it and {last}",
                epoch=epoch,
                step=step,
                components=components,
            )
        average_gradients(params)
        self._in_update = True
        self.optim(params)
        zero_grads(set(params))
        self._in_update = False
        if stop:  # a stop requested on any process stops every process (never clear a pending request)
            self._stop_requested = True
        return float(loss)

    def _non_finite_failure(self, error: ValueError, x: torch.Tensor) -> bool:
        """Whether a ValueError of the loss comes from non-finite numbers (data, parameters or outputs)."""
        if "invalid values" in str(error):
            return True
        if not bool(torch.isfinite(x).all()):
            return True
        return not all(bool(torch.isfinite(p).all()) for p in self.vae.parameters())

    # ------------------------------------------------------------------ the loop
    def _on_sigint(self, signum, frame):
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True

    def _append_metrics(self, record: Dict[str, Any]) -> None:
        if not self.writes_files:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _truncate_metrics(self) -> None:
        """Drop metrics of epochs after the restored position (written after the last checkpoint)."""
        if not self.writes_files or not os.path.exists(self.metrics_path):
            return
        keep = [r for r in read_metrics(self.run_dir) if int(r.get("epoch", 0)) <= self.epoch]
        _atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep).encode())

    def _interrupted(self, epoch: int) -> TrainingInterrupted:
        path = self.save()
        where = f"; checkpoint written to {path}" if path else ""
        return TrainingInterrupted(
            f"training interrupted at epoch {epoch}, after step {self.step_in_epoch}{where}",
            checkpoint=path,
            epoch=epoch,
            step=self.step_in_epoch,
        )

    def fit(self, epochs: Optional[int] = None) -> List[Dict[str, Any]]:
        """Train until ``epochs`` epochs (the run's total, default ``config.epochs``) are done.

        Writes ``config.json`` (with the new total), appends one record per epoch to ``metrics.jsonl`` and
        checkpoints every ``checkpoint_every`` epochs and at the end. On SIGINT the current step finishes, a
        checkpoint is written and :class:`TrainingInterrupted` is raised; a second SIGINT stops at once.

        :returns: the records of the epochs trained by this call.
        """
        epochs = self.config.epochs if epochs is None else epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer (the run's total), got {epochs!r}")
        if epochs < self.epoch:
            raise ValueError(f"epochs={epochs} but the run has already trained {self.epoch} epochs")
        self.config = self.config.replace(epochs=epochs)
        self._stop_requested = False
        pyro.clear_param_store()
        if self.writes_files:
            os.makedirs(self.run_dir, exist_ok=True)
            for name in os.listdir(self.run_dir):  # temporary files of writes cut short by a kill
                if name.startswith("." + CHECKPOINT_NAME + ".") and name.endswith(".tmp"):
                    os.remove(os.path.join(self.run_dir, name))
            self.config.save(os.path.join(self.run_dir, CONFIG_NAME))
            self._truncate_metrics()
        handler = None
        if threading.current_thread() is threading.main_thread():
            handler = signal.signal(signal.SIGINT, self._on_sigint)
        records: List[Dict[str, Any]] = []
        bar = _progress(self.progress, total=epochs, initial=self.epoch, desc="epochs", unit="epoch")
        try:
            for epoch in range(self.epoch + 1, epochs + 1):
                record = self._run_epoch(epoch)
                self.epoch, self.step_in_epoch = epoch, 0
                records.append(record)
                self.history.append(record)
                self._append_metrics(record)
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in _SHOWN})
                bar.update(1)
                if epoch % self.config.checkpoint_every == 0 or epoch == epochs:
                    self.save()
        except _Stop:
            raise self._interrupted(self.epoch + 1) from None
        except KeyboardInterrupt as e:
            if isinstance(e, TrainingInterrupted) or self._in_update:
                raise
            raise self._interrupted(self.epoch + 1) from None
        finally:
            bar.close()
            if handler is not None:
                signal.signal(signal.SIGINT, handler)
        return records

    def _run_epoch(self, epoch: int) -> Dict[str, Any]:
        start = time.perf_counter()
        batches = self._epoch_batches(epoch)
        first = self.step_in_epoch
        if first == 0:
            self._partial = {"loss_sum": 0.0, "steps": 0}
        inner = _progress(
            self.progress and len(batches) > 1,
            total=len(batches),
            initial=first,
            desc=f"epoch {epoch}",
            unit="step",
            leave=False,
        )
        x = None
        try:
            for step, x in enumerate(self._batches(batches[first:]), first + 1):
                x = x.to(self.device, non_blocking=True)
                loss = self.step(x, epoch, step) / self.dataset_size
                self.step_in_epoch = step
                self.global_step += 1
                self._partial["loss_sum"] += loss
                self._partial["steps"] += 1
                inner.set_postfix(loss=f"{loss:.4g}")
                inner.update(1)
                if self._stop_requested:
                    raise _Stop
        finally:
            inner.close()
        record: Dict[str, Any] = {
            "epoch": epoch,
            "global_step": self.global_step,
            "loss": self._partial["loss_sum"] / max(self._partial["steps"], 1),
        }
        if x is not None:
            for key, value in self.loss_components(x).items():
                record["last_batch_" + key if key == "loss" else key] = value
        record["seconds"] = time.perf_counter() - start
        return record


_SHOWN = ("loss", "reconstruction", "kl", "divergence")


class _Stop(Exception):
    pass


class _NoBar:
    def set_postfix(self, *args, **kwargs):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(enabled: bool, **kwargs):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(dynamic_ncols=True, **kwargs)


# ---------------------------------------------------------------------------------------------- runs
def _prepare(config: RunConfig, device, context: Optional[DistributedContext]):
    cfg = config.resolved()
    dev = resolve_device(cfg.device) if device is None else torch.device(device)
    own_context = context is None
    if own_context:
        context = init_distributed(dev)
    if context.world_size > 1 and dev.type == "cuda":
        dev = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(dev)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    pyro.set_rng_seed(cfg.seed)
    vae, elbo, train_set, test_set = build(cfg)
    vae = vae.to(dev)
    broadcast_module(vae)
    if context.rank > 0:
        pyro.set_rng_seed(cfg.seed + 7919 * context.rank)
    return cfg, dev, context, own_context, vae, elbo, train_set, test_set


def train(
    config: RunConfig,
    run_dir: Optional[str] = None,
    *,
    device=None,
    progress: bool = True,
    context: Optional[DistributedContext] = None,
) -> Trainer:
    """Seed, build and train a fresh run; returns the finished :class:`Trainer`.

    Under torchrun (``WORLD_SIZE`` > 1 in the environment) the process joins the group and trains its shard.
    """
    cfg, dev, context, own, vae, elbo, train_set, test_set = _prepare(config, device, context)
    try:
        trainer = Trainer(vae, elbo, train_set, cfg, run_dir, device=dev, context=context, progress=progress)
        trainer.test_set = test_set
        trainer.fit()
        return trainer
    finally:
        if own:
            shutdown(context)


def resume(
    run_dir: str,
    epochs: Optional[int] = None,
    *,
    device=None,
    progress: bool = True,
    context: Optional[DistributedContext] = None,
) -> Trainer:
    """Continue the run in ``run_dir`` with its own ``config.json`` from its checkpoint up to ``epochs``
    epochs in total (default: the run's configured total)."""
    config = RunConfig.load(run_dir)
    if device is not None:
        config = config.replace(device=str(device))
    cfg, dev, context, own, vae, elbo, train_set, test_set = _prepare(config, None, context)
    try:
        trainer = Trainer(vae, elbo, train_set, cfg, run_dir, device=dev, context=context, progress=progress)
        trainer.test_set = test_set
        trainer.restore()
        trainer.fit(epochs)
        return trainer
    finally:
        if own:
            shutdown(context)


def load_run(run_dir: str, device="cpu"):
    """Rebuild a run from ``RUN_DIR/config.json`` and ``RUN_DIR/checkpoint.pt``.

    :returns: ``(config, vae, elbo, train_set, test_set, checkpoint)`` with the trained weights loaded and the
        model in eval mode.
    """
    config = RunConfig.load(run_dir).resolved()
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    checkpoint = load_checkpoint(os.path.join(run_dir, CHECKPOINT_NAME), map_location=dev)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    vae, elbo, train_set, test_set = build(config)
    vae.load_state_dict(checkpoint["model"])
    vae.to(dev).eval()
    return config, vae, elbo, train_set, test_set, checkpoint


# ---------------------------------------------------------------------------------------------- evaluation
EVALUATION_NAME = "evaluation.json"
FIGURES_DIR = "figures"


def _subset(dataset: Dataset, max_points: Optional[int], generator: torch.Generator):
    """``(index, x, y)`` of at most ``max_points`` points of ``dataset`` (a seeded random subset, in order);
    y is the second item entry (labels or factor indices) or None."""
    n = len(dataset)
    if max_points is None or n <= max_points:
        index = torch.arange(n)
    else:
        index = torch.randperm(n, generator=generator)[:max_points].sort().values
    if isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
        return index, tensors[0][index], tensors[1][index] if len(tensors) > 1 else None
    if hasattr(dataset, "images_at") and hasattr(dataset, "factors_from_index"):
        return index, dataset.images_at(index), dataset.factors_from_index(index)
    items = [dataset[int(i)] for i in index]
    x = torch.stack([_first_tensor(it) for it in items])
    y = None
    if isinstance(items[0], (tuple, list)) and len(items[0]) > 1:
        y = torch.stack([torch.as_tensor(it[1]) for it in items])
    return index, x, y


@torch.no_grad()
def _encode_means(vae, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    device = next(vae.parameters()).device
    return torch.cat(
        [vae.encoder(x[i : i + batch_size].to(device))[0].cpu() for i in range(0, len(x), batch_size)]
    )


@torch.no_grad()
def _encode_samples(vae, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    device = next(vae.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        out.append(vae.encoder_distribution(x[i : i + batch_size].to(device)).sample().cpu())
    return torch.cat(out)


def _labels(dataset: Dataset, y: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Classes for the latent-magnitude figure: pinwheel arms, Fashion-MNIST classes, the shape factor."""
    if y is None:
        return None
    if y.dim() == 1:
        return y.long()
    names = getattr(dataset, "factor_names", None)
    if names is not None and "shape" in names:
        return y[:, list(names).index("shape")].long()
    return None


def write_figures(
    vae,
    config: RunConfig,
    dataset: Dataset,
    directory: str,
    *,
    metrics_path: Optional[str] = None,
    kinds: Optional[Tuple[str, ...]] = None,
    max_points: int = 2000,
    seed: int = 0,
) -> Dict[str, str]:
    """Draw the figures that fit the run's data into ``directory``; returns ``{name: path}``.

    ``training_curves`` (from ``metrics.jsonl``), ``aggregate_posterior`` (q(z), one draw per point, against
    p(z)), ``reconstructions``, ``samples``, ``traversals`` (images only) and ``latent_magnitude`` (labelled
    data: mean |z_d| per class). ``kinds`` selects some of them (default: all that apply). The model is
    moved to the CPU. Needs :mod:`pyro_decomp.plots` (matplotlib).
    """
    from pyro_decomp import plots

    os.makedirs(directory, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    _, x, y = _subset(dataset, max_points, gen)
    images = x.dim() == 4
    wanted = set(kinds) if kinds is not None else None

    def want(name):
        return wanted is None or name in wanted

    out: Dict[str, str] = {}

    def path(name):
        return os.path.join(directory, name + ".png")

    def shown(t):
        return t.clamp(0, 1) if images else t

    was_training = vae.training
    vae.cpu().eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if want("training_curves") and metrics_path and os.path.exists(metrics_path):
                records = read_metrics(os.path.dirname(metrics_path))
                keys = [k for k in _SHOWN if records and k in records[-1]]
                if keys:
                    out["training_curves"] = plots.plot_training_curves(
                        records, path("training_curves"), keys=keys
                    )
            if want("aggregate_posterior"):
                out["aggregate_posterior"] = plots.plot_aggregate_posterior(
                    _encode_samples(vae, x),
                    vae.prior_distribution(),
                    path("aggregate_posterior"),
                    generator=torch.Generator().manual_seed(seed),
                )
            xs = x[: 16 if images else 400]
            if want("reconstructions"):
                out["reconstructions"] = plots.plot_reconstructions(
                    xs, shown(vae.reconstruct(xs)), path("reconstructions")
                )
            if want("samples"):
                out["samples"] = plots.plot_samples(
                    shown(vae.sample(64 if images else len(xs))), path("samples")
                )
            if want("traversals") and images:
                base = vae.encoder(x[:1])[0][0]
                out["traversals"] = plots.plot_traversals(
                    shown(plots.latent_traversal(vae, base)), path("traversals")
                )
            labels = _labels(dataset, y)
            if want("latent_magnitude") and labels is not None:
                out["latent_magnitude"] = plots.plot_latent_magnitude(
                    _encode_means(vae, x), labels, path("latent_magnitude")
                )
    finally:
        vae.train(was_training)
    return {k: str(v) for k, v in out.items()}


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if torch.is_tensor(value):
        return _finite(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate(
    run_dir: str,
    *,
    device="cpu",
    max_points: int = 1000,
    iwae_samples: int = 100,
    factor_points: Optional[int] = None,
    num_votes: int = 20000,
    votes_size: int = 1000,
    seed: int = 0,
    figures: bool = True,
    progress: bool = False,
) -> Dict[str, Any]:
    """Judge a trained run; writes ``RUN_DIR/evaluation.json`` and figures under ``RUN_DIR/figures``.

    On at most ``max_points`` test points (a seeded random subset): the loss components of the run's
    objective per data point (``reconstruction`` = E_q log p(x|z), ``kl``, ``divergence`` D̂, ``loss``), the
    squared reconstruction error of the decoded encoder mean, the IWAE log-likelihood with ``iwae_samples``
    importance samples, the Hoyer sparsity of the encoder means, the overlap diagnostics (I(x; z) and the
    encoder-to-aggregate variance ratio) and the alignment D(q(z), p(z)) with the run's divergence. On
    ground-truth data (shapes, dSprites), also the disentanglement score of Kim & Mnih (``num_votes`` votes
    of ``votes_size`` codes; Student-t codes mapped through the prior's CDF first, as the paper) and MIG, on
    the encoder means of ``factor_points`` points (default all).

    :returns: the dict written to ``evaluation.json`` (non-finite numbers as null).
    """
    from pyro_decomp import metrics

    config, vae, elbo, train_set, test_set, checkpoint = load_run(run_dir, device=device)
    dev = next(vae.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    pyro.set_rng_seed(seed)
    _, x, _ = _subset(test_set, max_points, gen)
    n = len(x)
    result: Dict[str, Any] = {
        "run_dir": os.path.abspath(run_dir),
        "epoch": int(checkpoint["epoch"]),
        "dataset": config.dataset,
        "test_points": n,
    }
    with torch.no_grad():
        sums: Dict[str, float] = {}
        used = 0
        for i in range(0, n, config.batch_size):
            xb = x[i : i + config.batch_size].to(dev)
            if len(xb) < 2:  # a single point has no aggregate encoding
                continue
            comps = elbo.loss_components(vae.model, vae.guide, xb, dataset_size=len(xb))
            for k, v in comps.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(xb)
            used += len(xb)
        result.update({k: v / used for k, v in sums.items()})
        err = [
            (vae.reconstruct(x[i : i + 256].to(dev)).cpu() - x[i : i + 256]).square().flatten(1).sum(1)
            for i in range(0, n, 256)
        ]
        result["reconstruction_squared_error"] = float(torch.cat(err).mean())
        ll = torch.cat(
            [
                metrics.iwae_log_likelihood(
                    vae, x[i : i + 64].to(dev), num_samples=iwae_samples, batch_size=8192
                )
                for i in range(0, n, 64)
            ]
        ).cpu()
        result["iwae_log_likelihood"] = {
            "mean": float(ll.mean()),
            "standard_error": float(ll.std() / math.sqrt(n)) if n > 1 else None,
            "num_samples": iwae_samples,
        }
        codes = _encode_means(vae, x)
        result["hoyer_sparsity"] = metrics.hoyer_sparsity(codes)
        ov = metrics.overlap(vae, x, num_samples=n, generator=torch.Generator().manual_seed(seed))
        result["overlap"] = {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in ov.items()}
        result["alignment"] = {
            "divergence": config.divergence,
            "value": metrics.alignment(
                vae,
                x,
                config.divergence,
                num_samples=n,
                batch_size=config.batch_size,
                generator=torch.Generator().manual_seed(seed),
            ),
        }
        if hasattr(test_set, "factors_from_index"):
            index, xf, factors = _subset(test_set, factor_points, torch.Generator().manual_seed(seed))
            fcodes = _encode_means(vae, xf)
            transform = None
            if config.prior == "student-t":
                transform = metrics.prior_cdf_transform(vae.prior_distribution())
            result["disentanglement"] = metrics.disentanglement_score(
                fcodes,
                factors,
                num_votes=num_votes,
                votes_size=votes_size,
                generator=torch.Generator().manual_seed(seed),
                transform=transform,
            )
            result["mig"] = metrics.mig(fcodes, factors)
            result["factor_points"] = len(index)
    if figures:
        result["figures"] = write_figures(
            vae,
            config,
            test_set,
            os.path.join(run_dir, FIGURES_DIR),
            metrics_path=os.path.join(run_dir, METRICS_NAME),
            max_points=max_points,
            seed=seed,
        )
    result = _finite(result)
    _atomic_write_bytes(
        os.path.join(run_dir, EVALUATION_NAME), (json.dumps(result, indent=2) + "\n").encode()
    )
    return result
