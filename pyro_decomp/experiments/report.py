"""The reproduction report: summary figures, tables, verdicts and the commands that regenerate them."""

from __future__ import annotations

import json
import os
import shlex
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from pyro_decomp import plots
from pyro_decomp._atomic import atomic_open
from pyro_decomp.experiments.configs import CLUSTERING_SETTINGS, EXPERIMENTS, ExperimentConfig, fmt_number
from pyro_decomp.experiments.measure import ACTIVE_VARIANCE, MIN_OCCUPANCY
from pyro_decomp.experiments.references import TWENTY_EPOCHS_REFERENCE, paper_code_reference, paragraph
from pyro_decomp.experiments.verdicts import (
    COLUMNS,
    PINWHEEL_COMPONENTS,
    arm_values,
    cell,
    clustering_arms,
    independence_differences,
    mean_sd,
    not_judged,
    uncollapsed_differences,
)
from pyro_decomp.version import __version__

__all__ = ["summary_figures", "write_report", "kept_results", "command"]


# ---------------------------------------------------------------------------------------------- runs
def summary_figures(
    config: ExperimentConfig, result: Dict[str, Any], figures: Path, kept: Mapping[str, Mapping[str, Any]]
) -> List[Dict[str, str]]:
    """The experiment's summary figures and the per-run figures the report shows (first seed). ``kept``:
    what the evaluator kept of each arm's first seed for the figures drawn only now (clustering: the
    held-out encoder means and the prior)."""

    arms = {a["name"]: a for a in result["arms"]}
    first = config.seeds[0]
    out = []
    if config.name == "clustering":
        try:
            pairs = clustering_arms(result)
        except StopIteration:  # a configuration without both arms of a setting
            pairs = []
        for setting, alpha, beta in pairs:
            if not (kept.get(beta) and kept.get(alpha)):
                continue
            short = CLUSTERING_SETTINGS.get(setting, setting)
            codes = {
                arms[name]["label"].split(": ", 1)[-1]: kept[name]["encodings"] for name in (beta, alpha)
            }
            path = plots.plot_encodings_by_arm(
                codes,
                kept[beta]["prior"],
                figures
                / (f"encodings_{setting}_seed{first}.png" if setting else f"encodings_seed{first}.png"),
                title=f"held-out encoder means, seed {first}" + (f": {short}" if short else ""),
            )
            where = _SETTING_TITLES.get(setting, setting)
            out.append(
                {
                    "path": str(path),
                    "caption": f"held-out encoder means of both arms, seed {first}"
                    + (f", {where}" if where else "")
                    + "; the prior's components at 1 and 2 standard deviations",
                }
            )
    elif config.name == "independence":
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
            points,
            figures / "disentanglement_vs_reconstruction.png",
            x="reconstruction error",
            xlabel="reconstruction error −E log p(x|z) (nats / image)",
            ylabel="disentanglement score (Kim & Mnih)",
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
            xlabel="IWAE log p(x) (nats / image)",
            ylabel="Hoyer sparsity of the encoder means",
        )
        out.append(
            {"path": str(path), "caption": "Hoyer sparsity against IWAE log-likelihood (means over seeds)"}
        )
    by_run = {(r["arm"], r["seed"]): r for r in result["runs"]}
    if config.name == "independence":
        shown = []
        for group in dict.fromkeys(a["group"] for a in arms.values()):
            members = [n for n, a in arms.items() if a["group"] == group]
            shown.append(max(members, key=lambda n: mean_sd(arm_values(result, n, "disentanglement"))[0]))
        kinds = ("traversals",)
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
def command(experiment: str, scale: str, out, seeds, data_root, threads=None, report=None) -> str:
    """The ``pyro-decomp reproduce`` command line of these settings, quoted for the shell."""
    parts = ["pyro-decomp", "reproduce", experiment, "--scale", scale, "--out", str(out)]
    if seeds is not None:
        parts += ["--seeds", *[str(s) for s in seeds]]
    if data_root is not None:
        parts += ["--data-root", str(data_root)]
    if threads is not None:
        parts += ["--threads", str(threads)]
    if report is not None:
        parts += ["--report", str(report)]
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


# How the report names the settings of an experiment's arms (one results table each).
_SETTING_TITLES = {
    "decoder": "the paper's likelihood: the decoder predicts the scale σ(z) per point",
    "global": "one learnt global likelihood scale σ, initialised at 0.1",
    "paper": "the paper's β term, the KL against p(z)² as the paper's code computes it, with the paper's "
    "likelihood",
}

_TITLES = {
    "clustering": "Clustering: pinwheel with a mixture prior",
    "independence": "Independence: axis-aligned disentanglement on the dSprites grid",
    "sparsity": "Sparsity: a spike-and-slab prior",
}


