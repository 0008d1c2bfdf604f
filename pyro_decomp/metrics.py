"""Metrics that judge a decomposition, and the paper's two decomposition diagnostics.

Disentanglement and sparsity (what the paper reports, Mathieu et al., 2019, §5):

* :func:`disentanglement_score` -- Kim & Mnih (2018), as evaluated in the paper;
* :func:`mig` -- the mutual information gap of Chen et al. (2018);
* :func:`hoyer_sparsity` -- the normalised Hoyer measure of the paper's sparsity experiment;
* :func:`iwae_log_likelihood` -- the importance-weighted bound on log p(x) (Burda et al., 2016);
* :func:`adjusted_rand_index` -- agreement of two partitions (the clustering experiment's clusters vs arms).

The two factors of a decomposition (§3):

* :func:`overlap` -- how much the encodings q(z|x) of different points overlap: an estimate of the mutual
  information I(x; z) under the aggregate encoding, and the share of the aggregate variance that is encoder
  noise;
* :func:`alignment` -- a held-out estimate of D(q(z), p(z)) with any divergence estimator of
  :mod:`pyro_decomp.divergences`.

:func:`prior_cdf_transform` (from :mod:`pyro_decomp.marginals`) maps codes through a prior's marginal CDFs and
the standard normal quantile, which the paper does before scoring codes learnt with a Student-t prior.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple, Union

import pyro.distributions as dist
import torch

from pyro_decomp.data.indexing import first_tensor, take
from pyro_decomp.divergences import build_divergence
from pyro_decomp.marginals import prior_cdf_transform, student_t_cdf
from pyro_decomp.util import module_device, seeded

__all__ = [
    "adjusted_rand_index",
    "alignment",
    "disentanglement_score",
    "hoyer_sparsity",
    "iwae_log_likelihood",
    "mig",
    "overlap",
    "prior_cdf_transform",
    "student_t_cdf",
]


# ---------------------------------------------------------------------------------------------- helpers
def _as_matrix(value, name: str, columns: str) -> torch.Tensor:
    value = torch.as_tensor(value)
    if value.dim() != 2 or value.shape[0] < 1 or value.shape[1] < 1:
        raise ValueError(
            f"{name} must be a non-empty 2-D tensor (N, {columns}), got shape {tuple(value.shape)}"
        )
    return value


def _check_pair(codes, factors) -> Tuple[torch.Tensor, torch.Tensor]:
    codes = _as_matrix(codes, "codes", "D")
    factors = _as_matrix(factors, "factors", "K")
    if codes.shape[0] != factors.shape[0]:
        raise ValueError(
            "codes and factors must have the same number of rows, got "
            f"{codes.shape[0]} and {factors.shape[0]}"
        )
    if not codes.is_floating_point():
        codes = codes.double()
    return codes, factors


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _factor_indices(factors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Map every column of ``factors`` (N, K) to value indices 0..n_k-1 (sorted by value).

    :returns: ``(indices (N, K) int64, num_values (K,) int64)``.
    """
    n = factors.shape[0]
    columns, sizes = [], []
    for k in range(factors.shape[1]):
        column = factors[:, k]
        if not column.is_floating_point() and not column.is_complex() and column.dtype != torch.bool:
            column = column.long()
            lo = column.min()
            if int(column.max() - lo) < 4 * n:
                # small integer range: a look-up table from value to rank, no sort needed
                present = torch.bincount(column - lo) > 0
                rank = torch.cumsum(present, 0) - 1
                columns.append(rank[column - lo])
                sizes.append(int(present.sum()))
                continue
        values, inverse = torch.unique(column, sorted=True, return_inverse=True)
        columns.append(inverse)
        sizes.append(values.numel())
    return torch.stack(columns, dim=-1), torch.tensor(sizes, dtype=torch.long, device=factors.device)


