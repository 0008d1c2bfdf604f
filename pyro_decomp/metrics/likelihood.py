"""The importance-weighted estimate of log p(x) (Burda et al., 2016)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from pyro_decomp.metrics._common import _check_positive_int, _evaluating

__all__ = ["iwae_log_likelihood"]


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
