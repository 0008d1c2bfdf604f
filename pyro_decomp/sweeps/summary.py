"""The summary of a sweep: every run's final metrics as a table, mean ± sd per cell, and one figure.

Written into the sweep's output directory, each file atomically::

    summary.json                the grid, the seeds and every run's record (values, run directory, metrics)
    summary.csv                 one row per run: name, the swept values, seed, every metric
    summary.md                  one row per cell of the grid (its seeds pooled): mean ± sd of each metric
    summary_METRIC_vs_FIELD.png METRIC against FIELD, one line per combination of the other fields,
                                mean ± sd over the seeds as error bars

The sd is the sample standard deviation over the cell's seeds, √(Σ (m_s − m̄)² / (S − 1)); a cell of one
seed shows its value alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pyro_decomp._atomic import atomic_open  # noqa: E402

__all__ = ["METRIC_NAMES", "write_summary"]

#: the metrics a sweep's runs report: what :func:`~pyro_decomp.evaluation.evaluate` measures (the last
#: two on ground-truth data only), and the last epoch's training loss components as ``train_*``
_LOSS = ("loss", "reconstruction", "kl", "other_kl", "divergence")
METRIC_NAMES = (
    *_LOSS,
    "reconstruction_squared_error",
    "iwae_log_likelihood",
    "hoyer_sparsity",
    "overlap_mutual_information",
    "overlap_upper_bound",
    "overlap_variance_ratio",
    "alignment",
    "disentanglement",
    "mig",
    *(f"train_{k}" for k in (*_LOSS, "last_batch_loss")),
    *(f"train_heldout_{k}" for k in _LOSS),
)
#: the columns of the markdown table: the held-out measurements and the final training loss
TABLE_METRICS = tuple(k for k in METRIC_NAMES if not k.startswith("train_") or k == "train_loss")


def _write_text(path: str, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text.encode())


def _cells(records: Sequence[Dict[str, Any]], fields: Sequence[str]) -> Dict[Tuple, List[Dict[str, Any]]]:
    cells: Dict[Tuple, List[Dict[str, Any]]] = {}
    for record in records:
        cells.setdefault(tuple(json.dumps(record["values"][k]) for k in fields), []).append(record)
    return cells


def _mean_sd(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _metric_names(records: Sequence[Dict[str, Any]]) -> List[str]:
    seen = {k for r in records for k in r["metrics"]}
    return [k for k in METRIC_NAMES if k in seen] + sorted(seen - set(METRIC_NAMES))


def _markdown(records, fields: Sequence[str], metrics: Sequence[str]) -> str:
    header = [*fields, "seeds", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, cell in _cells(records, fields).items():
        row = [str(json.loads(v)) for v in key] + [str(len(cell))]
        for metric in metrics:
            values = [r["metrics"][metric] for r in cell if metric in r["metrics"]]
            if not values:
                row.append("")
                continue
            mean, sd = _mean_sd(values)
            row.append(f"{mean:.4g}" if sd is None else f"{mean:.4g} ± {sd:.2g}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _figure(records, fields: Sequence[str], metric: str, against: str, path: str) -> str:
    others = [f for f in fields if f != against]
    xs = list(dict.fromkeys(json.dumps(r["values"][against]) for r in records))
    numeric = all(isinstance(json.loads(x), (int, float)) and not isinstance(json.loads(x), bool) for x in xs)
    position = {x: (float(json.loads(x)) if numeric else i) for i, x in enumerate(xs)}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, group in _cells(records, others).items():
        points = []
        for x in xs:
            values = [
                r["metrics"][metric]
                for r in group
                if json.dumps(r["values"][against]) == x and metric in r["metrics"]
            ]
            if values:
                mean, sd = _mean_sd(values)
                points.append((position[x], mean, sd or 0.0))
        if not points:
            continue
        label = ", ".join(f"{f}={json.loads(v)}" for f, v in zip(others, key)) or None
        ax.errorbar(*zip(*points), marker="o", capsize=3, label=label)
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(json.loads(x)) for x in xs])
    ax.set_xlabel(against)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against {against} (mean ± sd over seeds)", fontsize=9)
    if others:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    with atomic_open(path) as f:
        f.write(buffer.getvalue())
    return path


def write_summary(
    records: Sequence[Dict[str, Any]],
    fields: Sequence[str],
    seeds: Sequence[int],
    out: str,
    metric: Optional[str] = "iwae_log_likelihood",
    against: Optional[str] = None,
) -> Dict[str, Any]:
    """Write the summary files of ``records`` (the runs' result records, in the plan's order) into ``out``;
    returns the summary dict with the paths written under ``files``."""
    metrics = _metric_names(records)
    runs = [
        {k: r[k] for k in ("name", "values", "run_dir", "epoch", "train_seconds", "metrics")} for r in records
    ]
    summary: Dict[str, Any] = {"grid": list(fields), "seeds": list(seeds), "metrics": metrics, "runs": runs}
    files = {
        "json": os.path.join(out, "summary.json"),
        "csv": os.path.join(out, "summary.csv"),
        "markdown": os.path.join(out, "summary.md"),
    }
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", *fields, "seed", "epoch", *metrics])
    for r in runs:
        writer.writerow(
            [r["name"], *(r["values"][k] for k in fields), r["values"]["seed"], r["epoch"]]
            + [repr(r["metrics"][m]) if m in r["metrics"] else "" for m in metrics]
        )
    _write_text(files["csv"], buffer.getvalue())
    shown = [m for m in metrics if m in TABLE_METRICS]
    _write_text(files["markdown"], _markdown(records, fields, shown))
    if metric is not None and against is not None and any(metric in r["metrics"] for r in records):
        files["figure"] = _figure(
            records, fields, metric, against, os.path.join(out, f"summary_{metric}_vs_{against}.png")
        )
    summary["files"] = files
    _write_text(files["json"], json.dumps(summary, indent=2) + "\n")
    return summary
