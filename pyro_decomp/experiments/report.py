"""The reproduction report: summary figures, tables, verdicts and the commands that regenerate them."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from pyro_decomp import plots
from pyro_decomp.data.indexing import subset_index
from pyro_decomp.experiments.configs import ExperimentConfig, fmt_number
from pyro_decomp.experiments.measure import encode_in_chunks
from pyro_decomp.experiments.verdicts import COLUMNS, arm_values, cell, mean_sd
from pyro_decomp.version import __version__

__all__ = ["summary_figures", "write_report", "command"]


# ---------------------------------------------------------------------------------------------- runs
def summary_figures(
    config: ExperimentConfig, result: Dict[str, Any], figures: Path, kept: Mapping[str, Tuple[Any, Any]]
) -> List[Dict[str, str]]:
    """The experiment's summary figures and the per-run figures the report shows (first seed). ``kept``:
    the first seed's ``(vae, evaluation set)`` of each arm, for the figures drawn only now (traversals)."""

    arms = {a["name"]: a for a in result["arms"]}
    out = []
    if config.name == "independence":
        points = []
        for arm in result["arms"]:
            dis, err = (
                arm_values(result, arm["name"], "disentanglement"),
                arm_values(result, arm["name"], "reconstruction_error"),
            )
            points.append(
                {
                    "prior": arm["group"],
                    "beta": fmt_number(arm["beta"]),
                    "reconstruction error": mean_sd(err)[0],
                    "disentanglement": mean_sd(dis)[0],
                }
            )
        path = plots.plot_disentanglement_vs_reconstruction(
            points, figures / "disentanglement_vs_reconstruction.png", x="reconstruction error"
        )
        out.append(
            {"path": str(path), "caption": "disentanglement against reconstruction error (means over seeds)"}
        )
    elif config.name == "sparsity":
        points = []
        for arm in result["arms"]:
            points.append(
                {
                    "gamma": fmt_number(arm["prior_options"]["gamma"]),
                    "alpha": fmt_number(arm["alpha"]),
                    "IWAE log p(x)": mean_sd(arm_values(result, arm["name"], "iwae"))[0],
                    "Hoyer sparsity": mean_sd(arm_values(result, arm["name"], "hoyer"))[0],
                }
            )
        path = plots.plot_disentanglement_vs_reconstruction(
            points,
            figures / "sparsity_vs_likelihood.png",
            x="IWAE log p(x)",
            y="Hoyer sparsity",
            group="gamma",
            label="alpha",
        )
        out.append(
            {"path": str(path), "caption": "Hoyer sparsity against IWAE log-likelihood (means over seeds)"}
        )
    first = config.seeds[0]
    by_run = {(r["arm"], r["seed"]): r for r in result["runs"]}
    if config.name == "independence":
        shown = []
        for group in dict.fromkeys(a["group"] for a in arms.values()):
            members = [n for n, a in arms.items() if a["group"] == group]
            shown.append(max(members, key=lambda n: mean_sd(arm_values(result, n, "disentanglement"))[0]))
        kinds = ("traversals",)
        values = torch.linspace(-3.0, 3.0, 9)
        for name in shown:
            vae, data = kept[name]
            index = subset_index(len(data), 1000, torch.Generator().manual_seed(0))
            base = encode_in_chunks(vae, data, index)[0].mean(0)  # traverse around the mean code
            path = plots.plot_traversals(
                plots.latent_traversal(vae, z=base, values=values),
                figures / f"{name}_seed{first}_traversals.png",
                values=values,
            )
            by_run[(name, first)]["figures"]["traversals"] = str(path)
    else:
        shown, kinds = list(arms), ("density", "reconstructions", "magnitude")
    for name in shown:
        for kind in kinds:
            path = by_run[(name, first)]["figures"].get(kind)
            if path is not None:
                what = {
                    "density": "q(z) against p(z)",
                    "reconstructions": "held-out points and reconstructions",
                    "magnitude": "mean |z_d| per class",
                    "traversals": "latent traversals",
                }[kind]
                best = " (its best β)" if config.name == "independence" else ""
                out.append({"path": path, "caption": f"{arms[name]['label']}{best}, seed {first}: {what}"})
    return out


