"""The disentanglement metrics of disentanglement_lib on 10,000 + 5,000 points of the full shapes grid.

Codes: those of ``disentanglement.py`` -- the 737,280 points of the dSprites factor grid (3 x 6 x 40 x 32 x
32), D = 10: code d < 5 is factor d (its index scaled to [0, 1]) plus Gaussian noise (standard deviation
0.1, or 1.0 for orientation), codes 5..9 are N(0, 1) noise. No image is rendered. The factors are given as
value indices.

Timed, each on the same seeded split of 10,000 training and 5,000 test points of the grid
(disentanglement_lib's counts), with ``--jobs`` fits at a time (default: one per usable core):

* ``dci`` -- one ``GradientBoostingClassifier`` per factor (the dominant cost: 100 stages x one tree per
  factor value, 113 values in all);
* ``sap`` -- one ``LinearSVC`` per (code, factor), discrete factors (the default), and ``sap_continuous``;
* ``modularity_explicitness`` -- histogram mutual information and one ``LogisticRegression`` per factor;
* ``beta_vae`` -- 10,000 + 5,000 batches of 64 pairs drawn from the whole grid, one ``LogisticRegression``;
* ``mig`` on the 10,000 training points, for scale.

``check``: on ``--check-points`` points, every model-fitting metric gives identical numbers with 1 and with
2 jobs.

Run: ``python benchmarks/metrics.py`` (``--quick`` for a smoke run on a subsampled grid and fewer points).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from disentanglement import grid_factors, make_codes  # noqa: E402

from pyro_decomp import metrics  # noqa: E402
from pyro_decomp.data.shapes import FULL_SIZES  # noqa: E402


def timed(fn):
    """``(result, wall seconds, cpu seconds)`` of one call (the CPU time is this process's, all threads)."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - w0, time.process_time() - c0


def subset(codes, factors, n, generator):
    index = torch.randperm(len(codes), generator=generator)[:n]
    return codes[index], factors[index]


def cases(codes, factors, num_train, num_test, num_eval, seed, jobs):
    def split():
        return dict(num_train=num_train, num_test=num_test, generator=torch.Generator().manual_seed(seed))

    def gen():
        return torch.Generator().manual_seed(seed)

    return {
        "dci": lambda: {
            k: v
            for k, v in metrics.dci(codes, factors, n_jobs=jobs, **split()).items()
            if k not in ("importance", "factors_used")
        },
        "sap": lambda: metrics.sap(codes, factors, n_jobs=jobs, **split()),
        "sap_continuous": lambda: metrics.sap(codes, factors, continuous_factors=True, **split()),
        "modularity_explicitness": lambda: {
            k: v
            for k, v in metrics.modularity_explicitness(codes, factors, n_jobs=jobs, **split()).items()
            if k != "factors_used"
        },
        "beta_vae": lambda: metrics.beta_vae_score(
            codes, factors, num_train=num_train, num_eval=num_eval, generator=gen()
        ),
        "mig": lambda: metrics.mig(*subset(codes, factors, num_train, gen())),
    }


def main(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--jobs", type=int, default=None, help="fits at a time (default: one per usable core)")
    p.add_argument("--check-points", type=int, default=600, help="points of the jobs check, 0: none")
    p.add_argument("--only", nargs="+", default=None, help="time only these metrics")
    args = p.parse_args(argv)
    malloc = common.setup(args)
    sizes, num_train, num_test, num_eval, check = FULL_SIZES, 10_000, 5_000, 5_000, args.check_points
    if args.quick:
        sizes, num_train, num_test, num_eval, check = (3, 6, 4, 4, 4), 300, 150, 300, 100
    out = {"benchmark": "metrics", "machine": common.machine_info(), **common.stamp(), "malloc_tuned": malloc}
    factors = grid_factors(sizes)
    codes = make_codes(factors, sizes, args.dim, args.seed)
    jobs = args.jobs or len(os.sched_getaffinity(0))
    out["problem"] = {
        "grid_points": len(codes),
        "dim": args.dim,
        "train_points": num_train,
        "test_points": num_test,
        "beta_vae_eval_points": num_eval,
        "jobs": jobs,
    }

    if check > 0:
        common.log(f"check: identical numbers with 1 and 2 jobs on {check} + {check // 2} points")
        one = cases(codes, factors, check, check // 2, check // 2, args.seed, 1)
        two = cases(codes, factors, check, check // 2, check // 2, args.seed, 2)
        out["check"] = {
            name: {"identical_across_jobs": one[name]() == two[name]()}
            for name in ("dci", "sap", "modularity_explicitness")
        }

    out["metrics"] = {}
    for name, fn in cases(codes, factors, num_train, num_test, num_eval, args.seed, jobs).items():
        if args.only and name not in args.only:
            continue
        common.log(name)
        value, wall, cpu = timed(fn)
        out["metrics"][name] = {"value": value, "wall_s": wall, "cpu_s": cpu}
        common.log(f"  {wall:.1f} s wall, {cpu:.1f} s cpu")
    out["summary"] = {name: entry["wall_s"] for name, entry in out["metrics"].items()}
    common.emit(out, args.output)


if __name__ == "__main__":
    main()
