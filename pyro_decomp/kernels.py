"""Kernels for the maximum mean discrepancy between the aggregate encoding q(z) and the prior p(z).

A kernel ``k(a, b)`` takes points of shape ``(..., B1, D)`` and ``(..., B2, D)`` and returns the gram matrix
of shape ``(..., B1, B2)``; leading dims index independent copies (vectorised particles). Kernels:

* :class:`IMQKernel`, the inverse multiquadric of Mathieu et al. (2019) summed over scales s, with C_s = 2s::

      k(z, z') = sum_s sum_d C_s / (C_s + (z_d - z'_d)^2)     (per dimension, the paper's default)
      k(z, z') = sum_s C_s / (C_s + ||z - z'||^2)             (full vector)

  The per-dimension kernel matches marginals, which is what a sparse prior needs. Its three sums of the
  MMD U-statistic (:meth:`IMQKernel.pair_sums`) are computed in chunks that fit a CPU core's cache, each
  accumulating its gradient in the forward pass, so memory stays O(B D) rather than O(B^2 D);
* :class:`RBFKernel`, the Gaussian exp(-||z - z'||^2 / (2 h^2)), with h fixed or the median heuristic over the
  pooled points.

:class:`~pyro_decomp.divergences.MMD` uses them.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Sequence, Tuple, Union

import torch
from torch.autograd.function import once_differentiable

__all__ = ["Kernel", "IMQKernel", "RBFKernel", "wide_dtype"]

# Elements per temporary tensor in the chunked per-dimension IMQ kernel: small enough that the working set
# of a chunk stays in a CPU core's L2 cache, large enough that each torch call amortises its overhead. On an
# accelerator the whole computation runs in a few large chunks.
_CPU_CHUNK = 1 << 17
_CUDA_CHUNK = 1 << 25


def _chunk_budget(t: torch.Tensor) -> int:
    return _CPU_CHUNK if t.device.type == "cpu" else _CUDA_CHUNK


def wide_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for accumulating sums, except on devices without it."""
    return torch.float32 if t.device.type == "mps" else torch.float64


def _check_pair(a: torch.Tensor, b: torch.Tensor, who: str) -> None:
    for name, t in (("a", a), ("b", b)):
        if not torch.is_tensor(t) or t.dim() < 2:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"{who} expects {name} of shape (..., B, D), got {shape}")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{who}: a and b must have the same last (latent) dim, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(..., Ba, Bb)`` as |a|^2 + |b|^2 - 2 a.b, formed in float64 (where the
    device has it) so that the cancellation between the terms costs nothing at float32 precision."""
    dtype, wide = a.dtype, wide_dtype(a)
    a, b = a.to(wide), b.to(wide)
    norms = a.square().sum(-1).unsqueeze(-1) + b.square().sum(-1).unsqueeze(-2)
    if a.dim() == 2 and b.dim() == 2:
        d2 = torch.addmm(norms, a, b.transpose(-1, -2), alpha=-2.0)
    else:
        d2 = norms - 2.0 * torch.matmul(a, b.transpose(-1, -2))
    return d2.to(dtype).clamp_min(0.0)


def _offdiag_sum(gram: torch.Tensor) -> torch.Tensor:
    return gram.sum() - gram.diagonal(dim1=-2, dim2=-1).sum()


class Kernel:
    """A positive-definite kernel k(z, z') on R^D.

    ``k(a, b)`` maps ``a`` of shape ``(..., Ba, D)`` and ``b`` of shape ``(..., Bb, D)`` to the gram matrix
    ``(..., Ba, Bb)``. :meth:`pair_sums` gives the three sums that the MMD U-statistic needs; subclasses
    override it when they can compute the sums faster than through the gram matrices, or when the kernel
    must be fixed from both samples (a data-dependent bandwidth).
    """

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pair_sums(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sum_{i != j} k(x_i, x_j), sum_{i != j} k(y_i, y_j), sum_{i, j} k(x_i, y_j))``.

        ``x`` and ``y`` have shape ``(..., B, D)``; each sum also runs over the leading dims. The sums may
        come in a wider dtype than the inputs.
        """
        return _offdiag_sum(self(x, x)), _offdiag_sum(self(y, y)), self(x, y).sum()


class IMQKernel(Kernel):
    """Inverse multiquadric kernel summed over scales (Mathieu et al., 2019; Tolstikhin et al., 2018).

    With ``per_dim=True`` (the paper's choice for the sparse prior: it compares marginals)::

        k(z, z') = sum_s sum_d C_s / (C_s + (z_d - z'_d)^2),    C_s = 2 * scale_s

    and with ``per_dim=False`` the full-vector form ``k(z, z') = sum_s C_s / (C_s + |z - z'|^2)``.

    The per-dimension form needs the (Ba, Bb, D) table of squared differences. Custom autograd functions
    compute it in cache-sized row chunks, evaluating all scales in place in buffers that every chunk reuses:
    the gram matrix recomputes each chunk in the backward pass, and the MMD sums of :meth:`pair_sums` (the
    upper triangle only for the within-sample sums) accumulate their gradient in the forward pass. Memory
    is O(Ba * Bb + chunk) for the gram and O((Ba + Bb) * D + chunk) for the sums, whatever the number of
    scales; nothing of size (Ba, Bb, D) is stored.

    :param scales: positive kernel scales; default ``(0.1, 0.2, 0.5, 1, 2, 5)`` as in the paper.
    :param bool per_dim: sum one-dimensional kernels over coordinates (default) or use the full vector.
    """

    def __init__(self, scales: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0), per_dim: bool = True):
        scales = tuple(scales) if isinstance(scales, (list, tuple)) else (scales,)
        if not scales or not all(
            isinstance(s, Real) and math.isfinite(float(s)) and float(s) > 0 for s in scales
        ):
            raise ValueError(
                f"IMQKernel scales must be a non-empty sequence of positive numbers, got {scales!r}"
            )
        self.scales = tuple(float(s) for s in scales)
        self.per_dim = bool(per_dim)
        self._c = tuple(2.0 * s for s in self.scales)

    def __repr__(self) -> str:
        return f"IMQKernel(scales={self.scales}, per_dim={self.per_dim})"

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _check_pair(a, b, "IMQKernel")
        if self.per_dim:
            lead, aT, bT = _to_dim_major(a, b)
            gram = _PerDimIMQGram.apply(aT, bT, self._c)
            return gram.reshape(lead + gram.shape[-2:])
        return _FullIMQGram.apply(*_broadcast_leading(a, b), self._c)

    def pair_sums(self, x, y):
        if not self.per_dim:
            return super().pair_sums(x, y)
        _check_pair(x, y, "IMQKernel")
        _, xT, yT = _to_dim_major(x, y)
        return (
            _PerDimIMQSum.apply(xT, xT, self._c, True),
            _PerDimIMQSum.apply(yT, yT, self._c, True),
            _PerDimIMQSum.apply(xT, yT, self._c, False),
        )