_CLUSTERING_NOTES = paragraph(
    """
    **The paper's code doubles log p(z) in its β term.** Its Monte Carlo KL (`kl_divergence` in
    `src/utils.py` of iffsid/disentangling-disentanglement) broadcasts the mixture prior's log-density, of
    shape (1, B, 1), against the per-dimension log q(z|x), of shape (1, B, 2), before summing over the D = 2
    latent dimensions, so it estimates E_q[log q(z|x) − 2 log p(z)] instead of KL(q(z|x) ‖ p(z)). That is
    the KL against the unnormalised density p(z)², whose components are twice as sharp (variance 0.015
    instead of 0.03): the β term pulls each encoding onto the prior's modes twice as hard. This package's
    KL is the correct one, and tables 1 and 2 are measured with it. Table 3, "the paper's β term", measures
    what the doubling does: everything as in table 1 (the paper's likelihood, the same seeds) except that the
    β term is E_q[log q(z|x)] − 2 E_q[log p(z)] (the experiment wraps the prior in
    `pyro_decomp.experiments.paper_beta.PaperBetaTerm`, whose registered KL is that term; its log-density,
    its draws and so the α term are p(z)'s). The (β=0, α=1) arm has no β term, so it trains exactly as in
    table 1 and its row repeats table 1's.
    """
)
_CLUSTERING_LIKELIHOOD = paragraph(
    """
    **Why the verdict depends on the likelihood.** The paper's pinwheel decoder predicts the likelihood's
    scale σ(z) per point (table 1). With it the plain ELBO (β=1, α=0) has a way out of using z: σ can grow
    until the data are explained as noise, and then nothing keeps q(z) on all four of the prior's
    components, while the α term, the inclusive KL(p(z) ‖ q(z)), is large exactly when q(z) misses one. With
    one learnt global σ started at 0.1 (table 2) that way is much harder to take (Adam moves one scale
    slowly, so reconstruction dominates and the plain ELBO must use z). Tables 1 and 2 show what each
    likelihood does to each arm (the likelihood σ and component columns say whether an arm took that way);
    the verdict is judged on the paper's likelihood.
    """
)
_CLUSTERING_COLUMNS = paragraph(
    f"""
    A run uses a prior component when that component is the nearest (Euclidean) to at least
    {100 * MIN_OCCUPANCY:g}% of the held-out encoder means; the column counts the seeds whose encodings use
    fewer than {PINWHEEL_COMPONENTS}. Likelihood σ: the mean of the decoder's predicted scale at the held-out
    encoder means, or, with a global scale, the mean of the learnt scale.
    """
)


_INDEPENDENCE_COLLAPSE = paragraph(
    f"""
    **Collapse.** A run has collapsed when its encoder means barely vary: the largest variance over the
    evaluation points of one coordinate of the encoder mean E_q[z_d|x] is below {ACTIVE_VARIANCE:g}, i.e.
    no latent dimension is active in the sense of Burda, Grosse & Salakhutdinov (2016, §5.2), whose
    threshold this is. The priors have variances of about 1 per dimension, so a dimension that encodes x
    has a variance of its means of order 1 and one that ignores x near 0; a collapsed run's codes carry
    nothing about x and its disentanglement score is noise. The "collapsed runs" column counts them per arm,
    and the last table repeats the paired differences over the seeds where neither run of a pair collapsed.
    """
)


def _uncollapsed_table(result: Dict[str, Any]) -> str:
    header = [
        "prior",
        "β",
        "collapsed runs (prior / isotropic)",
        "pairs where neither collapsed",
        "Δ disentanglement ± SE (those pairs)",
    ]
    rows = []
    for r in uncollapsed_differences(result):
        diff = r["disentanglement"]
        shown = "–" if diff is None else f"{diff[0]:+.3f}"
        if diff is not None and diff[1] is not None:
            shown += f" ± {diff[1]:.3f}"
        rows.append(
            [
                r["label"],
                fmt_number(r["beta"]),
                f"{r['collapsed'][0]} / {r['collapsed'][1]}",
                r["pairs"],
                shown,
            ]
        )
    return _markdown_table(header, rows)


def _arms_table(result: Dict[str, Any], arms: Sequence[Dict[str, Any]]) -> str:
    columns = COLUMNS[result["experiment"]]
    header = ["arm", "prior", "β", "α", "D"] + [c[1] for c in columns] + ["train s / run"]
    rows = []
    for arm in arms:
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
    return _markdown_table(header, rows)