def _uniform_below(high: torch.Tensor, shape, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Integers uniform on ``{0, ..., high-1}`` (elementwise ``high``, broadcast to ``shape``).

    A 62-bit random integer modulo ``high``: the modulo bias is below ``high / 2**62``.
    """
    draws = torch.randint(0, 2**62, shape, generator=generator, dtype=torch.long, device=high.device)
    return draws.remainder_(high)


# ---------------------------------------------------------------------------------------------- Kim & Mnih
def _value_groups(column: torch.Tensor, num_values: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The points sorted (stably) by one factor's value index, and each value's offset and size there.

    The points whose factor takes its v-th value are ``order[start[v] : start[v] + size[v]]``, in increasing
    data order.
    """
    order = torch.argsort(column.to(torch.int32), stable=True)  # int32 keys sort several times faster
    size = torch.bincount(column, minlength=num_values)
    start = torch.cumsum(size, 0) - size
    return order, start, size


def disentanglement_score(
    codes,
    factors,
    num_votes: int = 20000,
    votes_size: int = 1000,
    prune_threshold: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    chunk_size: int = 64,
    return_votes: bool = False,
) -> Union[float, Tuple[float, torch.Tensor]]:
    """The disentanglement metric of Kim & Mnih (2018), as Mathieu et al. (2019) evaluate it.

    Each code dimension is divided by its standard deviation over the data set, s_d. One *vote*:

    1. draws a factor k uniformly from the K factors, then one of the values it takes (uniformly among the
       values present in ``factors``);
    2. draws ``votes_size`` points uniformly with replacement among those whose factor k has that value;
    3. votes for d* = argmin_d Var(z_d / s_d) over those points (the first minimiser on ties).

    With V[d, k] the number of votes for dimension d when factor k was fixed, the score is the training
    accuracy of the majority-vote classifier d -> argmax_k V[d, k]: Σ_d max_k V[d, k] / num_votes. It lies
    in [1/K, 1] when some dimension is active. Dimensions with s_d = 0, or s_d < ``prune_threshold``, are
    pruned (never voted for); with no active dimension the score is 0.

    Votes are vectorised: factor by factor, the codes are sorted by the factor's value once, so a vote's
    codes are one gather from a contiguous block; ``chunk_size`` votes are processed at a time (extra memory:
    two float32 copies of the codes plus chunk_size * votes_size * D floats).
    Random numbers are drawn from ``generator`` in this order: the factors of all votes
    (``randint(K, (num_votes,))``), their value indices (62-bit integers modulo the number of values), then,
    factor by factor, value by value and in vote order within each value, each vote's ``votes_size``
    positions within its value group (62-bit integers modulo the group size; position i is the i-th point of
    the group in data order).
    The result does not depend on ``chunk_size``.

    :param codes: ``(N, D)`` representations, e.g. the encoder means of every point of a factor grid.
    :param factors: ``(N, K)`` ground-truth factor values or indices of the same points.
    :param num_votes: number of votes (the paper: 20000 votes ...).
    :param votes_size: ... of 1000 codes each (at least 2).
    :param prune_threshold: prune dimensions whose standard deviation is below it.
    :param generator: a ``torch.Generator`` for the votes.
    :param transform: applied to ``codes`` first, e.g. :func:`prior_cdf_transform` of the prior.
    :param chunk_size: votes per chunk.
    :param return_votes: also return the vote matrix ``V`` (D, K), int64.
    :returns: the score, or ``(score, V)``.
    """
    if transform is not None:
        codes = transform(torch.as_tensor(codes))
    codes, factors = _check_pair(codes, factors)
    num_votes = _check_positive_int("num_votes", num_votes)
    votes_size = _check_positive_int("votes_size", votes_size, minimum=2)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    if prune_threshold is not None and not prune_threshold >= 0:
        raise ValueError(f"prune_threshold must be a number >= 0 or None, got {prune_threshold!r}")
    device = codes.device
    factors = factors.to(device)
    n, dim = codes.shape
    num_factors = factors.shape[1]
    if not torch.isfinite(codes).all():
        raise ValueError("codes contain NaN or infinite values")

    # centre (float64 mean) and scale once, then gather in float32: values are O(1), so a vote's float32
    # variances keep ~7 significant digits whatever the codes' offset
    mean = codes.mean(0, dtype=torch.float64)
    normed = (codes.double() - mean).float() if codes.dtype == torch.float64 else codes.float() - mean.float()
    std = normed.square().mean(0, dtype=torch.float64).sqrt()
    active = std > 0
    if prune_threshold is not None:
        active &= std >= prune_threshold
    votes = torch.zeros(dim, num_factors, dtype=torch.long, device=device)
    if not bool(active.any()):
        return (0.0, votes) if return_votes else 0.0
    normed /= torch.where(active, std, torch.ones_like(std)).float()
    inactive = ~active

    indices, num_values = _factor_indices(factors)
    vote_factor = torch.randint(0, num_factors, (num_votes,), generator=generator, device=device)
    vote_value = _uniform_below(num_values[vote_factor], (num_votes,), generator)
    for k in range(num_factors):
        mine = torch.nonzero(vote_factor == k).flatten()
        if mine.numel() == 0:
            continue
        # value by value: consecutive votes then gather from the same block, which stays in cache
        mine = mine[torch.argsort(vote_value[mine], stable=True)]
        order, start, size = _value_groups(indices[:, k], int(num_values[k]))
        # the codes in factor k's value order: a vote's points lie in one contiguous block of it, so its
        # gathers stay local and need no second indirection
        table = normed.index_select(0, order)
        index_dtype = torch.int32 if n < 2**31 else torch.long  # int32 indices gather about twice as fast
        for chunk in mine.split(chunk_size):
            value = vote_value[chunk].unsqueeze(-1)
            pos = _uniform_below(size[value], (chunk.numel(), votes_size), generator).add_(start[value])
            z = table.index_select(0, pos.view(-1).to(index_dtype)).view(chunk.numel(), votes_size, dim)
            var = z.sub_(z.mean(1, keepdim=True)).square_().sum(1)  # votes_size x the variance: same argmin
            var.masked_fill_(inactive, float("inf"))
            votes[:, k] += torch.bincount(var.argmin(-1), minlength=dim)
    score = float(votes.max(-1).values.sum()) / num_votes
    return (score, votes) if return_votes else score


# ---------------------------------------------------------------------------------------------- MIG
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


# ---------------------------------------------------------------------------------------------- Hoyer
def hoyer_sparsity(codes, normalise: bool = True) -> float:
    """The normalised Hoyer sparsity of the paper's sparse-prior experiment (Mathieu et al., 2019, §5).

    With each dimension divided by its standard deviation over the data set (when ``normalise``),

        Hoyer(z) = (√D - ‖z‖₁ / ‖z‖₂) / (√D - 1) ∈ [0, 1],

    averaged over the points: 1 for a one-hot vector, 0 when all |z_d| are equal. Points with z = 0 have no
    defined value and are left out of the average.

    :param codes: ``(N, D)``, D >= 2.
    :returns: the mean sparsity as a float.
    """
    codes = _as_matrix(codes, "codes", "D")
    if not codes.is_floating_point():
        codes = codes.double()
    n, dim = codes.shape
    if dim < 2:
        raise ValueError(
            f"the Hoyer measure needs D >= 2 dimensions, got codes of shape {tuple(codes.shape)}"
        )
    z = codes.double()
    if normalise:
        std = z.std(0, correction=0)
        if not bool((std > 0).all()):
            bad = torch.nonzero(std <= 0).flatten().tolist()
            raise ValueError(f"dimensions {bad} are constant over the data set: cannot divide by their std")
        z = z / std
    l2 = z.norm(dim=-1)
    defined = l2 > 0
    if not bool(defined.any()):
        raise ValueError("every code is the zero vector: the Hoyer measure is undefined")
    l1 = z.abs().sum(-1)
    root = math.sqrt(dim)
    values = (root - l1[defined] / l2[defined]) / (root - 1)
    return float(values.mean())


# ---------------------------------------------------------------------------------------------- partitions
def adjusted_rand_index(labels_true, labels_pred) -> float:
    r"""The adjusted Rand index (Hubert & Arabie, 1985) between two partitions of the same N points.

    With the contingency table n_{ij} (points in class i of the first partition and cluster j of the second),
    row sums a_i, column sums b_j and C(m) = m(m − 1)/2 the number of pairs among m points,

    .. math::

        \mathrm{ARI} = \frac{\sum_{ij} C(n_{ij}) - E}{\tfrac12 [\sum_i C(a_i) + \sum_j C(b_j)] - E},
        \qquad E = \frac{\sum_i C(a_i) \sum_j C(b_j)}{C(N)},

    the Rand index corrected for chance: 1 for identical partitions (up to relabelling), about 0 for
    independent ones, and negative for less agreement than chance. When both partitions are the trivial one
    (one cluster, or all singletons) the denominator is 0 and the value is 1.

    :param labels_true: integer labels ``(N,)`` (any values; only equality matters).
    :param labels_pred: integer labels ``(N,)``.
    :returns: the index as a float.
    """
    a = torch.as_tensor(labels_true)
    b = torch.as_tensor(labels_pred)
    for name, t in (("labels_true", a), ("labels_pred", b)):
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype.is_complex:
            raise ValueError(f"{name} must be a 1-D integer tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"labels_true and labels_pred must have the same length, got {len(a)} and {len(b)}")
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"the adjusted Rand index needs at least 2 points, got {n}")
    _, ai = torch.unique(a, return_inverse=True)
    _, bi = torch.unique(b, return_inverse=True)
    na, nb = int(ai.max()) + 1, int(bi.max()) + 1
    table = torch.bincount(ai * nb + bi, minlength=na * nb).reshape(na, nb).double()

    def pairs(m: torch.Tensor) -> torch.Tensor:
        return (m * (m - 1) / 2).sum()

    index = pairs(table)
    rows, cols = pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2)
    maximum = (rows + cols) / 2
    if float(maximum - expected) == 0.0:
        return 1.0
    return float((index - expected) / (maximum - expected))


