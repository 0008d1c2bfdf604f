"""Metrics that judge a decomposition, and the paper's two decomposition diagnostics.

One module per family, one public namespace:

* vote and classifier scores (:mod:`~pyro_decomp.metrics.votes`): :func:`disentanglement_score` -- Kim &
  Mnih (2018), as Mathieu et al. (2019) evaluate it; :func:`beta_vae_score` -- Higgins et al. (2017);
* information (:mod:`~pyro_decomp.metrics.information`): :func:`mig` -- the mutual information gap of Chen
  et al. (2018); :func:`modularity` -- Ridgeway & Mozer (2018);
* predictors (:mod:`~pyro_decomp.metrics.predictors`): :func:`dci` -- Eastwood & Williams (2018); :func:`sap`
  -- Kumar et al. (2018); :func:`explicitness` and :func:`modularity_explicitness` -- Ridgeway & Mozer
  (2018);
* sparsity (:mod:`~pyro_decomp.metrics.sparsity`): :func:`hoyer_sparsity` -- the normalised Hoyer measure of
  the paper's sparsity experiment;
* likelihood (:mod:`~pyro_decomp.metrics.likelihood`): :func:`iwae_log_likelihood` -- the importance-weighted
  bound on log p(x) (Burda et al., 2016);
* clustering (:mod:`~pyro_decomp.metrics.clustering`): :func:`adjusted_rand_index` -- agreement of two
  partitions (Hubert & Arabie, 1985);
* the two factors of a decomposition, §3 (:mod:`~pyro_decomp.metrics.decomposition`): :func:`overlap` of the
  encodings q(z|x) of different points, and :func:`alignment` of q(z) with p(z).

The metrics that disentanglement_lib (Locatello et al., 2019) standardised -- MIG, DCI, SAP, modularity and
explicitness, the β-VAE score -- compute what it computes, with its defaults; the ones that fit models use
scikit-learn (``pip install "pyro-decomp[metrics]"``).

:func:`prior_cdf_transform` (from :mod:`pyro_decomp.marginals`) maps codes through a prior's marginal CDFs and
the standard normal quantile, which the paper does before scoring codes learnt with a Student-t prior.
"""

from pyro_decomp.marginals import prior_cdf_transform, student_t_cdf
from pyro_decomp.metrics.clustering import adjusted_rand_index
from pyro_decomp.metrics.decomposition import alignment, overlap
from pyro_decomp.metrics.information import mig, modularity, modularity_from_mutual_information
from pyro_decomp.metrics.likelihood import iwae_log_likelihood
from pyro_decomp.metrics.predictors import (
    dci,
    dci_from_importance,
    explicitness,
    modularity_explicitness,
    sap,
)
from pyro_decomp.metrics.sparsity import hoyer_sparsity
from pyro_decomp.metrics.votes import beta_vae_score, disentanglement_score

__all__ = [
    "adjusted_rand_index",
    "alignment",
    "beta_vae_score",
    "dci",
    "dci_from_importance",
    "disentanglement_score",
    "explicitness",
    "hoyer_sparsity",
    "iwae_log_likelihood",
    "mig",
    "modularity",
    "modularity_explicitness",
    "modularity_from_mutual_information",
    "overlap",
    "prior_cdf_transform",
    "sap",
    "student_t_cdf",
]