class RBFKernel(Kernel):
    """Gaussian kernel ``k(z, z') = exp(-|z - z'|^2 / (2 sigma^2))``.

    :param bandwidth: sigma. ``None`` (default) uses the median heuristic: sigma^2 is the median squared
        distance between distinct points of the pooled sample (computed without gradient, per leading index;
        in :meth:`pair_sums` the pool is both samples, so the three MMD terms share one kernel).
    """

    def __init__(self, bandwidth: Optional[float] = None):
        if bandwidth is not None and not (
            isinstance(bandwidth, Real) and math.isfinite(float(bandwidth)) and float(bandwidth) > 0
        ):
            raise ValueError(f"RBFKernel bandwidth must be a positive number or None, got {bandwidth!r}")
        self.bandwidth = None if bandwidth is None else float(bandwidth)

    def __repr__(self) -> str:
        return f"RBFKernel(bandwidth={self.bandwidth})"

    def _sigma2(self, pooled_d2: torch.Tensor) -> Union[float, torch.Tensor]:
        if self.bandwidth is not None:
            return self.bandwidth**2
        n = pooled_d2.shape[-1]
        if n < 2:
            raise ValueError("RBFKernel's median heuristic needs at least 2 points")
        i, j = torch.triu_indices(n, n, offset=1, device=pooled_d2.device)
        med = pooled_d2.detach()[..., i, j].median(dim=-1).values
        return med.clamp_min(torch.finfo(med.dtype).tiny)[..., None, None]

    def __call__(self, a, b):
        _check_pair(a, b, "RBFKernel")
        d2 = _sq_dist(a, b)
        if self.bandwidth is not None:
            sigma2 = self.bandwidth**2
        else:
            pooled = a if a is b else torch.cat(_broadcast_leading(a, b), dim=-2)
            sigma2 = self._sigma2(_sq_dist(pooled.detach(), pooled.detach()))
        return torch.exp(-0.5 * d2 / sigma2)

    def pair_sums(self, x, y):
        _check_pair(x, y, "RBFKernel")
        x, y = _broadcast_leading(x, y)
        n = x.shape[-2]
        pooled = torch.cat([x, y], dim=-2)
        d2 = _sq_dist(pooled, pooled)
        gram = torch.exp(-0.5 * d2 / self._sigma2(d2))
        kxx, kyy, kxy = gram[..., :n, :n], gram[..., n:, n:], gram[..., :n, n:]
        return _offdiag_sum(kxx), _offdiag_sum(kyy), kxy.sum()


