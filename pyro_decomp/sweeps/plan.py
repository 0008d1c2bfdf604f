"""A sweep: a grid of :class:`~pyro_decomp.config.RunConfig` settings times seeds, run as idempotent tasks.

The plan is the product of the grid's values and the seeds, in order (the first field varies slowest, the
seed fastest); each run is named by its values, ``beta=4_prior=student-t_seed=0``, and lives in::

    OUT/sweep.json           the plan (base settings, grid, seeds), rewritten by each call
    OUT/runs/NAME/           the run directory (config.json, checkpoint.pt, metrics.jsonl, evaluation.json)
    OUT/results/NAME.json    the run's result record, written last, when the run is trained and measured
    OUT/summary.*            the summary (see :mod:`pyro_decomp.sweeps.summary`)

:func:`sweep` keeps no state but these files: it submits the runs without a result file to an executor
(:mod:`pyro_decomp.sweeps.executors`) and writes the summary from the result files. Killed and called
again with the same arguments, it trains only what is unfinished, and resumes that from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from pyro_decomp.config import RunConfig, setting_kind
from pyro_decomp.runs import check_writable, write_json
from pyro_decomp.sweeps.executors import Local, SweepIncomplete
from pyro_decomp.sweeps.summary import METRIC_NAMES, write_summary
from pyro_decomp.sweeps.tasks import MEASURE_DEFAULTS, RunTask, read_result, run_task

__all__ = ["SweepIncomplete", "parse_grid", "parse_seeds", "plan", "sweep"]

_SAFE = re.compile(r"[^A-Za-z0-9.+=-]")


def _fields() -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(RunConfig)}


def parse_value(text: str) -> Any:
    """A value as written on the command line: JSON when it parses (numbers, true/false), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_grid(items: Sequence[str]) -> Dict[str, List[Any]]:
    """``["beta=1,2,4", "prior=gaussian,student-t"]`` -> ``{"beta": [1, 2, 4], "prior": [...]}``.

    Each field is a :class:`~pyro_decomp.config.RunConfig` setting (dashes or underscores), not ``seed``
    (that is ``seeds``) and not an options dict, named once, with distinct values. Raises ValueError naming
    the bad item.
    """
    fields = _fields()
    grid: Dict[str, List[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        name = key.strip().replace("-", "_")
        if not sep or not name or not values.strip():
            raise ValueError(f"--grid {item!r}: expected FIELD=VALUE,VALUE,... (e.g. beta=1,2,4)")
        if name not in fields:
            raise ValueError(
                f"--grid {item!r}: {name!r} is not a run setting; expected one of {sorted(fields)}"
            )
        if name == "seed":
            raise ValueError(f"--grid {item!r}: give the seeds with --seeds (e.g. --seeds 0-4)")
        if setting_kind(fields[name])[0] is dict:
            raise ValueError(f"--grid {item!r}: {name} is a dict of options and cannot be swept")
        if name in grid:
            raise ValueError(f"--grid {item!r}: {name} is given twice; give all its values in one --grid")
        parsed = [parse_value(v.strip()) for v in values.split(",")]
        if any(v == "" for v in parsed):
            raise ValueError(f"--grid {item!r}: an empty value")
        if len({json.dumps(v) for v in parsed}) != len(parsed):
            raise ValueError(f"--grid {item!r}: a value is given twice")
        grid[name] = parsed
    return grid


def parse_seeds(text: str) -> List[int]:
    """``"0-4"`` -> ``[0, 1, 2, 3, 4]``; ``"0,3,7-8"`` -> ``[0, 3, 7, 8]``. Raises ValueError naming it."""
    seeds: List[int] = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ValueError(
                f"--seeds {text!r}: expected seeds >= 0 as N, N-M or a comma list (e.g. 0-4 or 0,2,5)"
            )
        first = int(m.group(1))
        seeds.extend(range(first, int(m.group(2) or first) + 1))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: a seed is given twice")
    return seeds


def _name(values: Dict[str, Any]) -> str:
    return "_".join(f"{k}={_SAFE.sub('_', str(v))}" for k, v in values.items())


def plan(
    base: Union[RunConfig, Dict[str, Any]],
    grid: Dict[str, Sequence[Any]],
    seeds: Sequence[int],
    out,
    measure: Optional[Dict[str, Any]] = None,
    threads: int = 1,
) -> List[RunTask]:
    """The sweep's runs, every configuration built (so validated) before anything runs.

    :param base: the settings shared by every run: a RunConfig, or a dict of some of its fields (so that a
        grid over ``dataset`` gives each data set its own defaults for the fields the base leaves out).
    :param grid: ``{field: values}`` (see :func:`parse_grid`).
    :param seeds: the training seeds of every cell of the grid.
    :param measure: settings of :func:`~pyro_decomp.evaluation.evaluate` (``max_points``, ``iwae_samples``,
        ``factor_points``, ``num_votes``).
    :raises ValueError: naming the run and the bad setting.
    """
    values = base.to_dict() if isinstance(base, RunConfig) else dict(base)
    values.pop("pyro_decomp_version", None)
    measure = {**MEASURE_DEFAULTS, **(measure or {})}
    unknown = sorted(set(measure) - set(MEASURE_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown measurement settings {unknown}; expected some of {sorted(MEASURE_DEFAULTS)}"
        )
    if not seeds:
        raise ValueError("a sweep needs at least one seed")
    out = os.fspath(out)
    tasks = []
    keys = list(grid)
    for combination in itertools.product(*(grid[k] for k in keys)):
        for seed in seeds:
            swept = {**dict(zip(keys, combination)), "seed": seed}
            name = _name(swept)
            try:
                config = RunConfig.from_dict({**values, **swept})
            except ValueError as e:
                raise ValueError(f"run {name}: {e}") from None
            tasks.append(
                RunTask(
                    name=name,
                    values=swept,
                    config=config.to_dict(),
                    run_dir=os.path.join(out, "runs", name),
                    result=os.path.join(out, "results", f"{name}.json"),
                    measure=measure,
                    threads=threads,
                )
            )
    return tasks


def sweep(
    base: Union[RunConfig, Dict[str, Any]],
    grid: Dict[str, Sequence[Any]],
    seeds: Sequence[int],
    out,
    *,
    executor=None,
    measure: Optional[Dict[str, Any]] = None,
    plot: Tuple[Optional[str], Optional[str]] = ("iwae_log_likelihood", None),
    threads: int = 1,
    log: Optional[Callable[[str], None]] = print,
) -> Dict[str, Any]:
    """Train and measure every run of the grid (see :func:`plan`) and write the summary.

    :param executor: where the runs go: :class:`~pyro_decomp.sweeps.executors.Local` (default, 2
        processes), :class:`~pyro_decomp.sweeps.executors.Submitit` or
        :class:`~pyro_decomp.sweeps.executors.Dask`.
    :param plot: ``(metric, field)`` of the summary figure (field ``None``: the grid's first field; no
        figure without a grid).
    :param threads: torch threads of each run (the same number gives bitwise the same results).
    :returns: the summary (also ``OUT/summary.json``).
    :raises SweepIncomplete: when runs were interrupted or lost (their checkpoints kept; the same call
        resumes them).
    """
    log = log or (lambda line: None)
    tasks = plan(base, grid, seeds, out, measure, threads)
    metric, against = plot
    against = against or (next(iter(grid)) if grid else None)
    if metric is not None and metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r} to plot; expected one of {sorted(METRIC_NAMES)}")
    if against is not None and against not in grid:
        raise ValueError(f"cannot plot against {against!r}: it is not a field of the grid {list(grid)}")
    out = os.fspath(out)
    check_writable(out)
    write_json(
        os.path.join(out, "sweep.json"),
        {"base": tasks[0].config, "grid": dict(grid), "seeds": list(seeds), "runs": [t.name for t in tasks]},
    )
    todo = [t for t in tasks if read_result(t) is None]
    if len(todo) < len(tasks):
        log(f"{len(tasks) - len(todo)} of {len(tasks)} runs already done")
    stopped: List[str] = []

    def done(i: int, record: Dict[str, Any]) -> bool:
        if "interrupted" in record:
            stopped.append(f"{record['name']}: {record['interrupted']}")
            return True
        log(
            f"[{i + 1}/{len(todo)}] {record['name']}: epoch {record['epoch']}, "
            f"trained in {record['train_seconds']:.1f} s"
        )
        return False

    if todo:
        executor = executor or Local(workers=2, log=log)
        executor.run(run_task, todo, done)
    if stopped:
        raise SweepIncomplete(
            f"{len(stopped)} run(s) interrupted with a checkpoint ({stopped[0]}); run again to resume"
        )
    records = [read_result(t) for t in tasks]
    missing = [t.name for t, r in zip(tasks, records) if r is None]
    if missing:
        raise SweepIncomplete(
            f"{len(missing)} run(s) have no result ({missing[0]}, ...); run again to finish them"
        )
    return write_summary(records, list(grid), list(seeds), out, metric=metric, against=against)
