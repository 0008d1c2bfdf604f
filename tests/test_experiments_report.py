"""The reproduction report from measured results, without training: verdicts only on seeds enough, every
table and headline saying so otherwise, tables and commands well formed."""

import dataclasses
import json
import pathlib
import re

import pytest

from pyro_decomp.experiments import experiment_config
from pyro_decomp.experiments.report import _anchor, _markdown_table, command, kept_results, write_report
from pyro_decomp.experiments.verdicts import CLAIMS, VERDICTS


def clustering_result(seeds):
    """A clustering result as the runner writes it, with made-up measurements: the α arms cluster better."""
    config = experiment_config("clustering", "smoke")
    arms = [
        {
            **dataclasses.asdict(arm),
            "prior_options": dict(arm.prior_options),
            "network_options": dict(arm.network_options),
            "label": arm.label or arm.name,
        }
        for arm in config.arms
    ]
    runs = []
    for arm in arms:
        for seed in seeds:
            ari = (0.9 if arm["alpha"] > 0 else 0.4) + 0.01 * seed
            metrics = {"ari": ari, "components_used": 4.0, "decoder_scale": 0.1, "inclusive_kl": 0.2}
            metrics.update(mmd=0.01, mutual_information=1.0, reconstruction=-1.0)
            runs.append(
                {"arm": arm["name"], "seed": seed, "metrics": metrics, "train_seconds": 1.0, "figures": {}}
            )
    settings = {**config.settings(), "seeds": list(seeds)}
    result = {
        "experiment": "clustering",
        "scale": "smoke",
        "claim": CLAIMS["clustering"],
        "stand_in": "",
        "settings": settings,
        "arms": arms,
        "runs": runs,
        "seconds": 60.0,
        "workers": 1,
        "figures": [],
        "command": "pyro-decomp reproduce clustering --scale smoke --out x",
    }
    result["verdict"] = VERDICTS["clustering"](result)
    return result


def test_one_seed_is_not_judged_in_the_headline_and_above_every_table(tmp_path):
    result = clustering_result([0])
    assert result["verdict"]["status"] == "not judged (1 seed)"
    text = open(write_report([result], tmp_path)).read()
    headline, section = re.split(r"^## ", text, flags=re.M)
    assert "| [clustering](#clustering-pinwheel-with-a-mixture-prior) | not judged (1 seed) |" in headline
    assert "**At the `smoke` scale: not judged (1 seed).**" in section
    tables = section.count("| arm |")
    assert tables == 3 and section.count("*Not judged (1 seed):") == tables  # three likelihood settings
    for line in section.splitlines():  # no verdict word anywhere a reader looks first
        if line.startswith("**At the") or line.startswith("| ["):
            assert not re.search(r"\b(held|did not hold)\b(?!-)", line), line
    assert (
        json.loads((tmp_path / "results.json").read_text())[0]["verdict"]["status"] == "not judged (1 seed)"
    )


def test_three_seeds_are_judged_by_the_rule(tmp_path):
    result = clustering_result([0, 1, 2])
    assert result["verdict"]["status"] == "held"
    text = open(write_report([result], tmp_path, command="pyro-decomp reproduce all")).read()
    assert "not judged (" not in text.split("## ")[1].split("**At the")[1].splitlines()[0]
    assert "*Not judged" not in text and "| held |" in text
    assert "Regenerate this report with:" in text and "pyro-decomp reproduce all" in text
    assert (tmp_path / ".gitignore").read_text().strip().endswith("*/runs/")


def test_tables_escape_pipes_and_commands_quote_paths():
    table = _markdown_table(["a|b", "c"], [["x|y", 1]])
    assert table.splitlines() == ["| a\\|b | c |", "|---|---|", "| x\\|y | 1 |"]
    line = command("all", "cpu", "my results", [0, 1], "data dir", threads=1)
    expected = "pyro-decomp reproduce all --scale cpu --out 'my results' --seeds 0 1 --data-root 'data dir'"
    assert line == expected + " --threads 1"
    assert _anchor("Clustering: pinwheel with a mixture prior") == "clustering-pinwheel-with-a-mixture-prior"


