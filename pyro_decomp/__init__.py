"""pyro_decomp: decomposition VAEs in Pyro (Mathieu, Rainforth, Siddharth & Teh, ICML 2019).

A VAE decomposes well when the encodings of different points *overlap* by the right amount (β) and the
aggregate encoding q(z) *aligns* with the structure of the prior p(z) (α).
"""

from pyro_decomp.build import build
from pyro_decomp.config import RunConfig
from pyro_decomp.data import DSprites, Shapes, fashion_mnist, pinwheel
from pyro_decomp.distributions import IndependentSubspaces, SpikeAndSlab, gaussian_mixture
from pyro_decomp.divergences import (
    DIVERGENCES,
    MMD,
    ExclusiveKL,
    IMQKernel,
    InclusiveKL,
    RBFKernel,
    build_divergence,
)
from pyro_decomp.elbo import DecompositionELBO
from pyro_decomp.evaluation import evaluate, load_run
from pyro_decomp.metrics import (
    adjusted_rand_index,
    alignment,
    disentanglement_score,
    hoyer_sparsity,
    iwae_log_likelihood,
    mig,
    overlap,
)
from pyro_decomp.priors import PRIORS, build_prior, pinwheel_mixture
from pyro_decomp.runs import Run
from pyro_decomp.training import Trainer, resume, train
from pyro_decomp.vae import DecompVAE
from pyro_decomp.version import __version__

__all__ = [
    "__version__",
    "DecompVAE",
    "DecompositionELBO",
    "DIVERGENCES",
    "MMD",
    "IMQKernel",
    "RBFKernel",
    "InclusiveKL",
    "ExclusiveKL",
    "build_divergence",
    "RunConfig",
    "Run",
    "load_run",
    "Trainer",
    "build",
    "train",
    "resume",
    "evaluate",
    "PRIORS",
    "build_prior",
    "pinwheel_mixture",
    "IndependentSubspaces",
    "SpikeAndSlab",
    "gaussian_mixture",
    "pinwheel",
    "Shapes",
    "DSprites",
    "fashion_mnist",
    "adjusted_rand_index",
    "alignment",
    "disentanglement_score",
    "hoyer_sparsity",
    "iwae_log_likelihood",
    "mig",
    "overlap",
]
