"""Minibatch divergence estimators of :mod:`pyro_decomp.divergences` against straightforward broadcasts.

MMD with the paper's per-dimension IMQ kernel (six scales) is compared with a naive implementation that
builds the (B, B, D) table of squared differences and one (B, B, D) tensor per kernel scale, the way the
formula reads. The inclusive and exclusive KL estimators are compared with the same formulas written out
on the (B, B, D) table of Gaussian log-densities.

Inputs: z ~ N(0.5, 0.7^2) (B, D), standing in for encoder samples that do not yet match the prior, so the
MMD is clearly positive; q(z|x_b) = N(z_b, 0.3^2) for the KL estimators; the prior N(0, I). Both
implementations draw their prior samples after the same seed, so they estimate on identical draws.

* time: forward (z without gradient) and forward + backward (gradient with respect to z; for the KLs also
  q's location), medians over interleaved rounds;
* values: relative difference of the library's float32 value from the naive formula evaluated in float64
  (and from the naive float32 value), and of the gradients (relative L2 norm);
* memory: peak resident memory of one forward + backward above the resident memory just before it, each
  case in a fresh process (the kernel's high-water mark reset right before the call). torch on CPU frees
  large blocks back to the operating system, so this is the memory the call really needed. Naive cases
  whose estimated memory exceeds ``--naive-limit-gib`` are skipped and say so.
* scales: the MMD's memory at B=500, D=50 with 1, 6 and 12 kernel scales.

Run: ``python benchmarks/divergences.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import pyro.distributions as dist  # noqa: E402

from pyro_decomp.divergences import MMD, ExclusiveKL, IMQKernel, InclusiveKL  # noqa: E402

SCALES = {
    1: (1.0,),
    6: (0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
    12: (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
}
Q_SCALE = 0.3
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# ------------------------------------------------------------------------------ naive implementations
def naive_mmd(z, zp, scales):
    """Unbiased MMD^2 with the per-dimension IMQ kernel: a (B, B, D) tensor per scale."""
    b = z.shape[0]

    def gram(a, c):
        d2 = (a.unsqueeze(1) - c.unsqueeze(0)) ** 2
        return sum(2 * s / (2 * s + d2) for s in scales).sum(-1)

    def offdiag(g):
        return g.sum() - g.diagonal().sum()

    return (offdiag(gram(z, z)) + offdiag(gram(zp, zp))) / (b * (b - 1)) - 2 * gram(z, zp).sum() / b**2


def naive_log_aggregate(v, loc, scale):
    table = (-0.5 * ((v.unsqueeze(1) - loc) / scale) ** 2 - scale.log() - LOG_SQRT_2PI).sum(-1)
    return table.logsumexp(-1) - math.log(loc.shape[0])


def std_normal_log_prob(v):
    return (-0.5 * v**2 - LOG_SQRT_2PI).sum(-1)


def naive_inclusive(zp, loc, scale):
    return (std_normal_log_prob(zp) - naive_log_aggregate(zp, loc, scale)).mean()


def naive_exclusive(z, loc, scale):
    return (naive_log_aggregate(z, loc, scale) - std_normal_log_prob(z)).mean()


# ------------------------------------------------------------------------------ one case
def make_inputs(b, d, seed, dtype=torch.float32):
    """z ~ N(0.5, 0.7^2) of shape (B, D), made in float32 (then cast, so every dtype sees the same values),
    and the prior N(0, I) in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    z = (0.5 + 0.7 * torch.randn(b, d, generator=g)).to(dtype)
    prior = dist.Normal(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype)).to_event(1)
    return z, prior


def float32_draws(prior, b, seed):
    """B prior draws made in float32 after ``seed`` (as the library draws them for float32 inputs)."""
    d = prior.event_shape[0]
    p32 = dist.Normal(torch.zeros(d), torch.ones(d)).to_event(1).expand(torch.Size([b]))
    torch.manual_seed(seed)
    return p32.sample().to(prior.mean.dtype)


