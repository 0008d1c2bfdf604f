"""The Kim & Mnih disentanglement metric on the full shapes grid against loops over votes.

Codes: the 737,280 points of the dSprites factor grid (3 x 6 x 40 x 32 x 32), D = 10: code d < 5 is factor d
(its index scaled to [0, 1]) plus Gaussian noise (standard deviation 0.1, or 1.0 for orientation, so that the
score is below 1), codes 5..9 are N(0, 1) noise. No image is rendered.
The metric: :func:`pyro_decomp.metrics.disentanglement_score` with 20,000 votes of 1,000 codes (the paper's
setting), given the factor *values* (shape codes 1, 2, 3; the other factors on [0, 1]), as a user would.

Baselines, all on exactly the library's random draws (reproduced from the same ``torch.Generator`` in the
order its docstring documents) and the same normalised codes, all Python loops over votes:

* ``straightforward``: each vote works from the raw factor values: the distinct values of the fixed factor
  (``torch.unique`` over all 737,280 points), the boolean mask of the chosen value, its ``nonzero`` rows,
  the 1,000 gathered codes, and the dimension of least variance;
* ``mask``: the same with the distinct values found once up front (one ``torch.unique`` per factor), so a
  vote still builds a mask over all points;
* ``lean``: the points of every value found once up front (one stable sort per factor), so a vote is one
  gather and one variance.

Timing: the library runs all 20,000 votes (median over repeats). The loops run on a subset of votes,
``--loop-votes-per-factor`` votes of each factor taken from the full draw; their time per vote, weighted by
how many of the 20,000 votes fix each factor, is extrapolated to 20,000 votes and the time to reproduce the
draws is added. Speed-ups are reported by wall and CPU time. Equality: the library and a loop give the same
vote matrix V on a run of ``--check-votes`` votes (straightforward) and on all 20,000 votes (lean, unless
``--no-full-lean``), hence the same score.

Run: ``python benchmarks/disentanglement.py`` (``--quick`` for a smoke run on a subsampled grid).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from pyro_decomp.data.shapes import FULL_SIZES  # noqa: E402
from pyro_decomp.metrics import disentanglement_score  # noqa: E402


def grid_factors(sizes):
    """Factor indices of every point of the grid, ``(prod(sizes), K)`` int64, last factor fastest."""
    n = math.prod(sizes)
    strides = torch.tensor([math.prod(sizes[k + 1 :]) for k in range(len(sizes))])
    return torch.div(torch.arange(n).unsqueeze(-1), strides, rounding_mode="floor") % torch.tensor(sizes)


def factor_values(indices, sizes):
    """dSprites-like factor values (what a user passes to the metric): shape codes 1, 2, 3, ...; every
    other factor ``linspace(0, 1, n)``. ``(N, K)`` float64."""
    columns = [indices[:, 0].double() + 1]
    columns += [torch.linspace(0, 1, n, dtype=torch.float64)[indices[:, k]] for k, n in enumerate(sizes) if k]
    return torch.stack(columns, dim=-1)


CODE_NOISE = (0.1, 0.1, 1.0, 0.1, 0.1)


def make_codes(indices, sizes, dim, seed):
    """Code d < K is factor d (its index scaled to [0, 1]) plus N(0, CODE_NOISE[d]^2) noise, the rest N(0, 1)
    noise. The orientation code is so noisy that fixing orientation does not always make it the least
    variable code: the score is below 1."""
    g = torch.Generator().manual_seed(seed)
    n, k = indices.shape
    codes = torch.randn(n, dim, generator=g)
    m = min(k, dim)
    scaled = indices[:, :m].float() / (torch.tensor(sizes[:m], dtype=torch.float32) - 1).clamp_min(1)
    codes[:, :m] = scaled + torch.tensor(CODE_NOISE[:m]) * codes[:, :m]
    return codes


def normalise(codes):
    """Centre and scale the codes as the library does (float64 statistics, float32 values)."""
    mean = codes.mean(0, dtype=torch.float64)
    normed = codes.float() - mean.float()
    std = normed.square().mean(0, dtype=torch.float64).sqrt()
    active = std > 0
    return normed / torch.where(active, std, torch.ones_like(std)).float(), ~active


def library_draws(values, num_votes, votes_size, seed):
    """The library's random draws: ``[(k, v, positions (votes_size,)), ...]`` in the order it makes them
    (factor by factor, value by value, vote order within a value); ``v`` indexes factor k's sorted distinct
    values, a position indexes the points with that value in data order."""
    g = torch.Generator().manual_seed(seed)
    num_factors = values.shape[1]
    counts = [torch.unique(values[:, k], return_counts=True)[1] for k in range(num_factors)]
    num_values = torch.tensor([len(c) for c in counts])
    vote_factor = torch.randint(0, num_factors, (num_votes,), generator=g)
    vote_value = torch.randint(0, 2**62, (num_votes,), generator=g).remainder_(num_values[vote_factor])
    out = []
    for k in range(num_factors):
        mine = torch.nonzero(vote_factor == k).flatten()
        mine = mine[torch.argsort(vote_value[mine], stable=True)]
        for v in vote_value[mine].tolist():
            pos = torch.randint(0, 2**62, (votes_size,), generator=g).remainder_(counts[k][v])
            out.append((k, v, pos))
    return out


def vote_from(z, inactive):
    var = (z - z.mean(0, keepdim=True)).square().sum(0)
    var.masked_fill_(inactive, float("inf"))
    return int(var.argmin())


def straightforward_vote(normed, inactive, values, k, v, pos):
    """Everything from the raw factor values, per vote: the distinct values, the mask, its rows."""
    column = values[:, k]
    rows = torch.nonzero(column == torch.unique(column)[v]).flatten()
    return vote_from(normed[rows[pos]], inactive)


class MaskLoop:
    """Per vote, the mask of the fixed value over all points; the distinct values are found once."""

    def __init__(self, normed, values):
        self.normed, self.values = normed, values
        self.distinct = [torch.unique(values[:, k]) for k in range(values.shape[1])]

    def vote(self, inactive, k, v, pos):
        rows = torch.nonzero(self.values[:, k] == self.distinct[k][v]).flatten()
        return vote_from(self.normed[rows[pos]], inactive)


class LeanLoop:
    """Per factor, the points sorted stably by value (data order within a value) and each value's offset,
    found once; a vote is one gather."""

    def __init__(self, normed, values):
        self.normed = normed
        self.order, self.start = [], []
        for k in range(values.shape[1]):
            _, inverse, size = torch.unique(values[:, k], return_inverse=True, return_counts=True)
            self.order.append(torch.argsort(inverse, stable=True))
            self.start.append(torch.cumsum(size, 0) - size)

    def vote(self, inactive, k, v, pos):
        return vote_from(self.normed[self.order[k][pos + self.start[k][v]]], inactive)


def loop_votes(draws, vote_fn, dim):
    num_factors = 1 + max(k for k, _, _ in draws)
    votes = torch.zeros(dim, num_factors, dtype=torch.long)
    for k, v, pos in draws:
        votes[vote_fn(k, v, pos), k] += 1
    return votes


def subset(draws, per_factor):
    """The first ``per_factor`` votes of each factor (in draw order), and how many votes fix each factor."""
    picked, counts = {}, {}
    for k, v, pos in draws:
        counts[k] = counts.get(k, 0) + 1
        if len(picked.setdefault(k, [])) < per_factor:
            picked[k].append((k, v, pos))
    return picked, counts


def time_loop(picked, counts, vote_fn, repeats):
    """Per factor: per-vote wall and CPU time over the subset (median over repeats); extrapolation."""
    per_factor = {}
    for k, votes in picked.items():
        walls, cpus = [], []
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            for _, v, pos in votes:
                vote_fn(k, v, pos)
            walls.append((time.perf_counter() - w0) / len(votes))
            cpus.append((time.process_time() - c0) / len(votes))
        per_factor[k] = (common.summarise(walls)["median"], common.summarise(cpus)["median"])
    total_wall = sum(counts[k] * per_factor[k][0] for k in per_factor)
    total_cpu = sum(counts[k] * per_factor[k][1] for k in per_factor)
    n = sum(counts.values())
    return {
        "per_vote_wall_s": total_wall / n,
        "per_vote_cpu_s": total_cpu / n,
        "votes_timed_per_factor": {str(k): len(v) for k, v in picked.items()},
        "extrapolated_votes_wall_s": total_wall,
        "extrapolated_votes_cpu_s": total_cpu,
    }


def main(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--votes", type=int, default=20000)
    p.add_argument("--votes-size", type=int, default=1000)
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--loop-votes-per-factor", type=int, default=40)
    p.add_argument("--check-votes", type=int, default=300)
    p.add_argument("--no-full-lean", action="store_true", help="skip the lean loop over all votes")
    args = p.parse_args(argv)
    malloc = common.setup(args)
    sizes, votes, votes_size = FULL_SIZES, args.votes, args.votes_size
    per_factor, check_votes, repeats = args.loop_votes_per_factor, args.check_votes, args.repeats or 3
    if args.quick:
        sizes, votes, votes_size, per_factor, check_votes, repeats = (3, 6, 10, 8, 8), 200, 100, 4, 40, 1
    out = {"benchmark": "disentanglement", "machine": common.machine_info(), **common.stamp()}
    out["malloc_tuned"] = malloc
    indices = grid_factors(sizes)
    values = factor_values(indices, sizes)
    codes = make_codes(indices, sizes, args.dim, args.seed)
    del indices
    out["problem"] = {"points": len(codes), "dim": args.dim, "votes": votes, "votes_size": votes_size}
    normed, inactive = normalise(codes)
    seed = args.seed + 1
    mask_loop, lean_loop = MaskLoop(normed, values), LeanLoop(normed, values)
    loops = {
        "straightforward": lambda k, v, pos: straightforward_vote(normed, inactive, values, k, v, pos),
        "mask": lambda k, v, pos: mask_loop.vote(inactive, k, v, pos),
        "lean": lambda k, v, pos: lean_loop.vote(inactive, k, v, pos),
    }

    def library(num_votes):
        gen = torch.Generator().manual_seed(seed)
        return disentanglement_score(codes, values, num_votes, votes_size, generator=gen, return_votes=True)

    # exactness: the library and the straightforward loop on the same short run of votes
    common.log("check against the straightforward loop")
    _, v_lib = library(check_votes)
    v_loop = loop_votes(
        library_draws(values, check_votes, votes_size, seed), loops["straightforward"], args.dim
    )
    out["check_straightforward"] = {
        "votes": check_votes,
        "identical_vote_matrix": bool(torch.equal(v_lib, v_loop)),
        "votes_differing": int((v_lib - v_loop).abs().sum()) // 2,
    }

    common.log("library")
    library(votes)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        score, v_full = library(votes)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    lib = {"wall_s": common.summarise(walls), "cpu_s": common.summarise(cpus), "score": score}
    out["library"] = lib

    # the same draws, reproduced outside the library
    w0, c0 = time.perf_counter(), time.process_time()
    draws = library_draws(values, votes, votes_size, seed)
    draw_time = (time.perf_counter() - w0, time.process_time() - c0)
    out["reproduce_draws"] = {"wall_s": draw_time[0], "cpu_s": draw_time[1]}
    picked, counts = subset(draws, per_factor)
    for name, fn in loops.items():
        common.log(f"{name} loop on a subset of votes")
        res = time_loop(picked, counts, fn, repeats)
        res["extrapolated_total_wall_s"] = res["extrapolated_votes_wall_s"] + draw_time[0]
        res["extrapolated_total_cpu_s"] = res["extrapolated_votes_cpu_s"] + draw_time[1]
        res["speedup_wall"] = res["extrapolated_total_wall_s"] / lib["wall_s"]["median"]
        res["speedup_cpu"] = res["extrapolated_total_cpu_s"] / lib["cpu_s"]["median"]
        res["extrapolated"] = True
        out[name] = res

    if not args.no_full_lean:
        common.log("lean loop over all votes")
        w0, c0 = time.perf_counter(), time.process_time()
        v_lean = loop_votes(draws, loops["lean"], args.dim)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        out["lean_full"] = {
            "wall_s": wall + draw_time[0],
            "cpu_s": cpu + draw_time[1],
            "speedup_wall": (wall + draw_time[0]) / lib["wall_s"]["median"],
            "speedup_cpu": (cpu + draw_time[1]) / lib["cpu_s"]["median"],
            "score": float(v_lean.max(-1).values.sum()) / votes,
            "identical_vote_matrix": bool(torch.equal(v_full, v_lean)),
            "votes_differing": int((v_full - v_lean).abs().sum()) // 2,
            "extrapolated": False,
        }
    out["summary"] = {
        "library_wall_s": lib["wall_s"]["median"],
        "library_cpu_s": lib["cpu_s"]["median"],
        "score": score,
        **{f"speedup_vs_{name}_{t}": out[name][f"speedup_{t}"] for name in loops for t in ("wall", "cpu")},
        "identical_votes": out["check_straightforward"]["identical_vote_matrix"]
        and out.get("lean_full", {}).get("identical_vote_matrix", True),
    }
    common.emit(out, args.output)


if __name__ == "__main__":
    main()