# ---------------------------------------------------------------------------------------------- report
def command(experiment: str, scale: str, out, seeds, data_root, threads=None) -> str:
    parts = ["pyro-decomp", "reproduce", experiment, "--scale", scale, "--out", str(out)]
    if seeds is not None:
        parts += ["--seeds", *[str(s) for s in seeds]]
    if data_root is not None:
        parts += ["--data-root", str(data_root)]
    if threads is not None:
        parts += ["--threads", str(threads)]
    return " ".join(shlex.quote(p) for p in parts)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _anchor(title: str) -> str:
    """The GitHub-style anchor of a markdown heading."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


_TITLES = {
    "clustering": "Clustering: pinwheel with a mixture prior",
    "independence": "Independence: axis-aligned disentanglement on the dSprites grid",
    "sparsity": "Sparsity: a spike-and-slab prior",
}


def _section(result: Dict[str, Any], out: Path) -> str:
    name = result["experiment"]
    settings = result["settings"]
    lines = [f"## {_TITLES[name]}", "", f"**The paper's claim.** {result['claim']}", ""]
    verdict = result["verdict"]
    lines += [
        f"**At the `{result['scale']}` scale: {verdict['status']}.** {verdict['evidence']} {verdict['rule']}",
        "",
    ]
    if result["scale"] == "smoke":
        lines += [
            "The `smoke` scale checks that everything runs; its numbers are not evidence either way.",
            "",
        ]
    data = settings["dataset"]
    if result["stand_in"]:
        lines += [f"**Data.** Not the paper's: {result['stand_in']}.", ""]
    else:
        lines += [f"**Data.** `{data}` with options `{json.dumps(settings['data_options'])}`.", ""]
    shared = [
        ("data set", f"`{data}` {json.dumps(settings['data_options'])}"),
        ("latent dimensions", settings["latent_dim"]),
        ("networks", f"`{settings['network']}` {json.dumps(settings['network_options'])}"),
        ("likelihood", f"{settings['likelihood']} (scale {settings['likelihood_scale']})"),
        (
            "epochs / batch size / learning rate",
            f"{settings['epochs']} / {settings['batch_size']} / {settings['lr']} (Adam, amsgrad)",
        ),
        ("seeds", ", ".join(str(s) for s in settings["seeds"])),
        ("evaluation", json.dumps(settings["evaluation"])),
    ]
    if "subset_steps" in settings:
        shared.append(("factor grid subset (every k-th value)", json.dumps(settings["subset_steps"])))
    lines += [_markdown_table(["setting", "value"], shared), ""]
    columns = COLUMNS[name]
    header = ["arm", "prior", "β", "α", "D"] + [c[1] for c in columns] + ["train s / run"]
    rows = []
    for arm in result["arms"]:
        options = ", ".join(f"{k}={v}" for k, v in arm["prior_options"].items())
        seconds = [r["train_seconds"] for r in result["runs"] if r["arm"] == arm["name"]]
        rows.append(
            [
                arm["label"],
                f"{arm['prior']}" + (f" ({options})" if options else ""),
                fmt_number(arm["beta"]),
                fmt_number(arm["alpha"]),
                arm["divergence"] if arm["alpha"] > 0 else "–",
            ]
            + [cell(arm_values(result, arm["name"], key), fmt) for key, _, fmt in columns]
            + [f"{sum(seconds) / len(seconds):.1f}"]
        )
    lines += [
        f"Mean ± standard deviation over {len(settings['seeds'])} seed(s) (a single value: one seed).",
        "",
        _markdown_table(header, rows),
        "",
    ]
    if name == "independence" and any(
        "disentanglement_untransformed" in r["metrics"] for r in result["runs"]
    ):
        lines += [
            "Student-t codes are scored after mapping each coordinate through the prior's CDF and the normal "
            "quantile, as the paper does; without that map: "
            + ", ".join(
                f"{a['label']} "
                + cell(arm_values(result, a["name"], "disentanglement_untransformed"), "{:.3f}")
                for a in result["arms"]
                if a["prior"] == "student-t"
            )
            + ".",
            "",
        ]
    for figure in result["figures"]:
        rel = os.path.relpath(figure["path"], out)
        lines += [f"![{figure['caption']}]({rel})", f"*{figure['caption']}*", ""]
    curves = [r for r in result["runs"] if "curves" in r["figures"]]
    if curves:
        lines += [
            "Training curves: "
            + ", ".join(
                f"[{r['arm']} seed {r['seed']}]({os.path.relpath(r['figures']['curves'], out)})"
                for r in curves
            )
            + ".",
            "",
        ]
    minutes = result["seconds"] / 60
    lines += [
        f"Wall time: {minutes:.1f} minutes for {len(result['runs'])} runs (training and evaluation).",
        "",
        "Regenerate with:",
        "",
        "```bash",
        result["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def write_report(results: Sequence[Dict[str, Any]], out, command: Optional[str] = None) -> str:
    """Write ``out/report.md`` (and ``out/results.json``) from the results of :func:`run_experiment`.

    :param command: the command that regenerates the whole report (written at its top).
    :returns: the path of ``report.md``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    scales = sorted({r["scale"] for r in results})
    lines = [
        "# Disentangling Disentanglement: reproduction report",
        "",
        f"pyro_decomp {__version__}; scale {', '.join(f'`{s}`' for s in scales)}; written "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} on {torch.get_num_threads()} CPU thread(s)"
        + (f" and {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
        + ".",
        "",
        "Mathieu, Rainforth, Siddharth & Teh, *Disentangling Disentanglement in Variational Autoencoders*, "
        "ICML 2019, make three claims about decomposition: one experiment each below, with the settings "
        "used, the measurements, the figures and whether the claim held at this scale. The objective is "
        "L = E_q[log p(x|z)] − β KL(q(z|x) ‖ p(z)) − α D(q(z), p(z)) per data point.",
        "",
    ]
    if command:
        lines += ["Regenerate this report with:", "", "```bash", command, "```", ""]
    lines += [
        _markdown_table(
            ["experiment", "claim at this scale", "runs", "minutes"],
            [
                [
                    f"[{r['experiment']}](#{_anchor(_TITLES[r['experiment']])})",
                    r["verdict"]["status"],
                    len(r["runs"]),
                    f"{r['seconds'] / 60:.1f}",
                ]
                for r in results
            ],
        ),
        "",
    ]
    for result in results:
        lines.append(_section(result, out))
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / ".gitignore").write_text(
        "# the training runs (checkpoints and logs) are large and regenerated by the command in report.md\n"
        "*/runs/\n"
    )
    (out / "results.json").write_text(json.dumps(list(results), indent=2, sort_keys=True))
    return str(path)
