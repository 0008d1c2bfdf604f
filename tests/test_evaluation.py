"""A trained run: load_run round trip, models that coexist in one process, evaluate with progress."""

import json
import os

import pyro
import pytest
import torch
from tiny import assert_bitwise_equal, params, tiny

from pyro_decomp import Run, load_run
from pyro_decomp.cli import main
from pyro_decomp.evaluation import evaluate
from pyro_decomp.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("run") / "run")
    run = train(tiny(epochs=3), run_dir, progress=False)
    return run_dir, run


def test_train_returns_a_run(trained):
    run_dir, run = trained
    assert isinstance(run, Run) and run.run_dir == run_dir
    assert (run.epoch, run.trained_epochs, run.global_step) == (3, 3, 15)
    assert [r["epoch"] for r in run.metrics] == [1, 2, 3]
    assert not run.vae.training and run.config == tiny(epochs=3)


def test_load_run_round_trip(trained):
    run_dir, run = trained
    x = run.test_set.tensors[0]
    with torch.no_grad():
        expected = run.vae.encode(x)
    pyro.param("mine", torch.tensor([1.0, 2.0]))
    before = torch.get_rng_state()
    loaded = load_run(run_dir)
    assert torch.equal(torch.get_rng_state(), before)  # loading draws nothing from the caller's generator
    assert torch.equal(pyro.param("mine").detach(), torch.tensor([1.0, 2.0]))  # the user's parameter survives
    assert isinstance(loaded, Run) and not loaded.vae.training
    assert (loaded.epoch, loaded.global_step, loaded.config) == (3, 15, run.config)
    assert loaded.metrics == run.metrics
    assert_bitwise_equal(params(loaded.vae), params(run.vae))
    with torch.no_grad():
        got = loaded.vae.encode(x)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert loaded.vae.sample(5).shape == (5, 2)


def test_a_users_parameter_survives_training(tmp_path):
    pyro.param("mine", torch.tensor(7.0))
    train(tiny(epochs=1), str(tmp_path / "run"), progress=False)
    assert float(pyro.param("mine").detach()) == 7.0


def test_two_models_train_one_after_the_other_in_one_process(tmp_path):
    """Every model keeps its parameters under its own name: the second run trains exactly like the first,
    with no pyro.clear_param_store() between them (a notebook re-running a cell)."""
    first = train(tiny(epochs=2), str(tmp_path / "a"), progress=False)
    second = train(tiny(epochs=2), str(tmp_path / "b"), progress=False)
    assert [r["loss"] for r in first.metrics] == [r["loss"] for r in second.metrics]
    assert_bitwise_equal(params(first.vae), params(second.vae))


