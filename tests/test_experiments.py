import argparse
import itertools
import json
import math
import re
from pathlib import Path

import pytest
import torch

from pyro_decomp.experiments import (
    EXPERIMENTS,
    SCALES,
    Arm,
    add_reproduce_parser,
    adjusted_rand_index,
    experiment_config,
    reproduce,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------- ARI
def brute_force_ari(a, b):
    """Hubert & Arabie's index by counting every pair of points once (a loop over the N(N-1)/2 pairs)."""
    both = same_a = same_b = 0
    pairs = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        sa, sb = a[i] == a[j], b[i] == b[j]
        both += sa and sb
        same_a += sa
        same_b += sb
        pairs += 1
    expected = same_a * same_b / pairs
    maximum = (same_a + same_b) / 2
    return 1.0 if maximum == expected else (both - expected) / (maximum - expected)


def test_ari_hand_examples():
    # [0,0,1,1] vs [0,0,1,2]: table n_ij = {2, 1, 1} -> Σ C(n_ij) = 1; rows (2, 2) -> 2;
    # columns (2, 1, 1) -> 1; C(4) = 6, E = 2·1/6 = 1/3, max = 3/2: ARI = (1 − 1/3) / (3/2 − 1/3) = 4/7
    assert adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 2])) == pytest.approx(4 / 7)
    # [0,0,0,1,1,1] vs [0,0,1,1,2,2]: Σ C(n_ij) = 2; rows 3 + 3 = 6; columns 1 + 1 + 1 = 3; C(6) = 15,
    # E = 6·3/15 = 1.2, max = 4.5: ARI = 0.8 / 3.3 = 8/33
    a, b = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(a, b) == pytest.approx(8 / 33)
    # perfectly anti-aligned pairs: [0,0,1,1] vs [0,1,0,1]: Σ C(n_ij) = 0, rows 2, columns 2, E = 4/6,
    # max = 2: ARI = (0 − 2/3) / (2 − 2/3) = −1/2
    assert adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])) == pytest.approx(-0.5)


def test_ari_matches_pair_counting_and_invariances():
    gen = torch.Generator().manual_seed(0)
    for n, ka, kb in ((30, 3, 4), (41, 5, 2), (25, 1, 3), (20, 20, 4)):
        a = torch.randint(0, ka, (n,), generator=gen)
        b = torch.randint(0, kb, (n,), generator=gen)
        expected = brute_force_ari(a.tolist(), b.tolist())
        assert adjusted_rand_index(a, b) == pytest.approx(expected, abs=1e-12)
        # symmetric, and only the partitions matter: relabel both with arbitrary values
        assert adjusted_rand_index(b, a) == pytest.approx(expected, abs=1e-12)
        relabel = torch.randperm(ka, generator=gen) * 7 - 3
        assert adjusted_rand_index(relabel[a], b) == pytest.approx(expected, abs=1e-12)
    labels = torch.randint(0, 4, (50,), generator=gen)
    assert adjusted_rand_index(labels, (labels + 1) % 4) == 1.0
    assert adjusted_rand_index(torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long)) == 1.0


def test_ari_is_zero_in_expectation_under_permutation():
    # ARI is corrected for chance under the permutation model: E[ARI] = 0 exactly when b is a random
    # permutation of fixed labels. The mean of M = 400 permutations is within 4 standard errors (its spread
    # over those permutations / √M) of 0.
    gen = torch.Generator().manual_seed(1)
    a = torch.arange(4).repeat_interleave(50)
    b = torch.arange(5).repeat(40)
    values = torch.tensor([adjusted_rand_index(a, b[torch.randperm(200, generator=gen)]) for _ in range(400)])
    se = values.std() / math.sqrt(len(values))
    assert abs(float(values.mean())) < 4 * float(se)


