"""pyro_decomp: decomposition VAEs in Pyro (Mathieu, Rainforth, Siddharth & Teh, ICML 2019).

A VAE decomposes well when the encodings of different points *overlap* by the right amount (β) and the
aggregate encoding q(z) *aligns* with the structure of the prior p(z) (α).
"""

__version__ = "0.1.0"

from pyro_decomp.data import DSprites, Shapes, fashion_mnist, pinwheel  # noqa: E402
from pyro_decomp.distributions import IndependentSubspaces, SpikeAndSlab, gaussian_mixture  # noqa: E402
from pyro_decomp.divergences import (  # noqa: E402
    DIVERGENCES,
    MMD,
    ExclusiveKL,
    IMQKernel,
    InclusiveKL,
    RBFKernel,
    build_divergence,
)
from pyro_decomp.elbo import DecompositionELBO  # noqa: E402
from pyro_decomp.metrics import (  # noqa: E402
    alignment,
    disentanglement_score,
    hoyer_sparsity,
    iwae_log_likelihood,
    mig,
    overlap,
)
from pyro_decomp.priors import PRIORS, build_prior, pinwheel_mixture  # noqa: E402
from pyro_decomp.training import RunConfig, Trainer, build, evaluate, resume, train  # noqa: E402
from pyro_decomp.vae import DecompVAE  # noqa: E402

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
    "alignment",
    "disentanglement_score",
    "hoyer_sparsity",
    "iwae_log_likelihood",
    "mig",
    "overlap",
]