def test_a_report_elsewhere_links_its_figures_relative_to_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the runner records figure paths as it was given --out: here relative
    result = clustering_result([0, 1, 2])
    figure = tmp_path / "out" / "clustering" / "figures" / "encodings.png"
    figure.parent.mkdir(parents=True)
    figure.write_bytes(b"png")
    result["figures"] = [{"path": "out/clustering/figures/encodings.png", "caption": "encodings"}]
    path = write_report(
        [result],
        "out",
        command=command("all", "cpu", "out", None, None, report="docs/r.md"),
        report="docs/r.md",
    )
    assert path == "docs/r.md" and not (tmp_path / "out" / "report.md").exists()
    text = (tmp_path / "docs" / "r.md").read_text()
    assert "![encodings](../out/clustering/figures/encodings.png)" in text
    assert (tmp_path / "docs" / "../out/clustering/figures/encodings.png").resolve() == figure
    assert "--report docs/r.md" in text and (tmp_path / "out" / "results.json").exists()
    for bad in ("docs/r.txt", "out"):  # not a markdown file, or a directory
        with pytest.raises(ValueError, match="--report .*: expected the path of a markdown file"):
            write_report([result], "out", report=bad)


def test_the_twenty_epoch_reference_quotes_its_stored_measurements():
    """The report's 20-epoch paragraph is written by hand; its numbers must be those of the runs stored
    beside the report (recomputed here from the per-run metrics)."""
    from pyro_decomp.experiments.references import TWENTY_EPOCHS_REFERENCE as text
    from pyro_decomp.experiments.verdicts import collapsed_runs, paired_difference, paired_values

    stored = pathlib.Path(__file__).resolve().parents[1] / "docs" / "results" / "independence_20_epochs.json"
    assert "`independence_20_epochs.json`" in text
    result = json.loads(stored.read_text())
    assert result["settings"]["epochs"] == 20 and result["settings"]["seeds"] == [0, 1, 2, 3, 4]
    for key, name, digits in [
        ("disentanglement", "Kim & Mnih disentanglement", 3),
        ("mig", "MIG", 3),
        ("dci", "DCI", 3),
        ("sap", "SAP", 3),
        ("reconstruction_error", "reconstruction error", 1),
    ]:
        mean, se, n = paired_difference(*paired_values(result, "pca_beta4", "iso_beta4", key))
        assert n == 5
        assert f"{name} {mean:+.{digits}f} ± {se:.{digits}f}" in text, key
    assert not collapsed_runs(result) and "No run collapsed" in text
    active = [r["metrics"]["active_dimensions"] for r in result["runs"]]
    assert f"{min(active):.0f} to {max(active):.0f} active dimensions" in text


def test_the_report_keeps_other_experiments_of_the_same_scale_only(tmp_path):
    stored = [dict(clustering_result([0, 1, 2]), measured="2026-11-30")]
    stored.append(dict(stored[0], experiment="sparsity", scale="cpu"))  # another scale: not kept
    (tmp_path / "results.json").write_text(json.dumps(stored))
    fresh = dict(clustering_result([0, 1, 2]), experiment="clustering", measured="2026-12-03")
    assert kept_results([fresh], tmp_path) == [fresh]  # the same experiment: replaced
    other = dict(stored[0], experiment="independence", measured="2026-12-03")
    merged = kept_results([other], tmp_path)
    assert [(r["experiment"], r["measured"]) for r in merged] == [
        ("clustering", "2026-11-30"),  # kept, and first: the order of EXPERIMENTS
        ("independence", "2026-12-03"),
    ]
    text = open(write_report([fresh], tmp_path)).read()
    # 3 settings x 2 arms x 3 seeds of 1 s each, and when they were measured
    assert "| held | 18 | 0.3 | 2026-12-03 |" in text
    assert write_report([fresh], tmp_path, keep=False)  # without keeping, only what was given
    assert [r["experiment"] for r in json.loads((tmp_path / "results.json").read_text())] == ["clustering"]
    (tmp_path / "results.json").write_text("{not json")
    with pytest.warns(UserWarning, match="results.json cannot be read"):
        assert kept_results([other], tmp_path) == [other]