def case_functions(estimator, b, d, n_scales, seed, grad, dtype=torch.float32):
    """``(library(), naive(), leaves)``: zero-argument callables returning the scalar estimate, computed
    from the same inputs and the same prior draws, and the tensors that gradients are taken for."""
    z, prior = make_inputs(b, d, seed, dtype)
    z.requires_grad_(grad)
    loc = z.detach().clone().requires_grad_(grad)
    scale = torch.full_like(z, Q_SCALE)
    q = dist.Normal(loc, scale).to_event(1)
    draw_seed = seed + 1

    def draws():
        return float32_draws(prior, b, draw_seed)

    if estimator == "mmd":
        est = MMD(IMQKernel(SCALES[n_scales]))

        def library():
            torch.manual_seed(draw_seed)
            return est(z, None, prior)

        def naive():
            return naive_mmd(z, draws(), SCALES[n_scales])

        leaves = [z]
    elif estimator == "inclusive-kl":
        est = InclusiveKL()

        def library():
            torch.manual_seed(draw_seed)
            return est(z, q, prior)

        def naive():
            return naive_inclusive(draws(), loc, scale)

        leaves = [loc]
    elif estimator == "exclusive-kl":
        est = ExclusiveKL()

        def library():
            return est(z, q, prior)

        def naive():
            return naive_exclusive(z, loc, scale)

        leaves = [z, loc]
    else:
        raise ValueError(f"unknown estimator {estimator!r}")
    return library, naive, leaves


def naive_bytes(estimator, b, d, n_scales):
    """Rough peak of the naive forward + backward, in (B, B, D) float32 tables: for the MMD, autograd keeps
    two per scale for each of the two pairs that involve z, plus the tables of squared differences (measured
    here: 8 tables with 1 scale, 18 with 6); for the KLs about 6."""
    table = 4 * b * b * d
    if estimator == "mmd":
        return table * (2 * n_scales + 6)
    return table * 6


def values_check(estimator, b, d, n_scales, seed, naive_limit):
    """Relative differences of the library's value and gradients from the naive formulas."""
    lib, naive32, leaves = case_functions(estimator, b, d, n_scales, seed, grad=True)
    v_lib = lib()
    g_lib = torch.autograd.grad(v_lib, leaves)
    out = {"library": v_lib.item()}
    if naive_bytes(estimator, b, d, n_scales) * 2 > naive_limit:  # float64: twice the bytes
        out["skipped"] = "naive float64 reference over the memory limit"
        return out
    _, naive64, leaves64 = case_functions(estimator, b, d, n_scales, seed, grad=True, dtype=torch.float64)
    v64 = naive64()
    g64 = torch.autograd.grad(v64, leaves64)
    v32 = naive32()
    out.update(naive_float64=v64.item(), naive_float32=v32.item())
    out["rel_diff_vs_float64"] = common.relative_difference(v_lib.item(), v64.item())
    out["rel_diff_naive_float32_vs_float64"] = common.relative_difference(v32.item(), v64.item())
    num = sum(((a.double() - c) ** 2).sum() for a, c in zip(g_lib, g64)).sqrt()
    den = sum((c**2).sum() for c in g64).sqrt()
    out["grad_rel_diff_vs_float64"] = (num / den).item()
    return out


def measure_memory(payload):
    """Peak memory of one forward + backward (see :func:`common.memory_probe`)."""
    fn = case_functions(payload["estimator"], payload["b"], payload["d"], payload["scales"], 0, grad=True)
    run = fn[0] if payload["impl"] == "library" else fn[1]
    # load kernels and lazily initialised state at a tiny size first
    small = case_functions(payload["estimator"], 4, 2, payload["scales"], 0, grad=True)
    (small[0] if payload["impl"] == "library" else small[1])().backward()
    return common.memory_probe(lambda: run().backward())


def memory(payload, script, args, in_process):
    if in_process:
        return measure_memory(payload)
    return common.run_worker(script, payload, args.threads, args.tune_malloc)


