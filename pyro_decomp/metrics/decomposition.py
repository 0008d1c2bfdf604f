"""The paper's two decomposition diagnostics (Mathieu et al., 2019, §3): the *overlap* of the encodings
q(z|x) of different points, and the *alignment* of the aggregate encoding q(z) with the prior p(z)."""

from __future__ import annotations

import math
from typing import Dict, Optional, Union

import pyro.distributions as dist
import torch

from pyro_decomp.data.indexing import first_tensor, take
from pyro_decomp.divergences import build_divergence
from pyro_decomp.metrics._common import _check_positive_int, _evaluating
from pyro_decomp.util import module_device, seeded

__all__ = ["alignment", "overlap"]


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