def _broadcast_leading(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return a.expand(lead + a.shape[-2:]), b.expand(lead + b.shape[-2:])


def _to_dim_major(a: torch.Tensor, b: torch.Tensor):
    """Broadcast the leading dims and lay both out as ``(L, D, B)`` contiguous tensors."""
    same = a is b
    a, b = _broadcast_leading(a, b)
    lead = a.shape[:-2]
    aT = a.reshape((-1,) + a.shape[-2:]).transpose(-1, -2).contiguous()
    bT = aT if same else b.reshape((-1,) + b.shape[-2:]).transpose(-1, -2).contiguous()
    return lead, aT, bT


class _Chunks:
    """Row chunks of the ``(L, D, r, cols)`` table of differences a_i - b_j for dim-major inputs ``aT``
    ``(L, D, Ba)`` and ``bT`` ``(L, D, Bb)``, with the per-dimension IMQ terms of each chunk.

    The buffers are allocated once per call and reused by every chunk and every scale, so the working set
    stays in cache and memory does not depend on the number of scales.
    """

    def __init__(self, aT, bT, cs: Sequence[float], values: bool, slopes: bool):
        self.aT, self.bT, self.cs = aT, bT, cs
        self.L, self.D, self.Ba = aT.shape
        self.Bb = bT.shape[-1]
        self.values, self.slopes = values, slopes
        self.budget = _chunk_budget(aT)
        # every chunk has r * cols <= max(Bb, budget / (L D)) pairs
        n = self.L * self.D * min(self.Ba * self.Bb, max(self.Bb, self.budget // (self.L * self.D)))
        self._bufs = [aT.new_empty(n) for _ in range(3 + values + slopes)]
        self._one = aT.new_ones(())

    def rows(self, i: int, start: int) -> int:
        """Rows of the chunk that begins at row ``i`` and spans columns ``[start, Bb)``."""
        return min(self.Ba - i, max(1, self.budget // max(1, self.L * self.D * (self.Bb - start))))

    def __call__(self, i: int, r: int, start: int = 0):
        """``(diff, values, slopes)`` for rows ``[i, i + r)`` and columns ``[start, Bb)``, each of shape
        ``(L, D, r, Bb - start)``: the differences, ``sum_s c_s / (c_s + u)`` and ``sum_s c_s / (c_s + u)^2``
        (minus the derivative in u) with u = diff^2; ``None`` where not asked. Valid until the next call."""
        shape = (self.L, self.D, r, self.Bb - start)
        n = shape[0] * shape[1] * shape[2] * shape[3]
        views = [buf[:n].view(shape) for buf in self._bufs]
        diff, u, tmp = views[:3]
        val = views[3] if self.values else None
        slope = views[-1] if self.slopes else None
        torch.sub(self.aT[:, :, i : i + r, None], self.bT[:, :, None, start:], out=diff)
        torch.square(diff, out=u)
        for out in (val, slope):
            if out is not None:
                out.zero_()
        for c in self.cs:
            torch.add(u, c, out=tmp)
            if val is not None:
                val.addcdiv_(self._one, tmp, value=c)
            if slope is not None:
                tmp.square_()
                slope.addcdiv_(self._one, tmp, value=c)
        return diff, val, slope


class _PerDimIMQGram(torch.autograd.Function):
    """Gram ``(L, Ba, Bb)`` of the per-dimension IMQ kernel for dim-major ``(L, D, Ba)``, ``(L, D, Bb)``.

    The derivative of k with respect to a_{i,d} is ``-2 (a_id - b_jd) sum_s c_s / (c_s + (a_id - b_jd)^2)^2``;
    the backward pass recomputes it chunk by chunk.
    """

    @staticmethod
    def forward(ctx, aT, bT, cs):
        ctx.save_for_backward(aT, bT)
        ctx.cs = cs
        chunks = _Chunks(aT, bT, cs, values=True, slopes=False)
        out = aT.new_empty((chunks.L, chunks.Ba, chunks.Bb))
        i = 0
        while i < chunks.Ba:
            r = chunks.rows(i, 0)
            _, val, _ = chunks(i, r)
            torch.sum(val, dim=1, out=out[:, i : i + r])
            i += r
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        aT, bT = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[:2]
        grad_a = torch.empty_like(aT) if need_a else None
        grad_b = torch.zeros_like(bT) if need_b else None
        chunks = _Chunks(aT, bT, ctx.cs, values=False, slopes=True)
        i = 0
        while i < chunks.Ba:
            r = chunks.rows(i, 0)
            diff, _, h = chunks(i, r)
            h.mul_(diff).mul_(grad[:, None, i : i + r, :])
            if need_a:
                torch.sum(h, dim=-1, out=grad_a[:, :, i : i + r])
            if need_b:
                grad_b.add_(h.sum(dim=-2))
            i += r
        if need_a:
            grad_a.mul_(-2.0)
        if need_b:
            grad_b.mul_(2.0)
        return grad_a, grad_b, None


class _FullIMQGram(torch.autograd.Function):
    """Gram ``(..., Ba, Bb)`` of the full-vector IMQ kernel sum_s c_s / (c_s + |a_i - b_j|^2).

    With u_ij = |a_i - b_j|^2 and slope_ij = sum_s c_s / (c_s + u_ij)^2, the gradient for an incoming W = G *
    slope is ``-2 (rowsum(W) a - W b)`` for a and ``-2 (colsum(W) b - W^T a)`` for b: two matrix products.
    """

    @staticmethod
    def forward(ctx, a, b, cs):
        u = _sq_dist(a, b)
        need_grad = any(ctx.needs_input_grad[:2])
        val = torch.zeros_like(u)
        slope = torch.zeros_like(u) if need_grad else None
        tmp = torch.empty_like(u)
        one = u.new_ones(())
        for c in cs:
            torch.add(u, c, out=tmp)
            val.addcdiv_(one, tmp, value=c)
            if need_grad:
                tmp.square_()
                slope.addcdiv_(one, tmp, value=c)
        ctx.save_for_backward(a, b, slope)
        return val

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, b, slope = ctx.saved_tensors
        w = grad * slope
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = -2.0 * (w.sum(-1).unsqueeze(-1) * a - torch.matmul(w, b))
        if ctx.needs_input_grad[1]:
            grad_b = -2.0 * (w.sum(-2).unsqueeze(-1) * b - torch.matmul(w.transpose(-1, -2), a))
        return grad_a, grad_b, None


class _PerDimIMQSum(torch.autograd.Function):
    """Scalar ``sum_{l,i,j} k(a_li, b_lj)`` of the per-dimension IMQ kernel; with ``symmetric=True``
    (``bT is aT``) the sum over i != j, computed on the upper triangle only.

    The output is a scalar, so its gradient is a fixed vector times the incoming scalar: when an input
    requires grad, the forward pass accumulates that vector while it has the differences at hand (sharing
    c_s + u between the kernel and its slope) and the backward pass only rescales it. The total is
    accumulated and returned in float64 (where the device has it): the MMD subtracts sums of similar size,
    and rounding them to float32 would cost about 1e-7 of their size, much more than the MMD itself when q
    and p are close.
    """

    @staticmethod
    def forward(ctx, aT, bT, cs, symmetric):
        need_a = ctx.needs_input_grad[0] or (symmetric and ctx.needs_input_grad[1])
        need_b = ctx.needs_input_grad[1] and not symmetric
        chunks = _Chunks(aT, bT, cs, values=True, slopes=need_a or need_b)
        grad_a = torch.zeros_like(aT) if need_a else None
        grad_b = torch.zeros_like(bT) if need_b else None
        total = aT.new_zeros((), dtype=wide_dtype(aT))
        i = 0
        while i < chunks.Ba:
            start = i if symmetric else 0
            r = chunks.rows(i, start)
            diff, val, h = chunks(i, r, start)
            if symmetric:
                # the r x r diagonal block holds both orders of its pairs, the rest one order: count it twice
                total += 2.0 * val.sum() - val[..., :r].sum()
            else:
                total += val.sum()
            if h is not None:
                # d k(a_i, b_j) / d a_i = -2 (a_i - b_j) * slope = -d k(a_i, b_j) / d b_j
                h.mul_(diff)
                if symmetric:
                    h[..., r:].mul_(2.0)
                    grad_a[:, :, i:].add_(h.sum(dim=-2))
                    grad_a[:, :, i : i + r].sub_(h.sum(dim=-1))
                else:
                    if need_a:
                        grad_a[:, :, i : i + r].sub_(h.sum(dim=-1))
                    if need_b:
                        grad_b.add_(h.sum(dim=-2))
            i += r
        if symmetric:
            # k(z, z) = sum_s sum_d 1 on the diagonal
            total -= float(chunks.L * chunks.Ba * chunks.D * len(cs))
        for g in (grad_a, grad_b):
            if g is not None:
                g.mul_(2.0)
        ctx.save_for_backward(grad_a, grad_b)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        grad_a, grad_b = ctx.saved_tensors
        grad_a = None if grad_a is None else grad_a * grad
        grad_b = None if grad_b is None else grad_b * grad
        # with symmetric=True aT is passed as both inputs and the whole gradient goes to the first
        return grad_a, grad_b, None, None
