"""Reproducing the experiments end to end at the smoke scale: the report, its figures, resuming."""

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_sweep import LINUX, descendants, wait_gone

from pyro_decomp.cli import build_parser
from pyro_decomp.experiments import experiment_config, reproduce, run_experiment

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reproduce")
    path = reproduce("all", "smoke", out, log=None)
    return Path(path), out


NUMBER = r"-?\d+\.\d+(?: ± \d+\.\d+)?"


def test_reproduce_all_smoke_writes_a_well_formed_report(smoke_report):
    path, out = smoke_report
    assert path == out / "report.md"
    text = path.read_text()
    assert "pyro-decomp reproduce all --scale smoke --out" in text
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert [h.split(":")[0] for h in headings] == ["Clustering", "Independence", "Sparsity"]
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    headline = re.split(r"^## ", text, flags=re.M)[0]
    assert headline.count("| not judged (1 seed) |") == 3  # the headline table: no verdict on one seed
    results = json.loads((out / "results.json").read_text())
    for section, result in zip(sections, results):
        assert "**The paper's claim.**" in section and "Regenerate with:" in section
        # one seed per arm: no verdict, in the section's headline and above every table
        assert "**At the `smoke` scale: not judged (1 seed).**" in section
        shown_tables = section.count("| arm |") + section.count("| prior | β | seeds |")
        assert section.count("*Not judged (1 seed):") == shown_tables
        # the results table: one row per arm, every metric cell a number
        rows = [line for line in section.splitlines() if line.startswith("| ") and "|---" not in line]
        metric_rows = [r for r in rows if r.count("|") > 8]
        tables = len({a["setting"] for a in result["arms"]})  # one table per setting of the arms
        assert len(metric_rows) == tables + len(result["arms"])  # a header per table + arms
        for row in [r for r in metric_rows if not r.startswith("| arm |")]:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
            numbers = [c for c in cells[5:] if re.fullmatch(NUMBER + "|\\d+", c)]
            assert len(numbers) == len(cells) - 5, row
        # every figure the report shows exists and is a PNG
        links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section)
        assert links
        for link in links:
            figure = out / link
            assert figure.read_bytes()[:8] == PNG_SIGNATURE
    for result in results:
        assert len(result["runs"]) == len(result["arms"]) * len(result["settings"]["seeds"])
        for run in result["runs"]:
            assert run["metrics"] and all(math.isfinite(v) for v in run["metrics"].values())
            assert Path(run["run_dir"], "checkpoint.pt").exists()
    by_name = {r["experiment"]: r for r in results}
    assert set(by_name["clustering"]["runs"][0]["metrics"]) >= {"ari", "inclusive_kl", "reconstruction"}
    assert set(by_name["clustering"]["runs"][0]["metrics"]) >= {"components_used", "decoder_scale"}
    assert set(by_name["independence"]["runs"][0]["metrics"]) >= {
        "disentanglement",
        "mig",
        "reconstruction_error",
    }
    assert set(by_name["sparsity"]["runs"][0]["metrics"]) >= {"hoyer", "iwae", "divergence"}
    assert "Not the paper's" in sections[2]  # the sparsity experiment says that the shapes stand in
    assert (out / ".gitignore").read_text().strip().endswith("*/runs/")


def test_smoke_report_clustering_has_both_likelihoods(smoke_report):
    path, out = smoke_report
    clustering = re.split(r"^## ", path.read_text(), flags=re.M)[1]
    result = json.loads((out / "results.json").read_text())[0]
    assert [a["name"] for a in result["arms"]] == [
        "decoder_beta1_alpha0",
        "decoder_beta0_alpha1",
        "global_beta1_alpha0",
        "global_beta0_alpha1",
        "paper_beta1_alpha0",
        "paper_beta0_alpha1",
    ]
    # the paper's likelihood first, with the verdict; the global scale second
    assert clustering.index("**Table 1: the paper's likelihood") < clustering.index(
        "**Table 2: one learnt global"
    )
    assert "doubles log p(z)" in clustering and "Why the verdict depends on the likelihood" in clustering
    assert "at least 5% of the held-out encoder means" in clustering
    for run in result["runs"]:
        assert 1 <= run["metrics"]["components_used"] <= 4 and run["metrics"]["decoder_scale"] > 0
    # the global scale starts at 0.1 and moves little in 10 epochs
    scales = {r["arm"]: r["metrics"]["decoder_scale"] for r in result["runs"]}
    assert 0.05 < scales["global_beta1_alpha0"] < 0.2
    # one figure of both arms' encodings per likelihood
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", clustering)
    assert "clustering/figures/encodings_decoder_seed0.png" in links
    assert "clustering/figures/encodings_global_seed0.png" in links
    # the paper's β term: a third table, the same columns
    assert clustering.index("**Table 2: one learnt global") < clustering.index(
        "**Table 3: the paper's β term"
    )
    assert "clustering/figures/encodings_paper_seed0.png" in links


