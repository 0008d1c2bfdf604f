"""One training step of DecompositionELBO against a hand-written PyTorch step of the same objective.

For each of the paper's settings, the same networks (same initialisation), batch and optimiser (Adam with
amsgrad, same learning rate) are stepped by:

* ``torch``: a hand-written step: encoder, reparameterised sample, decoder, the loss written out with
  plain torch formulas the straightforward way (divergences from (B, B, D) broadcasts), ``backward``,
  ``torch.optim.Adam``;
* ``torch_fast`` (settings with a divergence): the same hand-written step with the divergence computed
  the way the library computes it: for the inclusive KL the (B, B) table of encoder log-densities as one
  float64 matrix product and a logsumexp that clamps terms 80 nats below the maximum (written out here in
  plain torch), for the MMD the kernel sums of :class:`pyro_decomp.divergences.IMQKernel` (a custom
  autograd function: plain torch has no lean form of it). The ratio against it measures only what Pyro
  and the ELBO add, and is the one the targets are judged on;
* ``pyro_svi``: ``pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam(...), DecompositionELBO(...)).step``;
* ``pyro_diff``: ``DecompositionELBO.differentiable_loss`` + ``backward`` + ``torch.optim.Adam`` (the pattern
  Pyro documents for ``PyroModule`` s).

The loss is the negative decomposition ELBO with dataset_size = B (plate scale 1), one particle:

    -[sum_b (log p(x_b|z_b) - beta KL_b)] + alpha * B * D_hat

Before timing, each setting checks that the hand-written loss equals DecompositionELBO's on the same random
draws (same seed, same networks), and that the gradients agree. Pyro's validation is left at its default
(on).

Run: ``python benchmarks/svi_step.py`` (``--quick`` for a smoke run, ``--device cuda`` on a GPU machine,
``--settings pinwheel conv64`` for a subset).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from pyro_decomp.divergences import IMQKernel  # noqa: E402
from pyro_decomp.elbo import DecompositionELBO  # noqa: E402
from pyro_decomp.nets import (  # noqa: E402
    ConvDecoder64,
    ConvEncoder64,
    DCGANDecoder32,
    DCGANEncoder32,
    MLPDecoder,
    MLPEncoder,
)
from pyro_decomp.priors import GaussianPrior, SparsePrior, pinwheel_mixture  # noqa: E402
from pyro_decomp.vae import DecompVAE  # noqa: E402

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

# batch, batch under --quick, timed rounds, steps per timing, what the setting is; an opt_in setting runs
# only when --settings names it
SETTINGS = {
    "pinwheel": dict(
        batch=400,
        quick_batch=64,
        rounds=60,
        steps=10,
        description="MLP 2-100-2, Normal likelihood (learnt scale), pinwheel mixture prior, beta=0, "
        "alpha=1, inclusive KL: the paper's pinwheel objective",
    ),
    "pinwheel_beta1": dict(
        batch=400,
        quick_batch=64,
        rounds=60,
        steps=10,
        description="as pinwheel with beta=1 (Monte Carlo KL against the mixture)",
    ),
    "pinwheel_decoder_scale": dict(
        batch=400,
        quick_batch=64,
        rounds=60,
        steps=10,
        opt_in=True,
        description="as pinwheel with the paper's per-point decoder scale: MLPDecoder(scale='decoder'), "
        "Normal(loc(z), scale(z)) likelihood, no global scale",
    ),
    "conv64": dict(
        batch=64,
        quick_batch=8,
        rounds=20,
        steps=2,
        description="conv 64x64 encoder/decoder, Bernoulli likelihood, isotropic Gaussian prior, beta=1, "
        "analytic KL, alpha=0",
    ),
    "dcgan32": dict(
        batch=500,
        quick_batch=16,
        rounds=8,
        steps=1,
        description="DCGAN 32x32 encoder/decoder with batch norm, Laplace(0.1) likelihood, spike-and-slab "
        "prior gamma=0.8 (D=50), beta=1, Monte Carlo KL, alpha=100, per-dimension IMQ MMD",
    ),
}


def normal_log_prob(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - scale.log() - LOG_SQRT_2PI


# ------------------------------------------------------------------------------ hand-written objectives
def reparameterised(encoder, x):
    loc, scale = encoder(x)
    eps = torch.empty_like(loc).normal_()
    return loc, scale, loc + eps * scale


def broadcast_log_aggregate(v, loc, scale):
    """log (1/B) sum_b N(v_i; loc_b, diag scale_b^2), shape (B_i,), from the (B, B, D) table of
    log-densities: the straightforward way."""
    table = normal_log_prob(v.unsqueeze(1), loc, scale).sum(-1)
    return table.logsumexp(-1) - math.log(loc.shape[0])


def matmul_log_aggregate(v, loc, scale):
    """The same with the table as one matrix product,
    sum_d log N(v_id; m_bd, s_bd) = [v_i^2, v_i] . [-a_b / 2, m_b a_b] + c_b with a = 1 / s^2 and
    c_b = -sum_d (m_bd^2 a_bd / 2 + log s_bd) - D/2 log 2 pi, in float64 because the terms are large and
    cancel."""
    v, loc, scale = v.double(), loc.double(), scale.double()
    prec = scale.square().reciprocal()
    lhs = torch.cat([v.square(), v], dim=-1)
    rhs = torch.cat([-0.5 * prec, loc * prec], dim=-1).T
    const = -(0.5 * loc.square() * prec + scale.log()).sum(-1) - loc.shape[-1] * LOG_SQRT_2PI
    table = torch.addmm(const.unsqueeze(0), lhs, rhs).float()
    # logsumexp with terms more than 80 nats below the row's maximum clamped there: exp of very negative
    # numbers takes a slow path on CPU, and such terms weigh less than 1e-34
    m = table.detach().amax(-1, keepdim=True)
    return (table - m).clamp_min(-80.0).exp().sum(-1).log() + m.squeeze(-1) - math.log(loc.shape[0])


def mixture_log_prob(v, locs, sigma, log_weights):
    """log sum_k pi_k N(v; mu_k, sigma^2 I) for v (B, D)."""
    comp = normal_log_prob(v.unsqueeze(-2), locs, sigma).sum(-1)
    return (log_weights + comp).logsumexp(-1)


def mixture_draws(locs, sigma, log_weights, batch):
    """B draws, consuming the random stream as Pyro's MixtureOfDiagNormalsSharedCovariance does."""
    probs = torch.softmax(log_weights, -1).expand(batch, -1)
    which = torch.multinomial(probs, 1, True).squeeze(-1)
    white = torch.empty(batch, locs.shape[-1], dtype=locs.dtype, device=locs.device).normal_()
    return locs[which] + sigma * white