def _paired_table(result: Dict[str, Any]) -> str:
    header = [
        "prior",
        "β",
        "seeds",
        "Δ disentanglement ± SE",
        "Δ −E log p(x|z) (nats/image) ± SE",
        "Δ reconstruction error",
    ]
    rows = []
    for r in independence_differences(result):
        (dis, dis_se, n), (err, err_se, _) = r["disentanglement"], r["reconstruction_error"]
        rows.append(
            [
                r["label"],
                fmt_number(r["beta"]),
                n,
                f"{dis:+.3f}" + ("" if dis_se is None else f" ± {dis_se:.3f}"),
                f"{err:+.1f}" + ("" if err_se is None else f" ± {err_se:.1f}"),
                f"{100 * r['relative_cost']:+.1f}%",
            ]
        )
    return _markdown_table(header, rows)


def _not_judged_line(result: Dict[str, Any]) -> List[str]:
    """The line above each table of an experiment with too few seeds for a verdict (else nothing)."""
    note = not_judged(result)
    if note is None:
        return []
    return [f"*{note[0].upper()}{note[1:]}: no spread over seeds, so no difference below is evidence.*", ""]


def _run_minutes(result: Dict[str, Any]) -> float:
    """Minutes of training and evaluation summed over the runs of ``result`` (a run's training time is its
    epochs' own, also when the run was resumed or found finished)."""
    return sum(r.get("train_seconds", 0.0) + r.get("eval_seconds", 0.0) for r in result["runs"]) / 60