# ---------------------------------------------------------------------------------------------- VAE helpers
class _evaluating:
    """``no_grad`` and eval mode for a module; the previous mode is restored on exit."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __enter__(self):
        self.was_training = self.module.training
        self._grad = torch.no_grad()
        self._grad.__enter__()
        self.module.eval()
        return self.module

    def __exit__(self, *exc):
        self.module.train(self.was_training)
        return self._grad.__exit__(*exc)


def iwae_log_likelihood(
    vae, x: torch.Tensor, num_samples: int = 1000, batch_size: Optional[int] = None
) -> torch.Tensor:
    """The importance-weighted estimate of log p(x) (Burda et al., 2016), per data point.

        log p̂(x) = logsumexp_s [log p(x|z_s) + log p(z_s) - log q(z_s|x)] - log S,   z_s ~ q(z|x),

    a stochastic lower bound, E[log p̂(x)] <= log p(x), that tightens as S grows. Uses the VAE's
    ``encoder_distribution``, ``prior_distribution``, ``decoder`` and ``likelihood``; runs under ``no_grad``
    in eval mode (the module's mode is restored). Seed with ``pyro.set_rng_seed``.

    :param vae: a :class:`~pyro_decomp.vae.DecompVAE` (or anything with those four methods).
    :param x: ``(B, *obs_shape)`` inputs.
    :param num_samples: S, importance samples per point.
    :param batch_size: the most latents decoded at once (samples x points); ``None`` decodes all S·B together.
    :returns: ``(B,)`` estimates in nats.
    """
    num_samples = _check_positive_int("num_samples", num_samples)
    if batch_size is not None:
        batch_size = _check_positive_int("batch_size", batch_size)
    if not torch.is_tensor(x) or x.dim() < 2:
        raise ValueError(
            "x must be a tensor of shape (batch, *obs_shape), got "
            f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}"
        )
    obs_dims = x.dim() - 1
    total = x.shape[0] * num_samples
    budget = total if batch_size is None else batch_size
    rows = min(x.shape[0], budget)
    per_chunk = max(1, budget // rows)
    out = []
    with _evaluating(vae):
        prior = vae.prior_distribution()
        for i in range(0, x.shape[0], rows):
            xb = x[i : i + rows]
            q = vae.encoder_distribution(xb)
            partial = []
            for s in range(0, num_samples, per_chunk):
                z = q.sample((min(per_chunk, num_samples - s),))  # (S', b, D)
                log_w = (
                    vae.likelihood(vae.decoder(z), obs_dims).log_prob(xb) + prior.log_prob(z) - q.log_prob(z)
                )
                partial.append(torch.logsumexp(log_w, 0))
            out.append(torch.logsumexp(torch.stack(partial), 0) - math.log(num_samples))
    return torch.cat(out)


def _encode(vae, data, max_points: int, generator: Optional[torch.Generator], batch_size: int):
    """Encoder ``(loc, scale)`` of at most ``max_points`` points of ``data``.

    ``data``: a tensor of inputs (a random subset is taken without replacement when it holds more), a
    ``Dataset`` (likewise, indexed), or any iterable of batches such as a ``DataLoader`` (its first
    ``max_points`` points, in the loader's order).
    """
    device = module_device(vae)
    locs, scales = [], []
    if torch.is_tensor(data):
        n = data.shape[0]
        chosen = torch.randperm(n, generator=generator)[:max_points] if n > max_points else None
        batches = (
            data[i : i + batch_size] if chosen is None else data[chosen[i : i + batch_size].to(data.device)]
            for i in range(0, min(n, max_points), batch_size)
        )
    elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        n = len(data)
        chosen = torch.randperm(n, generator=generator)[:max_points] if n > max_points else torch.arange(n)
        batches = (take(data, chosen[i : i + batch_size])[0] for i in range(0, len(chosen), batch_size))
    else:
        batches = (first_tensor(b) for b in data)
    count = 0
    for xb in batches:
        xb = xb[: max_points - count].to(device)
        loc, scale = vae.encoder(xb)
        locs.append(loc)
        scales.append(scale)
        count += xb.shape[0]
        if count >= max_points:
            break
    if count == 0:
        raise ValueError("data holds no points")
    return torch.cat(locs), torch.cat(scales)


def overlap(
    vae,
    data,
    num_samples: int = 2000,
    generator: Optional[torch.Generator] = None,
    batch_size: int = 256,
) -> Dict[str, Union[float, torch.Tensor]]:
    """How much the encodings of different points overlap -- the first factor of a decomposition
    (Mathieu et al., 2019, §3): too little and z is a lookup table of x, too much and z says nothing.

    On M points x_1..x_M of ``data``, each with one draw z_n ~ q(z|x_n):

    * ``"mutual_information"``: Î(x; z) = (1/M) Σ_n [log q(z_n|x_n) - log q̂(z_n)] (nats), with the
      aggregate encoding q̂(z) = (1/M) Σ_m q(z|x_m) (an M x M table, computed in chunks). It estimates I(x; z)
      under the empirical data distribution and never exceeds ``"upper_bound"`` = log M (reached when the
      encodings do not overlap at all); more overlap, lower Î;
    * ``"variance_ratio_per_dim"``: r_d = E_x[σ_d(x)²] / (Var_x[μ_d(x)] + E_x[σ_d(x)²]), the share of the
      aggregate encoding's variance in dimension d that is encoder noise (the law of total variance);
      ``"variance_ratio"`` is its mean over dimensions. More overlap, higher ratio; 1 when q(z|x) ignores x.

    :param vae: a :class:`~pyro_decomp.vae.DecompVAE` (its ``encoder`` returns ``(loc, scale)``).
    :param data: a tensor of inputs, a ``Dataset`` or a ``DataLoader`` (items: inputs or (input, ...)).
    :param num_samples: M, the number of points used (a random subset, drawn with ``generator``).
    :param generator: seeds the subset and the encoder draws.
    :param batch_size: points encoded at a time (the M x M table is computed in chunks of about 4M entries).
    :returns: a dict with the keys above (floats, and a ``(D,)`` tensor).
    """
    num_samples = _check_positive_int("num_samples", num_samples)
    batch_size = _check_positive_int("batch_size", batch_size)
    with _evaluating(vae):
        loc, scale = _encode(vae, data, num_samples, generator, batch_size)
    loc, scale = loc.double(), scale.double()
    m, dim = loc.shape
    eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype).to(loc.device)
    z = loc + scale * eps
    const = 0.5 * dim * math.log(2 * math.pi)
    log_q_own = -0.5 * eps.square().sum(-1) - scale.log().sum(-1) - const
    inv_scale = scale.reciprocal()
    log_norm = -scale.log().sum(-1) - const  # (M,)
    rows = max(1, (2**22) // max(1, m * dim))
    log_q_agg = []
    for i in range(0, m, rows):
        diff = (z[i : i + rows].unsqueeze(1) - loc) * inv_scale  # (r, M, D)
        log_q_agg.append(torch.logsumexp(-0.5 * diff.square().sum(-1) + log_norm, dim=-1))
    log_q_agg = torch.cat(log_q_agg) - math.log(m)
    noise = scale.square().mean(0)
    ratio = noise / (loc.var(0, correction=0) + noise)
    return {
        "mutual_information": float((log_q_own - log_q_agg).mean()),
        "upper_bound": math.log(m),
        "variance_ratio": float(ratio.mean()),
        "variance_ratio_per_dim": ratio.float(),
    }


def alignment(
    vae,
    data,
    divergence,
    num_samples: int = 1000,
    batch_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> float:
    """A held-out estimate of D(q(z), p(z)), the second factor of a decomposition (Mathieu et al., 2019,
    §3): how well the aggregate encoding q(z) = (1/N) Σ_n q(z|x_n) matches the prior.

    One draw z_n ~ q(z|x_n) for each of ``num_samples`` points of ``data`` (a random subset drawn with
    ``generator``); the estimator is called as ``divergence(z, q, prior)`` on batches of ``batch_size``
    points (``None``: one batch of all) with z ``(B, D)``, q the batch's encoder distribution (batch
    ``(B,)``, event ``(D,)``) and ``prior = vae.prior_distribution()``, and the estimates are averaged.

    :param divergence: an estimator object from :mod:`pyro_decomp.divergences`, any callable of that form,
        or a name for ``pyro_decomp.divergences.build_divergence`` (``"mmd"``, ``"inclusive-kl"``,
        ``"exclusive-kl"``).
    :returns: the estimate as a float (its units are the estimator's: nats for the KLs).
    """
    num_samples = _check_positive_int("num_samples", num_samples)
    if batch_size is not None:
        batch_size = _check_positive_int("batch_size", batch_size)
    if isinstance(divergence, str):
        divergence = build_divergence(divergence)
    if not callable(divergence):
        raise ValueError(
            f"divergence must be a name or a callable estimator, got {type(divergence).__name__}"
        )
    with _evaluating(vae), seeded(generator):
        loc, scale = _encode(vae, data, num_samples, generator, batch_size or 256)
        step = loc.shape[0] if batch_size is None else batch_size
        prior = vae.prior_distribution()
        estimates = []
        for i in range(0, loc.shape[0], step):
            q = dist.Normal(loc[i : i + step], scale[i : i + step]).to_event(1)
            z = q.sample()
            estimates.append(torch.as_tensor(divergence(z, q, prior)).double().reshape(()))
    return float(torch.stack(estimates).mean())