def pinwheel_loss(vae, x, beta, alpha, log_aggregate=broadcast_log_aggregate):
    loc, scale, z = reparameterised(vae.encoder, x)
    params = vae.decoder(z)  # a location (global scale) or the pair (location, per-point scale)
    mean, obs_scale = params if isinstance(params, tuple) else (params, vae.log_obs_scale.exp())
    rec = normal_log_prob(x, mean, obs_scale).sum()
    prior = vae.prior
    locs, sigma, log_w = prior.locs, prior.log_scale.exp(), torch.log_softmax(prior.logits, -1)
    loss = -rec
    if beta != 0:
        kl = normal_log_prob(z, loc, scale).sum() - mixture_log_prob(z, locs, sigma, log_w).sum()
        loss = loss + beta * kl
    zp = mixture_draws(locs, sigma, log_w, x.shape[0])
    d_hat = (mixture_log_prob(zp, locs, sigma, log_w) - log_aggregate(zp, loc, scale)).mean()
    return loss + alpha * x.shape[0] * d_hat


def conv64_loss(vae, x, beta, alpha):
    loc, scale, z = reparameterised(vae.encoder, x)
    rec = -F.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="sum")
    prior_scale = vae.prior.variance.sqrt()
    var_ratio = (scale / prior_scale) ** 2
    kl = 0.5 * (var_ratio + (loc / prior_scale) ** 2 - 1 - var_ratio.log()).sum()
    return -(rec - beta * kl)


def spike_slab_log_prob(v, gamma, spike, slab):
    a = gamma.log() + normal_log_prob(v, torch.zeros_like(spike), spike)
    b = (-gamma).log1p() + normal_log_prob(v, torch.zeros_like(slab), slab)
    return torch.logaddexp(a, b)


def spike_slab_draws(gamma, spike, slab, batch):
    """B draws, consuming the random stream as SpikeAndSlab.sample does."""
    shape = (batch, gamma.shape[-1])
    in_spike = torch.bernoulli(gamma.expand(shape)).bool()
    noise = torch.randn(shape, dtype=gamma.dtype, device=gamma.device)
    return torch.where(in_spike, spike * noise, slab * noise)


def broadcast_imq_sums(x, y):
    """The MMD's three kernel sums with the (B, B, D) table of squared differences and one (B, B, D)
    tensor per kernel scale: the straightforward way."""

    def gram_sum(a, b):
        d2 = (a.unsqueeze(1) - b.unsqueeze(0)) ** 2
        return sum((2 * s / (2 * s + d2)).sum() for s in IMQ_SCALES)

    diag = x.shape[0] * x.shape[1] * len(IMQ_SCALES)  # k(z, z) = sum_s sum_d 1
    return gram_sum(x, x) - diag, gram_sum(y, y) - diag, gram_sum(x, y)