def _section(result: Dict[str, Any], base: Path) -> str:
    """The report's section of one experiment; its links are relative to the directory ``base``."""
    name = result["experiment"]
    settings = result["settings"]
    lines = [f"## {_TITLES[name]}", "", f"**The paper's claim.** {result['claim']}", ""]
    verdict = result["verdict"]
    lines += [
        f"**At the `{result['scale']}` scale: {verdict['status']}.** {verdict['rule']} {verdict['evidence']}",
        "",
    ]
    if result["scale"] == "smoke":
        lines += [
            "The `smoke` scale checks that everything runs; its numbers are not evidence either way.",
            "",
        ]
    if name == "clustering":
        lines += [_CLUSTERING_NOTES, "", _CLUSTERING_LIKELIHOOD, ""]
    data = settings["dataset"]
    if result["stand_in"]:
        lines += [f"**Data.** Not the paper's: {result['stand_in']}.", ""]
    else:
        lines += [f"**Data.** `{data}` with options `{json.dumps(settings['data_options'])}`.", ""]
    by_setting = {
        a.get("setting") or a["name"]: a["network_options"]
        for a in result["arms"]
        if a.get("network_options")
    }
    overridden = {key for options in by_setting.values() for key in options}
    shared_options = {k: v for k, v in settings["network_options"].items() if k not in overridden}
    networks = f"`{settings['network']}` {json.dumps(shared_options)}"
    likelihood = f"{settings['likelihood']} (scale {settings['likelihood_scale']})"
    if by_setting:
        networks += "; per setting: " + ", ".join(f"{k} {json.dumps(v)}" for k, v in by_setting.items())
        if any("scale" in v for v in by_setting.values()):
            likelihood = (
                f"{settings['likelihood']}, its scale per setting (a global one starts at "
                f"{settings['likelihood_scale']})"
            )
    shared = [
        ("data set", f"`{data}` {json.dumps(settings['data_options'])}"),
        ("latent dimensions", settings["latent_dim"]),
        ("networks", networks),
        ("likelihood", likelihood),
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
    lines += [
        f"Mean ± standard deviation over {len(settings['seeds'])} seed(s) (a single value: one seed).",
        "",
    ]
    if name == "clustering":
        lines += [_CLUSTERING_COLUMNS, ""]
    groups = list(dict.fromkeys(a.get("setting", "") for a in result["arms"]))
    for i, setting in enumerate(groups):
        if len(groups) > 1 or setting:
            title = _SETTING_TITLES.get(setting, setting)
            judged = " (the verdict)" if name == "clustering" and setting == "decoder" else ""
            lines += [f"**Table {i + 1}: {title}{judged}.**", ""]
        lines += _not_judged_line(result)
        lines += [_arms_table(result, [a for a in result["arms"] if a.get("setting", "") == setting]), ""]
    if name == "independence":
        lines += [
            "Each non-isotropic prior against the isotropic prior at the same β, paired by seed: the mean of "
            "the per-seed differences (prior − isotropic) ± its standard error (sd of the differences / √n), "
            "and the mean difference in reconstruction error relative to the isotropic prior's.",
            "",
            *_not_judged_line(result),
            _paired_table(result),
            "",
        ]
        if uncollapsed_differences(result):
            lines += [_INDEPENDENCE_COLLAPSE, "", _uncollapsed_table(result), ""]
        else:
            lines += [
                'These runs were measured before collapse was counted (the "collapsed runs" column is '
                "empty); the same command counts it.",
                "",
            ]
        lines += [paper_code_reference(result), "", TWENTY_EPOCHS_REFERENCE, ""]
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
        rel = os.path.relpath(figure["path"], base)
        lines += [f"![{figure['caption']}]({rel})", f"*{figure['caption']}*", ""]
    curves = [r for r in result["runs"] if "curves" in r["figures"]]
    if curves:
        lines += [
            "Training curves: "
            + ", ".join(
                f"[{r['arm']} seed {r['seed']}]({os.path.relpath(r['figures']['curves'], base)})"
                for r in curves
            )
            + ".",
            "",
        ]
    lines += [
        f"Training and evaluating the {len(result['runs'])} runs took {_run_minutes(result):.1f} minutes in "
        f"all; the command that measured them ran {result['seconds'] / 60:.1f} minutes (runs it found "
        "finished are evaluated, not trained again).",
        "",
        "Regenerate with:",
        "",
        "```bash",
        result["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def kept_results(results: Sequence[Dict[str, Any]], out) -> List[Dict[str, Any]]:
    """``results`` together with the experiments of ``out/results.json`` that ``results`` does not hold and
    that were measured at the same scale, in the order of :data:`EXPERIMENTS`: regenerating one experiment
    keeps the others in the report. A ``results.json`` that cannot be read keeps nothing, with a warning."""
    stored: List[Dict[str, Any]] = []
    path = Path(out) / "results.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if not isinstance(stored, list) or not all(isinstance(r, dict) for r in stored):
                raise ValueError("expected a list of experiments")
        except (OSError, ValueError) as e:
            warnings.warn(
                f"{path} cannot be read ({e}); the report holds only the experiments just run", stacklevel=2
            )
            stored = []
    fresh = {r["experiment"] for r in results}
    scales = {r["scale"] for r in results}
    kept = [r for r in stored if r.get("experiment") not in fresh and r.get("scale") in scales]
    order = {name: i for i, name in enumerate(EXPERIMENTS)}
    return sorted([*results, *kept], key=lambda r: order.get(r["experiment"], len(order)))


def write_report(
    results: Sequence[Dict[str, Any]], out, command: Optional[str] = None, report=None, keep: bool = True
) -> str:
    """Write the markdown report (and ``out/results.json``) from the results of :func:`run_experiment`.

    :param command: the command that regenerates the whole report (written at its top).
    :param report: where the report goes (default ``out/report.md``); its links to the figures under
        ``out`` are relative to its own directory.
    :param keep: keep the other experiments of ``out/results.json`` measured at the same scale
        (:func:`kept_results`); the table at the top says when each experiment was measured.
    :returns: the path of the report.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(report) if report is not None else out / "report.md"
    if path.suffix.lower() != ".md" or path.is_dir():
        raise ValueError(f"--report {path}: expected the path of a markdown file (ending in .md)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep:
        results = kept_results(results, out)

    scales = sorted({r["scale"] for r in results})
    workers = max((int(r.get("workers", 1)) for r in results), default=1)
    lines = [
        "# Disentangling Disentanglement: reproduction report",
        "",
        f"pyro_decomp {__version__}; scale {', '.join(f'`{s}`' for s in scales)}; written "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} on "
        + (
            f"{workers} worker processes of one CPU thread each"
            if workers > 1
            else f"{torch.get_num_threads()} CPU thread(s)"
        )
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
            ["experiment", "claim at this scale", "runs", "run minutes", "measured"],
            [
                [
                    f"[{r['experiment']}](#{_anchor(_TITLES[r['experiment']])})",
                    r["verdict"]["status"],
                    len(r["runs"]),
                    f"{_run_minutes(r):.1f}",
                    r.get("measured", "–"),
                ]
                for r in results
            ],
        ),
        "",
        "Run minutes: the time of training and evaluating every run, summed over the runs (each on one CPU "
        "thread); with two workers the wall time is about half.",
        "",
    ]
    for result in results:
        lines.append(_section(result, path.parent))
    # each file whole or not at all: a kill or a full disk leaves the previous one
    _write_text(out / "results.json", json.dumps(list(results), indent=2, sort_keys=True))
    _write_text(
        out / ".gitignore",
        "# the training runs (checkpoints and logs) are large and regenerated by the report's command\n"
        "*/runs/\n",
    )
    _write_text(path, "\n".join(lines))
    return str(path)


def _write_text(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text.encode("utf-8"))