def test_evaluate_shows_progress_on_stderr_unless_told_not_to(trained, tmp_path, capsys):
    run_dir = trained[0]
    assert main(["evaluate", run_dir, "--max-points", "40", "--iwae-samples", "4", "--no-figures"]) == 0
    captured = capsys.readouterr()
    assert all(stage in captured.err for stage in ("loss components", "IWAE", "metrics"))  # the bars
    assert "overlap: mutual_information" in captured.out and "alignment: inclusive-kl" in captured.out
    assert "iwae_log_likelihood" in captured.out
    argv = ["evaluate", run_dir, "--max-points", "40", "--iwae-samples", "4", "--no-figures", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    result = json.load(open(os.path.join(run_dir, "evaluation.json")))
    assert result["epoch"] == 3 and result["test_points"] == 40


def test_evaluate_result_matches_evaluation_json(trained):
    run_dir = trained[0]
    result = evaluate(run_dir, max_points=40, iwae_samples=4, figures=False)
    assert json.load(open(os.path.join(run_dir, "evaluation.json"))) == json.loads(json.dumps(result))


def test_factor_metrics_report_each_metric_with_its_chance_level():
    pytest.importorskip("sklearn")
    from pyro_decomp.evaluation import factor_metrics
    from pyro_decomp.summary import chance_levels

    factors = torch.cartesian_prod(torch.arange(3), torch.arange(4), torch.arange(5))  # 60 points, K = 3
    g = torch.Generator().manual_seed(0)
    codes = factors.double() + 0.05 * torch.randn(60, 3, generator=g, dtype=torch.float64)
    codes = torch.cat([codes, torch.randn(60, 1, generator=g, dtype=torch.float64)], 1)  # one empty code
    result = factor_metrics(codes, factors, seed=0, progress=False)
    assert result["factor_metric_points"] == [40, 20]
    for key in ("dci_disentanglement", "dci_completeness", "sap", "modularity", "explicitness", "beta_vae"):
        assert result[key] > result["chance"][key], key
    assert result["beta_vae"] > 0.9 and abs(result["chance"]["beta_vae"] - 1 / 3) < 0.1
    chance = chance_levels(factors, 4, num_votes=300, votes_size=10, seed=0)
    assert 0 <= chance["disentanglement"] <= 1 and 0 <= chance["mig"] < 0.5


# ------------------------------------------------------------------------------------------ which checkpoint
def test_evaluate_best_uses_best_pts_weights_and_records_its_epoch(tmp_path, capsys):
    from pyro_decomp.runs import load_checkpoint

    run_dir = str(tmp_path / "run")
    train(tiny(epochs=6, eval_every=1), run_dir, progress=False)
    best = load_checkpoint(os.path.join(run_dir, "best.pt"))
    last = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    loaded = load_run(run_dir, checkpoint="best")
    assert loaded.checkpoint == "best" and loaded.epoch == best["epoch"]
    assert_bitwise_equal(params(loaded.vae), best["model"])
    assert load_run(run_dir).checkpoint == "last" and load_run(run_dir).epoch == last["epoch"] == 6
    argv = ["evaluate", run_dir, "--checkpoint", "best", "--max-points", "40", "--iwae-samples", "2"]
    assert main([*argv, "--no-figures", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"evaluated the best checkpoint (best.pt, epoch {best['epoch']})" in out
    result = json.load(open(os.path.join(run_dir, "evaluation.json")))
    assert (result["checkpoint"], result["checkpoint_file"], result["epoch"]) == (
        "best",
        "best.pt",
        best["epoch"],
    )
    # the loss components are those of best.pt's weights: evaluating the last ones gives other numbers
    if best["epoch"] != 6:
        other = evaluate(run_dir, max_points=40, iwae_samples=2, figures=False)
        assert other["checkpoint"] == "last" and other["epoch"] == 6 and other["loss"] != result["loss"]


def test_best_without_best_pt_is_one_line(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    train(tiny(epochs=1, eval_every=0), run_dir, progress=False)
    assert main(["evaluate", run_dir, "--checkpoint", "best", "--no-figures", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no best.pt" in err[0] and "eval_every" in err[0]
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        load_run(run_dir, checkpoint="first")


# ------------------------------------------------------------------------------------------ what numbers mean
def test_pinwheel_evaluate_reports_ari_with_units_and_directions(trained, capsys):
    run_dir = trained[0]
    assert main(["evaluate", run_dir, "--max-points", "40", "--iwae-samples", "2", "--no-figures"]) == 0
    out = capsys.readouterr().out
    result = json.load(open(os.path.join(run_dir, "evaluation.json")))
    ari = result["ari"]
    assert ari["clusters"] == "nearest prior component" and ari["chance"] == 0.0
    assert -1.0 <= ari["value"] <= 1.0
    assert "ari (nearest prior component)" in out and "better: higher (0 is chance)" in out
    names = {row["name"] for row in result["summary"]}
    assert {
        "loss",
        "iwae_log_likelihood",
        "overlap: mutual_information",
        "ari (nearest prior component)",
    } <= names
    assert all(row["unit"] and row["better"] for row in result["summary"])
    assert "iwae_log_likelihood" in out and "nats / point" in out and "better: lower" in out


# ------------------------------------------------------------------------------------------ figures of a run
def test_shapes_reconstructions_come_from_across_the_grid(tmp_path, monkeypatch):
    """The 16 images drawn are a random sample of the grid: their factors, read back by finding each image
    in the data set, span more than one shape and more than one scale (the sorted first 16 would not)."""
    from pyro_decomp import plots
    from pyro_decomp.build import build
    from pyro_decomp.config import RunConfig
    from pyro_decomp.data.indexing import take
    from pyro_decomp.evaluation import write_figures

    subsample = {"orientation": 40, "position_x": 8, "position_y": 8}  # 3 shapes x 6 scales x 16 positions
    config = RunConfig(
        dataset="shapes", data_options={"subsample": subsample, "cache": False, "progress": False}, epochs=1
    )
    vae, _, train_set, _ = build(config)
    drawn = {}

    def spy(name):
        real = getattr(plots, name)

        def record(*args, **kwargs):
            drawn[name] = (args, kwargs)
            return real(*args, **kwargs)

        return record

    for name in ("plot_reconstructions", "plot_traversals"):
        monkeypatch.setattr(plots, name, spy(name))
    write_figures(vae, config, train_set, str(tmp_path), kinds=("reconstructions", "traversals"))
    shown = drawn["plot_reconstructions"][0][0]
    everything, factors = take(train_set, torch.arange(len(train_set)))
    assert len(everything) == 288 and len(shown) == 16
    found = [int((everything == image).flatten(1).all(1).nonzero()[0]) for image in shown]
    drawn_factors = factors[found]
    names = list(train_set.factor_names)
    assert drawn_factors[:, names.index("shape")].unique().numel() > 1
    assert drawn_factors[:, names.index("scale")].unique().numel() > 1
    # the traversals name their values under the columns
    values = drawn["plot_traversals"][1]["values"]
    assert torch.equal(values, torch.linspace(-3.0, 3.0, 9))


def test_no_divergence_panel_when_alpha_is_zero(tmp_path, monkeypatch):
    from pyro_decomp import plots
    from pyro_decomp.evaluation import write_figures

    panels = {}
    real = plots.plot_training_curves

    def spy(log, path, keys=None, **kwargs):
        panels[str(path)] = list(keys)
        return real(log, path, keys=keys, **kwargs)

    monkeypatch.setattr(plots, "plot_training_curves", spy)
    for alpha in (0.0, 1.0):
        run_dir = str(tmp_path / f"alpha{alpha}")
        run = train(tiny(epochs=1, alpha=alpha), run_dir, progress=False)
        out = str(tmp_path / f"figures{alpha}")
        metrics = os.path.join(run_dir, "metrics.jsonl")
        write_figures(
            run.vae, run.config, run.train_set, out, metrics_path=metrics, kinds=("training_curves",)
        )
        shown = panels[os.path.join(out, "training_curves.png")]
        assert ("divergence" in shown) == (alpha != 0) and "loss" in shown


def test_evaluate_warns_when_the_encoder_has_collapsed(tmp_path, capsys):
    """An encoder whose last layer is zero gives every x the same q(z|x): I(x; z) = 0 and every dimension
    inactive. The warning is one line of the summary and a field of evaluation.json; a trained encoder
    gets none."""
    from pyro_decomp.runs import load_checkpoint, save_checkpoint

    run_dir = str(tmp_path / "run")
    # the pinwheel decoder's own scale (tiny's options replace the preset): z carries x after 2 epochs
    train(tiny(epochs=2, network_options={"hidden": [16], "scale": "decoder"}), run_dir, progress=False)
    argv = ["evaluate", run_dir, "--max-points", "40", "--iwae-samples", "2", "--no-figures", "--no-progress"]
    assert main(argv) == 0
    assert "WARNING" not in capsys.readouterr().out
    assert json.load(open(os.path.join(run_dir, "evaluation.json")))["collapse_warning"] is None
    path = os.path.join(run_dir, "checkpoint.pt")
    state = load_checkpoint(path)
    for key in ("encoder.head.weight", "encoder.head.bias"):
        state["model"][key] = torch.zeros_like(state["model"][key])
    save_checkpoint(state, path)
    assert main(argv) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "collapsed" in warnings[0]
    result = json.load(open(os.path.join(run_dir, "evaluation.json")))
    assert abs(result["overlap"]["mutual_information"]) < 1e-6
    assert result["collapse_warning"] == warnings[0][len("WARNING: ") :]


def test_evaluate_of_a_directory_without_a_run_writes_nothing_there(tmp_path):
    """Not even a lock file: the directory is refused, naming its missing configuration, before any write."""
    (tmp_path / "notes.txt").write_text("the user's")
    with pytest.raises(FileNotFoundError, match="no run configuration at") as info:
        evaluate(str(tmp_path), figures=False)
    assert "\n" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
