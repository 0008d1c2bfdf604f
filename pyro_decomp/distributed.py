"""Data-parallel training on ``torch.distributed``.

Each of P processes holds a full copy of the model and a disjoint shard of every epoch's data
(:class:`torch.utils.data.DistributedSampler`). Process r computes the loss of its own minibatch of B points,

    −L_r = (N/B) Σ_{b∈r} ℓ_b + α N D̂_r,

with N = ``dataset_size`` the size of the whole data set, and the gradients are *averaged* over processes
before the optimiser step. Averaging is the right reduction: for the per-point terms

    (1/P) Σ_r (N/B) Σ_{b∈r} ∇ℓ_b = (N/(PB)) Σ_{b∈all} ∇ℓ_b,

which is exactly the gradient a single process computes on the concatenated batch of PB points (its plate
scale is N/(PB)). The divergence D̂ of Mathieu et al. (2019, eq. 7) is not a sum over points, so a per-rank
D̂_r only sees a B-point sample of the aggregate posterior q(z). :class:`GatheredDivergence` evaluates it on
the encoder samples of *all* ranks instead: z and the encoder parameters are gathered with an autograd-aware
all-gather (:func:`gather_cat`) whose backward pass *sums* the incoming gradients of every rank's copy of the
global D̂ into the local slice. Every rank holds the same D̂ (given the same prior draws), so each local slice
receives P·∂(αND̂)/∂z_r, and after averaging over ranks the parameter gradient is Σ_r ∂(αND̂)/∂z_r ∂z_r/∂θ --
the gradient of α N D̂ on the concatenated batch, as in a single process.

Launch with ``torchrun --nproc_per_node=P -m pyro_decomp train ...``; the backend is gloo on CPU and nccl on
CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional

import pyro.distributions as pdist
import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "GatheredDivergence",
    "all_gather_objects",
    "all_reduce_mean",
    "average_gradients",
    "broadcast_module",
    "gather_cat",
    "init_distributed",
    "shutdown",
]


@dataclass
class DistributedContext:
    """Where this process stands in a (possibly trivial) process group.

    :param rank: global rank of this process (0 when not distributed).
    :param world_size: number of processes P (1 when not distributed).
    :param local_rank: rank on this machine (selects the CUDA device).
    :param backend: ``"gloo"``, ``"nccl"`` or None when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        """Whether collectives run (``world_size > 1`` and a process group is initialised)."""
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and shows progress."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ...).

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialised and a trivial context is
    returned. The backend is nccl for a CUDA ``device`` and gloo otherwise; with CUDA each process uses the
    device ``cuda:LOCAL_RANK``.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid torch.distributed environment: RANK={rank}, WORLD_SIZE={world_size}")
    if world_size == 1:
        return DistributedContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def shutdown(context: DistributedContext) -> None:
    """Leave the process group (a no-op when not distributed).

    Every rank first waits at a barrier: a rank that tears its group down while another still talks to it
    can abort the other process (gloo's threads are destroyed mid-operation).
    """
    if context.enabled:
        dist.barrier()
        dist.destroy_process_group()


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over all processes, in place; returns it (unchanged when not distributed)."""
    if _initialised():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def all_gather_objects(value) -> list:
    """``[value of rank 0, value of rank 1, ...]`` on every process (``[value]`` when not distributed).

    For small plain values such as random number generator states; they travel pickled between the processes
    of one job, never through a file.
    """
    if not _initialised():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace each parameter's ``.grad`` by its average over processes, with one collective.

    The parameters must be given in the same order on every process (e.g. sorted by name). A missing
    gradient counts as zero, so every process contributes to every entry.
    """
    if not _initialised():
        return
    params = list(params)
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_mean(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        new = flat[offset : offset + n].view_as(g)
        if p.grad is None:
            p.grad = new.clone()
        else:
            p.grad.copy_(new)
        offset += n


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy the parameters and buffers of rank ``src`` into every process's ``module``."""
    if not _initialised():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


class _GatherCat(torch.autograd.Function):
    """``cat([t_0, ..., t_{P-1}], dim)`` of every rank's tensor; backward sums the gradients of all ranks."""

    @staticmethod
    def forward(ctx, tensor, dim):
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.dim = dim
        ctx.size = tensor.shape[dim]
        ctx.rank = dist.get_rank()
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(ctx.dim, ctx.rank * ctx.size, ctx.size), None


def gather_cat(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate ``tensor`` of every process along ``dim`` (rank order), differentiably.

    Every process must pass a tensor of the same shape. The backward pass sums, over processes, the gradient
    with respect to this process's slice (the adjoint of "every rank reads every slice"). Without an
    initialised process group of more than one process this returns ``tensor`` itself.
    """
    if not _initialised():
        return tensor
    dim = dim % tensor.dim()
    return _GatherCat.apply(tensor, dim)


class GatheredDivergence:
    """Evaluate a divergence estimator on the global batch of all processes.

    Wraps any estimator with the call form ``est(z, q, prior) -> scalar`` of :mod:`pyro_decomp.divergences`:
    z ``(..., B, D)`` encoder samples and q the encoder distribution ``Normal(loc, scale).to_event(1)`` with
    batch ``(..., B)``. The wrapper gathers z, loc and scale of every rank along the batch dimension (-2) with
    :func:`gather_cat`, rebuilds q over the PB points and calls ``inner`` on them, so the ELBO needs no
    change.
    See the module docstring for why averaged gradients then equal the single-process gradient on the
    concatenated batch. Outside a process group it is ``inner`` itself.

    :param inner: the estimator to wrap (e.g. ``pyro_decomp.divergences.MMD()``).
    """

    def __init__(self, inner):
        if not callable(inner):
            raise TypeError(f"inner must be a divergence estimator (callable), got {type(inner).__name__}")
        self.inner = inner

    def __repr__(self) -> str:
        return f"GatheredDivergence({self.inner!r})"

    def __call__(self, z: torch.Tensor, q, prior):
        if not _initialised():
            return self.inner(z, q, prior)
        base, ndims = q, 0
        while isinstance(base, torch.distributions.Independent):
            ndims += base.reinterpreted_batch_ndims
            base = base.base_dist
        if not isinstance(base, torch.distributions.Normal) or ndims != 1:
            raise ValueError(
                "GatheredDivergence expects the encoder distribution Normal(loc, scale).to_event(1), "
                f"got {q!r}"
            )
        loc, scale = torch.broadcast_tensors(base.loc, base.scale)
        z_all = gather_cat(z, dim=-2)
        loc_all = gather_cat(loc, dim=-2)
        scale_all = gather_cat(scale, dim=-2)
        q_all = pdist.Normal(loc_all, scale_all).to_event(1)
        world = dist.get_world_size()
        if len(prior.batch_shape) and prior.batch_shape[-1] == z.shape[-2] and world > 1:
            prior = _Tiled(prior, world)
        return self.inner(z_all, q_all, prior)


class _Tiled(torch.distributions.Distribution):
    """``copies`` side-by-side copies of a prior expanded over a local batch: batch ``(..., B)`` becomes
    ``(..., copies·B)``.

    Inside the data plate the ELBO hands the estimators p(z) expanded to the local batch of B points; every
    batch element is the same p(z), so repeating the batch ``copies`` times gives p(z) over the global batch
    of all processes, with independent draws for each element.
    """

    arg_constraints = {}

    def __init__(self, base, copies: int):
        self.base = base
        self.copies = int(copies)
        *lead, b = base.batch_shape
        super().__init__(
            batch_shape=torch.Size([*lead, self.copies * b]),
            event_shape=base.event_shape,
            validate_args=False,
        )

    @property
    def support(self):
        return self.base.support

    @property
    def has_rsample(self):
        return self.base.has_rsample

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if not batch_shape or batch_shape[-1] != self.batch_shape[-1]:
            raise ValueError(f"cannot expand batch_shape {tuple(self.batch_shape)} to {tuple(batch_shape)}")
        return _Tiled(self.base.expand(batch_shape[:-1] + self.base.batch_shape[-1:]), self.copies)

    def _tile(self, draws: torch.Tensor, n: int) -> torch.Tensor:
        # draws: sample_shape (n dims) + (copies,) + base batch + event → copies next to the last batch dim
        e = len(self.event_shape)
        draws = draws.movedim(n, -e - 2)
        return draws.reshape(*draws.shape[: -e - 2], -1, *self.event_shape)

    def sample(self, sample_shape=()):
        sample_shape = torch.Size(sample_shape)
        return self._tile(self.base.sample(sample_shape + (self.copies,)), len(sample_shape))

    def rsample(self, sample_shape=()):
        sample_shape = torch.Size(sample_shape)
        return self._tile(self.base.rsample(sample_shape + (self.copies,)), len(sample_shape))

    def log_prob(self, value):
        e = len(self.event_shape)
        b = self.base.batch_shape[-1]
        shape = value.shape[: value.dim() - e]
        split = value.reshape(*shape[:-1], self.copies, b, *self.event_shape).movedim(-e - 2, 0)
        lp = self.base.log_prob(split).movedim(0, -2)
        return lp.reshape(*lp.shape[:-2], -1)