def library_imq_sums(x, y):
    return IMQKernel(IMQ_SCALES).pair_sums(x, y)


def dcgan32_loss(vae, x, beta, alpha, kernel_sums=broadcast_imq_sums):
    loc, scale, z = reparameterised(vae.encoder, x)
    rec = (-math.log(2 * vae.likelihood_scale) - (x - vae.decoder(z)).abs() / vae.likelihood_scale).sum()
    prior = vae.prior
    gamma, spike, slab = prior.gamma, prior.spike_scale, prior.scale
    kl = normal_log_prob(z, loc, scale).sum() - spike_slab_log_prob(z, gamma, spike, slab).sum()
    zp = spike_slab_draws(gamma, spike, slab, x.shape[0])
    b = x.shape[0]
    sxx, syy, sxy = kernel_sums(z, zp)
    mmd = (sxx + syy) / (b * (b - 1)) - sxy * (2.0 / b**2)
    return -(rec - beta * kl) + alpha * b * mmd


# ------------------------------------------------------------------------------ settings
def build(name: str, batch: int, device: torch.device, seed: int):
    """``(make_vae, x, elbo_kwargs, lr, torch_losses)`` of a setting; ``make_vae()`` gives identical
    networks on every call."""
    gen = torch.Generator().manual_seed(seed)
    if name.startswith("pinwheel"):
        from pyro_decomp.data import pinwheel

        points, _ = pinwheel(num_per_class=max(1, batch // 4), seed=seed)
        x = points[:batch]
        beta = 1.0 if name == "pinwheel_beta1" else 0.0
        alpha, lr = 1.0, 1e-3

        def nets():
            return dict(
                encoder=MLPEncoder(2, 2),
                decoder=MLPDecoder(2, 2, scale="decoder" if name == "pinwheel_decoder_scale" else "global"),
                prior=pinwheel_mixture(),
                likelihood="normal",
                likelihood_scale=0.1,
                obs_shape=(2,),
            )

        elbo = dict(beta=beta, alpha=alpha, divergence="inclusive-kl")
        losses = {
            "torch": lambda vae, x: pinwheel_loss(vae, x, beta, alpha, broadcast_log_aggregate),
            "torch_fast": lambda vae, x: pinwheel_loss(vae, x, beta, alpha, matmul_log_aggregate),
        }
    elif name == "conv64":
        x = torch.bernoulli(torch.full((batch, 1, 64, 64), 0.1), generator=gen)
        beta, alpha, lr = 1.0, 0.0, 5e-4

        def nets():
            return dict(
                encoder=ConvEncoder64(10),
                decoder=ConvDecoder64(10),
                prior=GaussianPrior(10),
                likelihood="bernoulli",
            )

        elbo = dict(beta=beta, alpha=alpha)
        losses = {"torch": lambda vae, x: conv64_loss(vae, x, beta, alpha)}
    elif name == "dcgan32":
        x = torch.rand((batch, 1, 32, 32), generator=gen)
        beta, alpha, lr = 1.0, 100.0, 5e-4

        def nets():
            return dict(
                encoder=DCGANEncoder32(50),
                decoder=DCGANDecoder32(50),
                prior=SparsePrior(50, gamma=0.8),
                likelihood="laplace",
                likelihood_scale=0.1,
            )

        elbo = dict(beta=beta, alpha=alpha, divergence="mmd", analytic_kl=False)
        losses = {
            "torch": lambda vae, x: dcgan32_loss(vae, x, beta, alpha, broadcast_imq_sums),
            "torch_fast": lambda vae, x: dcgan32_loss(vae, x, beta, alpha, library_imq_sums),
        }
    else:
        raise ValueError(f"unknown setting {name!r}; expected one of {tuple(SETTINGS)}")

    def make_vae():
        torch.manual_seed(seed)
        return DecompVAE(**nets()).to(device)

    return make_vae, x.to(device), elbo, lr, losses


def check_equal_loss(name, make_vae, x, elbo_kwargs, losses, seed):
    """Loss and gradients of every hand-written loss against DecompositionELBO's on the same draws."""
    store = pyro.get_param_store()
    vae = make_vae()
    elbo = DecompositionELBO(**elbo_kwargs)
    with store.scope():
        torch.manual_seed(seed + 1)
        ours = elbo.differentiable_loss(vae.model, vae.guide, x)
        ours_grads = torch.autograd.grad(ours, list(vae.parameters()))
    out = {"loss_pyro": ours.item()}
    for case, loss_fn in losses.items():
        torch.manual_seed(seed + 1)
        theirs = loss_fn(vae, x)
        grads = torch.autograd.grad(theirs, list(vae.parameters()))
        num = sum(((a - b) ** 2).sum() for a, b in zip(ours_grads, grads)).sqrt()
        den = sum((b**2).sum() for b in grads).sqrt()
        out[f"loss_{case}"] = theirs.item()
        out[f"loss_rel_diff_{case}"] = common.relative_difference(ours.item(), theirs.item())
        out[f"grad_rel_diff_{case}"] = (num / den).item()
    return out


def bench_setting(name, batch, repeats, number, device, seed, warmup):
    make_vae, x, elbo_kwargs, lr, losses = build(name, batch, device, seed)
    result = {"batch": batch, "description": SETTINGS[name]["description"], "lr": lr, "elbo": elbo_kwargs}
    result["check"] = check_equal_loss(name, make_vae, x, elbo_kwargs, losses, seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    store = pyro.get_param_store()
    cases = {}
    for case, loss_fn in losses.items():
        vae = make_vae()
        opt = torch.optim.Adam(vae.parameters(), lr=lr, amsgrad=True)

        def torch_step(vae=vae, opt=opt, loss_fn=loss_fn):
            opt.zero_grad()
            loss_fn(vae, x).backward()
            opt.step()

        cases[case] = common.Case(torch_step, sync=sync)

    vae_svi = make_vae()
    svi = pyro.infer.SVI(
        vae_svi.model,
        vae_svi.guide,
        pyro.optim.Adam({"lr": lr, "amsgrad": True}),
        DecompositionELBO(**elbo_kwargs),
    )
    svi_scope = {"params": {}, "constraints": {}}
    cases["pyro_svi"] = common.Case(lambda: svi.step(x), context=lambda: store.scope(svi_scope), sync=sync)

    vae_diff = make_vae()
    elbo_diff = DecompositionELBO(**elbo_kwargs)
    opt_diff = torch.optim.Adam(vae_diff.parameters(), lr=lr, amsgrad=True)
    diff_scope = {"params": {}, "constraints": {}}

    def diff_step():
        opt_diff.zero_grad()
        elbo_diff.differentiable_loss(vae_diff.model, vae_diff.guide, x).backward()
        opt_diff.step()

    cases["pyro_diff"] = common.Case(diff_step, context=lambda: store.scope(diff_scope), sync=sync)
    times = common.interleaved(cases, repeats=repeats, warmup=warmup, number=number)
    result["steps_per_timing"] = number
    result["timing"] = common.timing_report(times, baseline="torch")
    if "torch_fast" in times:
        for case in ("pyro_svi", "pyro_diff"):
            result["timing"][case]["ratio_vs_torch_fast"] = {
                "wall": common.ratio(times[case]["wall"], times["torch_fast"]["wall"]),
                "cpu": common.ratio(times[case]["cpu"], times["torch_fast"]["cpu"]),
            }
    return result


def main(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    default = [name for name, setting in SETTINGS.items() if not setting.get("opt_in")]
    p.add_argument("--settings", nargs="+", default=default, choices=list(SETTINGS))
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    args = p.parse_args(argv)
    malloc = common.setup(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but torch sees no CUDA device")
    out = {"benchmark": "svi_step", "machine": common.machine_info(args.device), **common.stamp()}
    out["malloc_tuned"] = malloc
    out["pyro_validation"] = pyro.infer.util.is_validation_enabled()
    out["settings"] = {}
    for name in args.settings:
        common.log(name)
        setting = SETTINGS[name]
        if args.quick:
            batch, repeats, number, warmup = setting["quick_batch"], 2, 1, 1
        else:
            batch, number, warmup = setting["batch"], setting["steps"], args.warmup
            repeats = args.repeats or setting["rounds"]
        out["settings"][name] = bench_setting(name, batch, repeats, number, device, args.seed, warmup)
    targets = {"pinwheel": 1.5, "conv64": 1.10, "dcgan32": 1.10}
    summary = {}
    for name, res in out["settings"].items():
        timing = res["timing"]
        baseline = "torch_fast" if "torch_fast" in timing else "torch"
        entry = {"target_baseline": baseline, "target": targets.get(name)}
        entry["step_ms"] = {case: 1e3 * t["wall_s"]["median"] for case, t in timing.items()}
        for case in ("pyro_svi", "pyro_diff"):
            for base in dict.fromkeys(("torch", baseline)):
                r = timing[case][f"ratio_vs_{base}"]
                entry[f"{case}_vs_{base}"] = {
                    "wall": r["wall"]["paired_median"],
                    "cpu": r["cpu"]["paired_median"],
                }
        entry["loss_rel_diff"] = max(v for k, v in res["check"].items() if k.startswith("loss_rel_diff"))
        summary[name] = entry
    out["summary"] = summary
    common.emit(out, args.output)


if __name__ == "__main__":
    main()