def time_case(estimator, b, d, seed, repeats, naive_limit):
    out = {}
    for mode in ("forward", "forward_backward"):
        grad = mode == "forward_backward"
        lib, naive, _ = case_functions(estimator, b, d, 6, seed, grad=grad)
        if grad:
            cases = {"library": common.Case(lambda f=lib: f().backward())}
            naive_run = lambda f=naive: f().backward()  # noqa: E731
        else:
            cases = {"library": common.Case(lib)}
            naive_run = naive
        skip = naive_bytes(estimator, b, d, 6) > naive_limit
        if not skip:
            cases = {"naive": common.Case(naive_run), **cases}
        # fewer, longer calls at large sizes; many short ones at small sizes
        number = max(1, min(20, int(2e6 // (b * b * d))))
        times = common.interleaved(cases, repeats=repeats, warmup=1, number=number)
        if skip:
            report = {"library": {"wall_s": common.summarise(times["library"]["wall"])}}
            report["naive"] = {
                "skipped": f"estimated {naive_bytes(estimator, b, d, 6) / 2**30:.1f} GiB > limit "
                f"{naive_limit / 2**30:.1f} GiB"
            }
        else:
            report = common.timing_report(times, baseline="naive")
            lib_t, naive_t = times["library"], times["naive"]
            report["speedup"] = {
                "wall": common.ratio(naive_t["wall"], lib_t["wall"]),
                "cpu": common.ratio(naive_t["cpu"], lib_t["cpu"]),
            }
        report["calls_per_timing"] = number
        out[mode] = report
    return out


def main(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--worker", default=None, help=argparse_hidden())
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 500, 2000], help="batch sizes B")
    p.add_argument("--dims", nargs="+", type=int, default=[10, 50], help="latent dims D")
    p.add_argument("--estimators", nargs="+", default=["mmd", "inclusive-kl", "exclusive-kl"])
    p.add_argument("--naive-limit-gib", type=float, default=3.0, help="skip naive cases estimated above this")
    args = p.parse_args(argv)
    malloc = common.setup(args)
    if args.worker:
        print(json.dumps(measure_memory(json.loads(args.worker))))
        return
    limit = args.naive_limit_gib * 2**30
    sizes, dims, estimators = args.sizes, args.dims, args.estimators
    repeats = args.repeats or 7
    scale_case = (500, 50)
    in_process = False
    if args.quick:
        sizes, dims, repeats, scale_case, in_process = [32], [4], 2, (32, 4), True
    out = {"benchmark": "divergences", "machine": common.machine_info(), **common.stamp()}
    out["malloc_tuned"] = malloc
    out["memory_method"] = (
        "peak resident set size (VmHWM, reset via /proc/self/clear_refs) of one forward + backward minus the "
        "resident set size just before it, "
        + ("in this process (--quick)" if in_process else "in a fresh process per case")
    )
    script = str(Path(__file__).resolve())
    cases = {}
    for estimator in estimators:
        for b in sizes:
            for d in dims:
                key = f"{estimator} B={b} D={d}"
                common.log(key)
                entry = {"values": values_check(estimator, b, d, 6, args.seed, limit)}
                entry["time"] = time_case(estimator, b, d, args.seed, repeats, limit)
                mem = {}
                for impl in ("library", "naive"):
                    if impl == "naive" and naive_bytes(estimator, b, d, 6) > limit:
                        mem[impl] = {"skipped": "over the memory limit"}
                        continue
                    payload = {"estimator": estimator, "b": b, "d": d, "scales": 6, "impl": impl}
                    mem[impl] = memory(payload, script, args, in_process)
                entry["memory"] = mem
                cases[key] = entry
    out["cases"] = cases

    b, d = scale_case
    scales_mem = {}
    for n in SCALES:
        row = {}
        for impl in ("library", "naive"):
            if impl == "naive" and naive_bytes("mmd", b, d, n) > limit:
                row[impl] = {"skipped": "over the memory limit"}
                continue
            payload = {"estimator": "mmd", "b": b, "d": d, "scales": n, "impl": impl}
            row[impl] = memory(payload, script, args, in_process)["peak_increase"]
        scales_mem[str(n)] = row
    out["mmd_memory_by_number_of_scales"] = {"B": b, "D": d, "peak_increase_bytes": scales_mem}

    summary = {}
    for key, entry in cases.items():
        fb = entry["time"]["forward_backward"]
        s = {"library_fwd_bwd_s": fb["library"]["wall_s"]["median"]}
        if "speedup" in fb:
            s["speedup_fwd_bwd_wall"] = fb["speedup"]["wall"]["paired_median"]
            s["speedup_fwd_bwd_cpu"] = fb["speedup"]["cpu"]["paired_median"]
            s["speedup_fwd_wall"] = entry["time"]["forward"]["speedup"]["wall"]["paired_median"]
        s["rel_diff_vs_float64"] = entry["values"].get("rel_diff_vs_float64")
        mem = entry["memory"]
        s["library_peak_MiB"] = mem["library"]["peak_increase"] / 2**20
        if "peak_increase" in mem["naive"]:
            s["naive_peak_MiB"] = mem["naive"]["peak_increase"] / 2**20
        summary[key] = s
    out["summary"] = summary
    common.emit(out, args.output)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
