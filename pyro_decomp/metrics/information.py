"""Information-based disentanglement metrics: the mutual information between (discretised) codes and factors.

* :func:`mig` -- the mutual information gap of Chen et al. (2018);
* :func:`modularity` -- the modularity of Ridgeway & Mozer (2018), as disentanglement_lib computes it, and
  :func:`modularity_from_mutual_information`, its formula on a given (codes x factors) information table.
"""

from __future__ import annotations

import numpy as np
import torch

from pyro_decomp.metrics._common import _check_pair, _check_positive_int, _factor_indices, _sklearn

__all__ = ["mig", "modularity", "modularity_from_mutual_information"]


def _discretise(codes: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bins between each column's min and max: bin index floor(bins (z - min) / (max - min))."""
    lo = codes.min(0).values
    width = codes.max(0).values - lo
    width = torch.where(width > 0, width, torch.ones_like(width))
    return ((codes - lo) / width * bins).floor().long().clamp_(0, bins - 1)


def mig(codes, factors, bins: int = 20, return_mutual_information: bool = False):
    """The mutual information gap of Chen et al. (2018).

    Each code dimension is discretised into ``bins`` equal-width bins over its range; with the empirical
    joint distribution of (bin of z_d, value of v_k) over the N points,

        I(z_d; v_k) = Σ p(b, v) log[p(b, v) / (p(b) p(v))],   H(v_k) = -Σ p(v) log p(v)   (nats),

    and MIG = (1/K') Σ_k [I(z_{(1)}; v_k) - I(z_{(2)}; v_k)] / H(v_k), the gap between the two most
    informative dimensions for factor k, averaged over the K' factors that take more than one value. It is 1
    when each factor is a function of one dimension alone (with a discretisation that separates its values)
    and the other dimensions carry nothing about it.

    :param codes: ``(N, D)``, D >= 2.
    :param factors: ``(N, K)`` factor values or indices.
    :param bins: number of bins per code dimension.
    :param return_mutual_information: also return the ``(D, K)`` table of I(z_d; v_k) (nats).
    :returns: the MIG as a float, or ``(mig, mi)``.
    """
    codes, factors = _check_pair(codes, factors)
    bins = _check_positive_int("bins", bins)
    n, dim = codes.shape
    if dim < 2:
        raise ValueError(f"MIG needs at least 2 code dimensions, got codes of shape {tuple(codes.shape)}")
    indices, num_values = _factor_indices(factors.to(codes.device))
    binned = _discretise(codes.double(), bins)  # (N, D)
    total = int(num_values.sum())
    offset = torch.cumsum(num_values, 0) - num_values
    column = indices + offset  # (N, K): each factor's values in one shared axis of size `total`
    per_column = torch.zeros(dim, total, dtype=torch.float64, device=codes.device)
    p_val = torch.bincount(column.reshape(-1), minlength=total).double() / n  # (total,)
    for d in range(dim):
        flat = binned[:, d : d + 1] * total + column  # (N, K): cell (bin, value) of every factor
        joint = torch.bincount(flat.reshape(-1), minlength=bins * total).view(bins, total).double() / n
        p_bin = joint.sum(-1, keepdim=True) / factors.shape[1]  # each factor's values sum to p(bin)
        seen = joint > 0
        log_ratio = torch.where(seen, joint, 1.0).log() - torch.where(seen, p_bin * p_val, 1.0).log()
        per_column[d] = (joint * log_ratio).sum(0)
    factor_of_column = torch.repeat_interleave(
        torch.arange(factors.shape[1], device=codes.device), num_values
    )
    mi = torch.zeros(dim, factors.shape[1], dtype=torch.float64, device=codes.device)
    mi.index_add_(1, factor_of_column, per_column)
    entropy = torch.zeros(factors.shape[1], dtype=torch.float64, device=codes.device)
    entropy.index_add_(0, factor_of_column, -torch.xlogy(p_val, p_val))
    keep = num_values > 1
    if not bool(keep.any()):
        raise ValueError("MIG needs at least one factor that takes more than one value")
    top = mi.topk(2, dim=0).values  # (2, K)
    gaps = (top[0] - top[1])[keep] / entropy[keep]
    value = float(gaps.mean())
    return (value, mi) if return_mutual_information else value


# ---------------------------------------------------------------------------------------------- modularity
def _histogram_discretise(codes: np.ndarray, bins: int) -> np.ndarray:
    """disentanglement_lib's histogram discretisation: column by column, the index of the ``np.histogram``
    bin (``bins`` equal-width bins over the column's range) of each value, ``np.digitize(z, edges[:-1])``,
    so 1..bins (the column's maximum falls in the last bin)."""
    out = np.empty(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram(codes[:, d], bins)[1]
        out[:, d] = np.digitize(codes[:, d], edges[:-1])
    return out


def _discrete_mutual_information(binned: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(D, K)`` table of scikit-learn's ``mutual_info_score(labels[:, k], binned[:, d])`` (nats)."""
    metrics = _sklearn().metrics
    table = np.zeros((binned.shape[1], labels.shape[1]))
    for d in range(binned.shape[1]):
        for k in range(labels.shape[1]):
            table[d, k] = metrics.mutual_info_score(labels[:, k], binned[:, d])
    return table


def modularity_from_mutual_information(mutual_information) -> float:
    r"""Modularity (Ridgeway & Mozer, 2018, §3) of a ``(D, K)`` table m of I(z_i; v_j).

    Per code i, with θ_i = max_j m_ij²,

    .. math::

        δ_i = \frac{\sum_j m_{ij}^2 - θ_i}{θ_i (K - 1)}, \qquad \mathrm{modularity}_i = 1 - δ_i,

    and 0 for a code with θ_i = 0 (it carries nothing); the score is the mean over the D codes. A code that
    informs about one factor only scores 1; one informing equally about all K scores 0. With K = 1 every
    informative code scores 1 (δ_i = 0). disentanglement_lib's ``modularity``.

    :returns: the score as a float.
    """
    m = torch.as_tensor(mutual_information, dtype=torch.float64)
    if m.dim() != 2 or m.numel() == 0:
        raise ValueError(f"mutual_information must be a non-empty (D, K) table, got shape {tuple(m.shape)}")
    squared = m.square()
    top = squared.max(1).values
    rest = squared.sum(1) - top
    k = m.shape[1]
    delta = rest / torch.where(top > 0, top, torch.ones_like(top)) / max(k - 1, 1)
    per_code = torch.where(top > 0, 1.0 - delta, torch.zeros_like(delta))
    return float(per_code.mean())


def modularity(codes, factors, bins: int = 20, return_mutual_information: bool = False):
    """The modularity of Ridgeway & Mozer (2018), computed as disentanglement_lib's
    ``compute_modularity_explicitness`` does on its training points.

    Each code dimension is discretised into ``bins`` equal-width histogram bins over its range
    (``np.histogram`` edges, ``np.digitize`` against all but the last), the mutual information I(z_i; v_j)
    of each binned code with each factor is scikit-learn's ``mutual_info_score`` (nats), and the score is
    :func:`modularity_from_mutual_information` of that table.

    :param codes: ``(N, D)`` representations (disentanglement_lib: 10,000 training points).
    :param factors: ``(N, K)`` factor values or indices.
    :param bins: histogram bins per code dimension (disentanglement_lib: 20).
    :param return_mutual_information: also return the ``(D, K)`` table (float64 tensor).
    :returns: the score, or ``(score, table)``.
    """
    codes, factors = _check_pair(codes, factors)
    bins = _check_positive_int("bins", bins)
    if not torch.isfinite(codes).all():
        raise ValueError("codes contain NaN or infinite values")
    labels = _factor_indices(factors)[0].cpu().numpy()
    binned = _histogram_discretise(codes.detach().cpu().double().numpy(), bins)
    table = torch.from_numpy(_discrete_mutual_information(binned, labels))
    score = modularity_from_mutual_information(table)
    return (score, table) if return_mutual_information else score