def test_ari_errors():
    with pytest.raises(ValueError, match="same length"):
        adjusted_rand_index(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        adjusted_rand_index(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least 2"):
        adjusted_rand_index(torch.tensor([0]), torch.tensor([0]))


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("scale", SCALES)
def test_every_config_validates(name, scale):
    config = experiment_config(name, scale)
    assert config.validate() is config
    assert len(config.seeds) >= 1
    for arm in config.arms:
        run = config.run_config(arm, config.seeds[0]).resolved()
        assert (run.beta, run.alpha, run.prior) == (arm.beta, arm.alpha, arm.prior)


def test_paper_scale_is_the_papers_settings():
    c = experiment_config("clustering", "paper").run.resolved()
    assert (c.latent_dim, c.network, c.likelihood, c.batch_size, c.lr, c.epochs) == (
        2,
        "mlp",
        "normal",
        400,
        1e-3,
        500,
    )
    arms = experiment_config("clustering", "paper").arms
    assert {(a.beta, a.alpha, a.divergence, a.prior) for a in arms} == {
        (1.0, 0.0, "inclusive-kl", "pinwheel"),
        (0.0, 1.0, "inclusive-kl", "pinwheel"),
    }
    ind = experiment_config("independence", "paper")
    c = ind.run.resolved()
    assert (c.latent_dim, c.network, c.likelihood, c.batch_size, c.lr, c.epochs) == (
        10,
        "conv64",
        "bernoulli",
        64,
        5e-4,
        20,
    )
    assert ind.run.data_options.get("subsample") == {}  # the whole grid
    assert {a.beta for a in ind.arms} >= {1.0, 2.0, 4.0, 8.0}
    assert {a.group for a in ind.arms} == {"iso", "pca", "learnt", "student-t"}
    t = next(a for a in ind.arms if a.group == "student-t")
    assert t.prior_options == {"df": 9.0}
    sp = experiment_config("sparsity", "paper")
    c = sp.run.resolved()
    assert (c.latent_dim, c.network, c.likelihood, c.likelihood_scale, c.batch_size, c.lr, c.epochs) == (
        50,
        "dcgan32",
        "laplace",
        0.1,
        500,
        5e-4,
        80,
    )
    grid = {(a.prior_options["gamma"], a.alpha) for a in sp.arms}
    assert grid >= {(0.0, 0.0), (0.0, 100.0), (0.8, 0.0), (0.8, 100.0)}
    assert {a.divergence for a in sp.arms} == {"mmd"}  # the per-dimension IMQ kernel


def test_data_root_selects_the_real_data(tmp_path):
    assert experiment_config("independence", "cpu", data_root=str(tmp_path)).run.dataset == "shapes"
    (tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz").write_bytes(b"")
    config = experiment_config("independence", "cpu", data_root=str(tmp_path))
    assert config.run.dataset == "dsprites" and config.subset_steps and not config.stand_in
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (raw / name).write_bytes(b"")
    assert experiment_config("sparsity", "cpu", data_root=str(tmp_path)).stand_in  # one file missing
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    config = experiment_config("sparsity", "cpu", data_root=str(tmp_path))
    assert config.run.dataset == "fashion-mnist" and not config.stand_in
    assert experiment_config("sparsity", "smoke", data_root=str(tmp_path)).stand_in  # smoke: always built in


def test_config_errors():
    with pytest.raises(ValueError, match="'bogus'"):
        experiment_config("bogus", "cpu")
    with pytest.raises(ValueError, match="'huge'"):
        experiment_config("clustering", "huge")
    with pytest.raises(ValueError, match="-1"):
        experiment_config("clustering", "smoke", seeds=[-1])
    with pytest.raises(ValueError, match="distinct"):
        experiment_config("clustering", "smoke", seeds=[3, 3])
    with pytest.raises(ValueError, match="at least one seed"):
        experiment_config("clustering", "smoke", seeds=[])
    config = experiment_config("clustering", "smoke")
    config.evaluation["votes"] = 3
    with pytest.raises(ValueError, match="votes"):
        config.validate()
    config = experiment_config("clustering", "smoke")
    config.evaluation["divergence_points"] = 0
    with pytest.raises(ValueError, match="divergence_points"):
        config.validate()
    config = experiment_config("clustering", "smoke")
    config.arms = config.arms + (config.arms[0],)
    with pytest.raises(ValueError, match="unique"):
        config.validate()
    config.arms = (Arm("bad", "pinwheel", -1.0, 0.0, "inclusive-kl"),)
    with pytest.raises(ValueError, match="beta"):
        config.validate()
    config.arms = (Arm("bad", "laplace", 1.0, 0.0, "mmd"),)
    with pytest.raises(ValueError, match="'laplace'"):
        config.validate()
    with pytest.raises(ValueError, match="'nope'"):
        reproduce("nope", "smoke", "unused")


def test_reproduce_parser():
    parser = argparse.ArgumentParser(prog="pyro-decomp")
    add_reproduce_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["reproduce", "all", "--scale", "cpu", "--out", "d", "--seeds", "0", "2"])
    assert (args.experiment, args.scale, args.out, args.seeds, args.data_root) == (
        "all",
        "cpu",
        "d",
        [0, 2],
        None,
    )
    assert callable(args.func) and args.subparser is not None
    args = parser.parse_args(["reproduce", "clustering", "--scale", "smoke", "--out", "d", "--seeds", "-1"])
    with pytest.raises(SystemExit) as exit_info:  # a bad value is a usage error that names it
        args.func(args, args.subparser)
    assert exit_info.value.code == 2
    for bad in (
        ["reproduce", "nothing", "--scale", "cpu", "--out", "d"],
        ["reproduce", "all", "--scale", "tiny", "--out", "d"],
        ["reproduce", "all", "--out", "d"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


# ---------------------------------------------------------------------------------------------- end to end
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
    parser = argparse.ArgumentParser(prog="pyro-decomp")
    add_reproduce_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["reproduce", "clustering", "--scale", "smoke", "--out", str(out)])
    assert args.func(args, args.subparser) == 0  # the calling convention of pyro_decomp.cli.main
    after = json.loads((out / "results.json").read_text())
    assert [r["experiment"] for r in after] == ["clustering"]
    for run in after[0]["runs"]:
        old = before[(run["arm"], run["seed"])]
        assert run["metrics"] == old["metrics"]  # same weights (no retraining), same evaluation draws
        assert run["train_seconds"] == old["train_seconds"]
