"""Vote and classifier scores: a factor is held fixed and a simple classifier names it from the codes.

* :func:`disentanglement_score` -- Kim & Mnih (2018), as Mathieu et al. (2019) evaluate it (vectorised
  votes);
* :func:`beta_vae_score` -- Higgins et al. (2017), as disentanglement_lib computes it.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch

from pyro_decomp.metrics._common import (
    _check_pair,
    _check_positive_int,
    _factor_indices,
    _sklearn,
    _uniform_below,
    _value_groups,
)

__all__ = ["beta_vae_score", "disentanglement_score"]


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


# ---------------------------------------------------------------------------------------------- β-VAE
def _pair_features(
    codes: torch.Tensor,
    indices: torch.Tensor,
    groups,
    num_points: int,
    batch_size: int,
    generator: Optional[torch.Generator],
) -> Tuple[np.ndarray, np.ndarray]:
    """``num_points`` β-VAE training points: (features ``(num_points, D)``, labels ``(num_points,)``)."""
    n, num_factors = indices.shape
    labels = torch.randint(0, num_factors, (num_points,), generator=generator)
    first = _uniform_below(torch.tensor(n), (num_points, batch_size), generator)
    second = torch.empty_like(first)
    for k in range(num_factors):
        mine = torch.nonzero(labels == k).flatten()
        if mine.numel() == 0:
            continue
        order, start, size = groups[k]
        value = indices[first[mine], k]  # (m, B): the shared value of each pair
        pos = _uniform_below(size[value], value.shape, generator).add_(start[value])
        second[mine] = order[pos]
    features = torch.empty(num_points, codes.shape[1], dtype=torch.float64)
    for i in range(0, num_points, 1024):  # about 1024 * B * D floats at a time
        a, b = first[i : i + 1024], second[i : i + 1024]
        features[i : i + 1024] = (codes[a] - codes[b]).abs().mean(1)
    return features.numpy(), labels.numpy()


def beta_vae_score(
    codes,
    factors,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    generator: Optional[torch.Generator] = None,
    random_state: int = 0,
) -> Dict[str, float]:
    """The disentanglement metric of Higgins et al. (2017, §3), as disentanglement_lib's
    ``compute_beta_vae_sklearn`` computes it.

    One training point: a factor k drawn uniformly from the K factors, and ``batch_size`` pairs of points
    that share the value of factor k (the other factors drawn independently); its feature is the mean
    absolute difference of the pair's codes::

        f = (1/B) Σ_b |z(x_b) - z(x'_b)|   (D,),    label k.

    A ``LogisticRegression(random_state=random_state)`` (scikit-learn's defaults otherwise) is fitted on
    ``num_train`` such points; the score is its accuracy on ``num_eval`` fresh ones (``"eval_accuracy"``),
    also on its own training points (``"train_accuracy"``). 1 when each factor leaves its own code
    unchanged; about 1/K when the codes carry nothing. disentanglement_lib's defaults: B = 64, 10,000 train
    and 5,000 eval points. scikit-learn's ``ConvergenceWarning`` (its default 100 lbfgs iterations) is not
    shown: the fit is the standard one either way.

    The pairs are drawn from the rows of ``codes``/``factors``: over the whole factor grid (one row per
    combination of factor values, as :class:`~pyro_decomp.data.Shapes` gives), drawing the first point of a
    pair uniformly among the rows and the second uniformly among the rows that share its value of factor k
    is disentanglement_lib's sampling of factors exactly; over a uniform sample of the grid it draws from the
    sample's empirical distribution. Random numbers come from ``generator`` in this order, train points then
    eval points: the labels of all points (``randint(K, (num_points,))``), the first rows of all pairs
    (62-bit integers modulo N), then, factor by factor and in point order, each pair's second row among the
    rows sharing the value.

    :param codes: ``(N, D)`` representations (encoder means) of the rows.
    :param factors: ``(N, K)`` factor values or indices of the same rows, K >= 2.
    :param batch_size: B, pairs per point.
    :param num_train: training points of the classifier.
    :param num_eval: held-out points it is scored on.
    :param generator: a ``torch.Generator`` for the pairs.
    :param random_state: the classifier's ``random_state``.
    :returns: ``{"train_accuracy", "eval_accuracy"}``.
    """
    codes, factors = _check_pair(codes, factors)
    batch_size = _check_positive_int("batch_size", batch_size)
    num_train = _check_positive_int("num_train", num_train)
    num_eval = _check_positive_int("num_eval", num_eval)
    if factors.shape[1] < 2:
        raise ValueError(f"the β-VAE score needs K >= 2 factors to tell apart, got {factors.shape[1]}")
    if not torch.isfinite(codes).all():
        raise ValueError("codes contain NaN or infinite values")
    linear_model = _sklearn().linear_model
    codes = codes.detach().cpu().double()
    indices, num_values = _factor_indices(factors.cpu())
    groups = [_value_groups(indices[:, k], int(num_values[k])) for k in range(factors.shape[1])]
    x_train, y_train = _pair_features(codes, indices, groups, num_train, batch_size, generator)
    x_eval, y_eval = _pair_features(codes, indices, groups, num_eval, batch_size, generator)
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"num_train = {num_train} points drew one factor only: the classifier needs two")
    model = linear_model.LogisticRegression(random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _sklearn().exceptions.ConvergenceWarning)
        model.fit(x_train, y_train)
    return {
        "train_accuracy": float(np.mean(model.predict(x_train) == y_train)),
        "eval_accuracy": float(np.mean(model.predict(x_eval) == y_eval)),
    }
