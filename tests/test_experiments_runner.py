"""Reproducing the experiments end to end at the smoke scale: the report, its figures, resuming."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from pyro_decomp.cli import build_parser
from pyro_decomp.experiments import reproduce

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
    results = json.loads((out / "results.json").read_text())
    for section, result in zip(sections, results):
        assert "**The paper's claim.**" in section and "Regenerate with:" in section
        assert re.search(r"\*\*At the `smoke` scale: (held|did not hold|partly held)", section)
        # the results table: one row per arm, every metric cell a number
        rows = [line for line in section.splitlines() if line.startswith("| ") and "|---" not in line]
        metric_rows = [r for r in rows if r.count("|") > 8]
        assert len(metric_rows) == 1 + len(result["arms"])  # header + arms
        for row in metric_rows[1:]:
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
    assert set(by_name["independence"]["runs"][0]["metrics"]) >= {
        "disentanglement",
        "mig",
        "reconstruction_error",
    }
    assert set(by_name["sparsity"]["runs"][0]["metrics"]) >= {"hoyer", "iwae", "divergence"}
    assert "Not the paper's" in sections[2]  # the sparsity experiment says that the shapes stand in
    assert (out / ".gitignore").read_text().strip().endswith("*/runs/")


def test_reproduce_resumes_finished_runs_and_evaluates_the_same(smoke_report):
    _, out = smoke_report
    before = {(r["arm"], r["seed"]): r for r in json.loads((out / "results.json").read_text())[0]["runs"]}
    args = build_parser().parse_args(["reproduce", "clustering", "--scale", "smoke", "--out", str(out)])
    assert args.func(args, args.subparser) == 0  # the calling convention of pyro_decomp.cli.main
    after = json.loads((out / "results.json").read_text())
    assert [r["experiment"] for r in after] == ["clustering"]
    for run in after[0]["runs"]:
        old = before[(run["arm"], run["seed"])]
        assert run["metrics"] == old["metrics"]  # same weights (no retraining), same evaluation draws
        assert run["train_seconds"] == old["train_seconds"]