def test_smoke_report_independence_has_paired_differences(smoke_report):
    path, out = smoke_report
    independence = re.split(r"^## ", path.read_text(), flags=re.M)[2]
    result = json.loads((out / "results.json").read_text())[1]
    assert "Rule (paired by seed)" in independence
    # the rule is stated before the numbers
    assert independence.index("Rule (paired by seed)") < independence.index("disentanglement gain beyond")
    header = next(line for line in independence.splitlines() if "Δ disentanglement ± SE" in line)
    rows = independence.splitlines()[independence.splitlines().index(header) + 2 :]
    rows = rows[: next(i for i, line in enumerate(rows) if not line.startswith("|"))]
    priors = {a["group"] for a in result["arms"]} - {"iso"}
    betas = {a["beta"] for a in result["arms"]}
    assert len(rows) == len(priors) * len(betas)
    # collapse counted per arm, the pairs where neither collapsed, and the paper's own code quoted
    assert "**Collapse.**" in independence and "pairs where neither collapsed" in independence
    assert "**The paper's own code at the same scale (a measured reference).**" in independence
    assert "ascending order" in independence  # svds's order of the paper's PCA variances
    assert all("max_code_variance" in r["metrics"] for r in result["runs"])
    # traversals of each prior's best β
    assert len(re.findall(r"_traversals\.png\)", independence)) == len(priors) + 1


def test_parallel_and_sequential_measure_the_same(smoke_report, tmp_path):
    """The smoke report ran its runs two at a time in worker processes; one after the other in this process
    (one thread, as the workers) they measure the same."""
    _, out = smoke_report
    parallel = json.loads((out / "results.json").read_text())[0]
    assert parallel["experiment"] == "clustering" and parallel["workers"] == 2
    sequential = run_experiment(experiment_config("clustering", "smoke"), tmp_path, log=None, workers=1)
    assert sequential["workers"] == 1
    assert [(r["arm"], r["seed"]) for r in sequential["runs"]] == [
        (r["arm"], r["seed"]) for r in parallel["runs"]
    ]
    for a, b in zip(sequential["runs"], parallel["runs"]):
        assert a["metrics"] == b["metrics"], a["arm"]


def test_reproduce_resumes_finished_runs_and_evaluates_the_same(smoke_report):
    _, out = smoke_report
    stored = json.loads((out / "results.json").read_text())
    before = {(r["arm"], r["seed"]): r for r in stored[0]["runs"]}
    report = out / "elsewhere" / "clustering.md"
    args = build_parser().parse_args(
        ["reproduce", "clustering", "--scale", "smoke", "--out", str(out), "--report", str(report)]
    )
    assert args.func(args, args.subparser) == 0  # the calling convention of pyro_decomp.cli.main
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report.read_text())
    assert any(link.startswith("../clustering/figures/") for link in links)
    assert all(link.startswith("../") for link in links)
    assert all((report.parent / link).is_file() for link in links)  # relative to the report, and there
    after = json.loads((out / "results.json").read_text())
    # the experiment run again replaces its own entry; the others are kept as they were, in their order
    assert [r["experiment"] for r in after] == ["clustering", "independence", "sparsity"]
    assert after[1:] == stored[1:] and after[0]["measured"] == stored[0]["measured"][:10]
    headings = re.findall(r"^## (\w+)", report.read_text(), flags=re.M)
    assert headings == ["Clustering", "Independence", "Sparsity"]
    for run in after[0]["runs"]:
        old = before[(run["arm"], run["seed"])]
        assert run["metrics"] == old["metrics"]  # same weights (no retraining), same evaluation draws
        assert run["train_seconds"] == old["train_seconds"]


@LINUX
def test_reproduce_workers_die_with_their_parent_on_sigkill(tmp_path):
    """``kill -9`` of ``pyro-decomp reproduce --workers 2`` while its workers train: both workers and
    multiprocessing's resource tracker exit too (no process is left re-parented to init)."""
    command = [sys.executable, "-m", "pyro_decomp", "reproduce", "clustering", "--scale", "smoke"]
    command += ["--out", str(tmp_path), "--workers", "2"]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "clustering" / "runs"
    deadline = time.monotonic() + 300
    # both workers have started a run (each holds a run directory's lock)
    while len(list(runs.glob("*/.lock"))) < 2 and parent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    children = descendants(parent.pid)
    parent.kill()
    parent.wait()
    assert len(children) >= 3, children  # two workers and the resource tracker
    assert not wait_gone(children), "orphaned processes"
