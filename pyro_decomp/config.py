"""Every setting of a training run, with the paper's defaults per data set, validated once.

A :class:`RunConfig` is the single description of a run: the command line's ``train`` flags are generated
from its fields (one flag per field, the field's name with dashes, its help text from the field's metadata),
a config file is its JSON, ``RUN_DIR/config.json`` is the same JSON, and :mod:`pyro_decomp.build` turns it
into the objects of the run. Every check happens in ``__post_init__``: a ``RunConfig`` that exists is valid
and complete, with every setting the data set leaves open filled in from :data:`DATASET_DEFAULTS` (the
paper's settings, Mathieu et al., 2019, §5 and appendix).

One's own data (an array file, an image folder, a ``module:function`` factory or ``"memory"``; see
:mod:`pyro_decomp.data.sources`) take :data:`OWN_DATA_DEFAULTS`; the network, likelihood and latent size
that fit the data are chosen from the data when :func:`pyro_decomp.build.build` first sees them. A preset
applies only to its own data set and only to a field left unset (None); ``presets`` records which fields
were filled and from where, so that a config file of one data set gives another none of its presets
(:meth:`RunConfig.given_settings`). ``data_source`` records where the data came from (path, size,
modification time, SHA-256), so that a reloaded run reads exactly the same data or refuses.

A resumed run keeps its configuration except for :data:`RESUMABLE`, the settings that change how a run is
carried out but not what it computes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from pyro_decomp.data.sources import BUILTIN_DATASETS, source_kind
from pyro_decomp.divergences import DIVERGENCE_NAMES
from pyro_decomp.priors import PRIORS
from pyro_decomp.vae import LIKELIHOODS
from pyro_decomp.version import __version__

__all__ = [
    "DATASETS",
    "DATASET_DEFAULTS",
    "OWN_DATA_DEFAULTS",
    "RECORDS",
    "NETWORKS",
    "NETWORK_OPTIONS",
    "RESUMABLE",
    "RunConfig",
    "check_device_name",
    "check_network_options",
    "resolve_device",
    "setting_kind",
]

DATASETS = BUILTIN_DATASETS  # the built-in data sets; `dataset` may also name one's own data
NETWORKS = ("mlp", "conv", "conv64", "dcgan32")
# keyword arguments each network family takes (see pyro_decomp.build)
NETWORK_OPTIONS = {
    "mlp": ("hidden", "scale"),
    "conv": ("channels", "hidden"),
    "conv64": ("hidden",),
    "dcgan32": ("width",),
}
# fields that a run records rather than a user sets: no command-line flag
RECORDS = ("presets", "data_source")

# Settings a resumed run may change: how the run is carried out (length, checkpoints, hardware), never what
# it computes.
RESUMABLE = ("epochs", "checkpoint_every", "eval_every", "num_threads", "num_workers", "device")

# The paper's settings per data set (Mathieu et al., 2019, §5 and appendix): networks, likelihood, latent size
# and the objective of each experiment. Fields left as None take these values; option dicts are merged under
# the user's keys.
DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "pinwheel": {
        "eval_every": 10,
        "network_options": {"scale": "decoder"},
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
        "eval_every": 0,
        "network_options": {},
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
        "eval_every": 1,
        "network_options": {},
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

# One's own data: a plain VAE objective (β = 1, α = 0) with an isotropic Gaussian prior. network,
# likelihood and latent_dim are chosen from the data by pyro_decomp.build (recorded as presets "data").
OWN_DATA_DEFAULTS: Dict[str, Any] = {
    "eval_every": 1,
    "network_options": {},
    "prior": "gaussian",
    "likelihood_scale": 0.1,
    "beta": 1.0,
    "alpha": 0.0,
    "divergence": "mmd",
    "epochs": 30,
    "batch_size": 64,
    "lr": 1e-3,
    "checkpoint_every": 1,
    "num_threads": None,
}


INT_MAXIMUM = 2**63 - 1  # the largest integer setting (torch's int64)
SEED_MAXIMUM = 2**32 - 1  # NumPy's generators take 32-bit seeds


def _setting(default, help: str, *, choices=None, minimum=None, strict=False, maximum=None, **kwargs):
    """A dataclass field with the metadata that the command line and the validation read."""
    metadata = {"help": help, "choices": choices, "minimum": minimum, "strict": strict, "maximum": maximum}
    if callable(default) and not isinstance(default, (bool, int, float, str)):
        return field(default_factory=default, metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def check_device_name(name) -> str:
    """``name`` if it names a device (``auto``, ``cpu``, ``cuda``, ``cuda:N``); else a ValueError."""
    if isinstance(name, str) and (
        name in ("auto", "cpu", "cuda") or (name[:5] == "cuda:" and name[5:].isdigit())
    ):
        return name
    raise ValueError(f"unknown device {name!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    check_device_name(name)
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


def _is_json(value) -> bool:
    try:
        return json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError):
        return False


@dataclass
class RunConfig:
    """Every setting of a training run. Fields given as None take the data set's :data:`DATASET_DEFAULTS`
    (:data:`OWN_DATA_DEFAULTS` for one's own data, whose network, likelihood and latent size the build
    chooses from the data), so a constructed config is complete; invalid values raise :class:`ValueError`
    naming the field. Two fields are records, not settings, and take no part in ``==``: ``presets`` and
    ``data_source``.

    The objective is the paper's eq. 7 summed over the N training points,
    L = Σ_n (E_q[log p(x_n|z)] − β KL(q(z|x_n) ‖ p(z))) − α N D(q(z), p(z)); each field's metadata
    (``dataclasses.fields(RunConfig)[i].metadata["help"]``) says what it sets.
    """

    dataset: str = _setting(
        "pinwheel",
        f"the data: a built-in data set {DATASETS}, an array file (.npz with x and optional y, factors, "
        "x_test, y_test, factors_test; .npy; .pt), an image folder (flat, or one subfolder per class), a "
        "factory 'package.module:function' returning (train, test) Datasets, or 'memory' (data passed to "
        "train(config, run_dir, data=...))",
    )
    data_root: Optional[str] = _setting(
        None, "directory of the data files (dSprites, Fashion-MNIST, shapes cache)"
    )
    data_options: Dict[str, Any] = _setting(
        dict,
        "keyword arguments of the data set: pinwheel num_classes, num_per_class, radial_std, tangential_std, "
        "rate, seed, test_seed (default seed + 1, the held-out draw); shapes subsample, cache, progress; "
        "dsprites and fashion-mnist download; array files test_fraction (default 0.2), split_seed (default "
        "0); image folders also image_size (H or [H, W]; default the first image's) and mode (L or RGB); a "
        "factory: its keyword arguments",
    )
    prior: Optional[str] = _setting(None, "the prior p(z)", choices=PRIORS)
    prior_options: Dict[str, Any] = _setting(
        dict, "keyword arguments of the prior (variance=iso|pca, learn_variance, df, gamma, scale, ...)"
    )
    beta: Optional[float] = _setting(None, "β, the weight of KL(q(z|x) || p(z)) (overlap)", minimum=0.0)
    alpha: Optional[float] = _setting(None, "α, the weight of N D(q(z), p(z)) (alignment)", minimum=0.0)
    divergence: Optional[str] = _setting(None, "the estimator of D(q(z), p(z))", choices=DIVERGENCE_NAMES)
    global_divergence: bool = _setting(
        False, "under torchrun, estimate D on the encoder samples of all processes"
    )
    latent_dim: Optional[int] = _setting(None, "latent size D", minimum=0, strict=True)
    network: Optional[str] = _setting(None, "encoder/decoder family", choices=NETWORKS)
    network_options: Optional[Dict[str, Any]] = _setting(
        None,
        "keyword arguments of the networks: mlp hidden (list of sizes) and scale (decoder: the decoder "
        "predicts the likelihood's scale per point; global: one learnt scale); conv channels (list) and "
        "hidden; conv64 hidden; dcgan32 width",
    )
    likelihood: Optional[str] = _setting(None, "p(x|z)", choices=LIKELIHOODS)
    likelihood_scale: Optional[float] = _setting(
        None,
        "the Laplace scale, or the initial value of a learnt global Normal scale",
        minimum=0.0,
        strict=True,
    )
    analytic_kl: bool = _setting(True, "use the closed-form KL(q(z|x) || p(z)) when one is registered")
    num_particles: int = _setting(
        1, "samples of z per data point (vectorised when > 1)", minimum=0, strict=True
    )
    epochs: Optional[int] = _setting(None, "total epochs of the run (also on resume)", minimum=0, strict=True)
    batch_size: Optional[int] = _setting(None, "minibatch size B per process", minimum=1, strict=True)
    lr: Optional[float] = _setting(None, "Adam (amsgrad) learning rate", minimum=0.0, strict=True)
    seed: int = _setting(
        0,
        "seeds the initialisation, the sampling and the data order of every epoch",
        minimum=0,
        maximum=SEED_MAXIMUM,
    )
    device: str = _setting("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    checkpoint_every: Optional[int] = _setting(None, "epochs between checkpoints", minimum=0, strict=True)
    eval_every: Optional[int] = _setting(
        None,
        "epochs between held-out loss components in metrics.jsonl (0: never); best.pt keeps the checkpoint "
        "of the lowest held-out loss. Data sets without a test split (shapes, dsprites) have none",
        minimum=0,
    )
    num_workers: int = _setting(0, "DataLoader worker processes for image data sets", minimum=0)
    num_threads: Optional[int] = _setting(
        None,
        "torch CPU threads (None: torch's default); small models such as pinwheel's train fastest on one, "
        "and bitwise reproducibility needs the same number",
        minimum=0,
        strict=True,
    )
    presets: Optional[Dict[str, Any]] = _setting(
        None,
        "recorded: the fields filled from defaults, and from where (the data set's name, or 'data' for a "
        "choice made from the data's shape and range)",
        compare=False,
    )
    data_source: Optional[Dict[str, Any]] = _setting(
        None,
        "recorded: where the data came from (kind; for a file or folder path, size, mtime and sha256)",
        compare=False,
    )

    def __post_init__(self):
        if not isinstance(self.dataset, str):
            raise ValueError(f"dataset must be a string, got {self.dataset!r}")
        if self.data_source is None or self.data_source.get("kind") not in ("array", "folder"):
            source_kind(self.dataset)  # a recorded file or folder may have vanished: build names it
        presets = dict(self.presets or {})
        defaults = DATASET_DEFAULTS.get(self.dataset, OWN_DATA_DEFAULTS)
        for key, default in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, dict(default) if isinstance(default, dict) else default)
                presets.setdefault(key, self.dataset if self.dataset in DATASETS else "own data")
        self.presets = presets
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind, optional = setting_kind(f)
            if value is None:
                if not optional:
                    raise ValueError(f"{f.name} must be given, got None")
                continue
            if kind is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"{f.name} must be true or false, got {value!r}")
            elif kind in (int, float):
                setattr(self, f.name, _check_number(f.name, value, f.metadata, kind))
            elif kind is dict:
                if not isinstance(value, dict) or not _is_json(value):
                    raise ValueError(
                        f"{f.name} must be a JSON object (a dict of plain values), got {value!r}"
                    )
            elif not isinstance(value, str):
                raise ValueError(f"{f.name} must be a string, got {value!r}")
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ValueError(f"unknown {f.name} {value!r}; expected one of {tuple(choices)}")
        check_device_name(self.device)
        if self.network is not None:  # None: chosen from the data by build, which checks the options then
            check_network_options(self.network, self.network_options)

    def replace(self, **changes) -> RunConfig:
        """A copy with ``changes`` applied (validated like a new config). A change of ``dataset`` starts
        from :meth:`given_settings`: the old data set's presets and its data record do not carry over."""
        if "dataset" in changes and changes["dataset"] != self.dataset:
            return RunConfig(**{**self.given_settings(), **changes})
        return dataclasses.replace(self, **changes)

    def given_settings(self) -> Dict[str, Any]:
        """The settings that were chosen rather than filled in: :meth:`to_dict` without the fields that
        ``presets`` lists and without the records (``presets``, ``data_source``). ``RunConfig(**values)``
        of them with another ``dataset`` takes that data set's presets, none of this one's."""
        values = self.to_dict()
        for key in (*RECORDS, *(self.presets or {})):
            values.pop(key, None)
        return values

    def differences(self, other: RunConfig) -> List[str]:
        """The names of the settings whose values differ between ``self`` and ``other`` (the records
        ``presets`` and ``data_source`` are not settings: a run's data are checked against its record when it
        is built)."""
        return [
            f.name
            for f in dataclasses.fields(self)
            if f.name not in RECORDS and getattr(self, f.name) != getattr(other, f.name)
        ]

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
        return json.dumps({**self.to_dict(), "pyro_decomp_version": __version__}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Parse :meth:`to_json`'s output (or any JSON object of some of the fields)."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON: {e}") from None
        return cls.from_dict(values)


def check_network_options(network: str, options: Dict[str, Any]) -> None:
    """A one-line ValueError for options that ``network`` does not take."""
    allowed = NETWORK_OPTIONS[network]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown network options {unknown} for network {network!r}; expected some of {list(allowed)}"
        )


def setting_kind(f: dataclasses.Field) -> Tuple[type, bool]:
    """``(kind, optional)`` of a :class:`RunConfig` field: kind is bool, int, float, str or dict."""
    hint = f.type if isinstance(f.type, str) else str(f.type)
    optional = hint.startswith("Optional[")
    inner = hint[len("Optional[") : -1] if optional else hint
    kinds = {"bool": bool, "int": int, "float": float, "str": str}
    return (dict if inner.startswith("Dict") else kinds[inner]), optional


def _check_number(name: str, value, meta, kind):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if kind is float and isinstance(value, int) and abs(value) > 1e300:
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # 1e400 in a JSON file reads as inf
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if kind is int and int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    lower, strict = meta.get("minimum"), meta.get("strict")
    if lower is not None and (value <= lower if strict else value < lower):
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {rel} {lower}, got {value!r}")
    upper = meta.get("maximum") or (INT_MAXIMUM if kind is int else None)
    if upper is not None and value > upper:
        raise ValueError(f"{name} must be at most {upper}, got {value!r}")
    return kind(value)
