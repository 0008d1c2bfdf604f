"""One's own data end to end: train (command line or ``train``), reload, evaluate, on exactly that data."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from pyro_decomp.cli import main
from pyro_decomp.config import RunConfig
from pyro_decomp.data import pinwheel
from pyro_decomp.evaluation import evaluate, load_run, write_figures
from pyro_decomp.runs import save_config
from pyro_decomp.training import train

QUICK = ["--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress"]
EVAL = ["--max-points", "50", "--iwae-samples", "2", "--no-progress"]


def _rings(n=60, seed=0):
    """Two concentric rings (radius 1 and 3), labelled by ring."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 2
    angle = g.uniform(0, 2 * np.pi, n)
    r = np.where(y == 0, 1.0, 3.0) + 0.05 * g.standard_normal(n)
    return np.stack([r * np.cos(angle), r * np.sin(angle)], 1).astype(np.float32), y


def _rows(t):
    return {tuple(np.round(r, 6)) for r in np.asarray(t, dtype=np.float64).tolist()}


@pytest.fixture(scope="module")
def rings_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rings")
    x, y = _rings()
    path = str(tmp / "rings.npz")
    np.savez(path, x=x, y=y)
    run_dir = str(tmp / "run")
    assert main(["train", "--dataset", path, "--run-dir", run_dir, "--no-figures", *QUICK]) == 0
    return path, run_dir, x


def test_an_npz_trains_through_the_cli_and_reloads_and_evaluates_on_its_points(rings_run):
    path, run_dir, x = rings_run
    saved = json.load(open(os.path.join(run_dir, "config.json")))
    assert saved["dataset"] == path and saved["data_source"]["path"] == os.path.abspath(path)
    assert saved["data_source"]["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert (saved["network"], saved["likelihood"], saved["latent_dim"]) == ("mlp", "normal", 2)
    run = load_run(run_dir)
    xt, yt = run.test_data()
    xtrain, _ = run.train_set.tensors
    # the held-out points and the training points are the file's points, each once, and no pinwheel point
    assert len(xt) == 12 and _rows(xt) | _rows(xtrain) == _rows(x) and not _rows(xt) & _rows(xtrain)
    wheel = torch.cat([pinwheel(seed=0)[0], pinwheel(seed=1)[0]])
    assert not (_rows(xt) | _rows(xtrain)) & _rows(wheel)
    # evaluate measures on exactly these points: its reconstruction error, recomputed here, is equal
    result = evaluate(run_dir, iwae_samples=2, figures=False)
    with torch.no_grad():
        error = (run.vae.reconstruct(xt) - xt).square().sum(1).mean()
    assert result["test_points"] == 12 and result["reconstruction_squared_error"] == pytest.approx(
        float(error)
    )
    # the ring labels allow a clustering score of the aggregate encoding (k-means, two clusters)
    assert result["ari"]["clusters"] == "k-means, k = 2" and -1 <= result["ari"]["value"] <= 1


def test_a_changed_or_vanished_file_is_refused_by_name(rings_run, tmp_path, capsys):
    path, run_dir, x = rings_run
    copy = str(tmp_path / "rings.npz")
    np.savez(copy, x=x)
    other = str(tmp_path / "run")
    assert main(["train", "--dataset", copy, "--run-dir", other, "--no-figures", *QUICK]) == 0
    np.savez(copy, x=x + 1)
    with pytest.raises(ValueError, match=f"data file {copy} has changed"):
        evaluate(other, figures=False)
    os.remove(copy)
    capsys.readouterr()
    assert main(["evaluate", other, *EVAL]) == 1
    err = capsys.readouterr().err
    assert f"data file {copy} that this run was trained on has vanished" in err and err.count("\n") == 1


def test_in_memory_data_are_needed_again_to_reload(tmp_path, capsys):
    x, y = _rings(40, seed=1)
    data = (
        TensorDataset(torch.from_numpy(x[:30]), torch.from_numpy(y[:30])),
        TensorDataset(torch.from_numpy(x[30:])),
    )
    run_dir = str(tmp_path / "run")
    config = RunConfig(dataset="memory", epochs=1, batch_size=10, device="cpu")
    train(config, run_dir, data=data, progress=False)
    assert json.load(open(os.path.join(run_dir, "config.json")))["data_source"]["kind"] == "memory"
    with pytest.raises(ValueError, match="held in memory .*pass them again with data=") as e:
        load_run(run_dir)
    assert "\n" not in str(e.value)
    assert main(["evaluate", run_dir, *EVAL]) == 1
    err = capsys.readouterr().err
    assert "held in memory" in err and err.count("\n") == 1
    run = load_run(run_dir, data=data)
    assert torch.equal(run.test_data()[0], data[1].tensors[0])
    assert evaluate(run_dir, data=data, figures=False, iwae_samples=2)["test_points"] == 10


def test_a_folder_of_colour_images_trains_with_a_conv_net_and_draws_colour(tmp_path):
    rng = np.random.default_rng(0)
    for name, channel in (("red", 0), ("blue", 2)):
        os.makedirs(tmp_path / "images" / name)
        for i in range(6):
            a = rng.integers(0, 40, (28, 28, 3), dtype=np.uint8)
            a[6:22, 6:22, channel] = 255
            Image.fromarray(a).save(tmp_path / "images" / name / f"{i}.png")
    run_dir = str(tmp_path / "run")
    folder = str(tmp_path / "images")
    assert main(["train", "--dataset", folder, "--run-dir", run_dir, "--no-figures", *QUICK]) == 0
    run = load_run(run_dir)
    assert run.config.network == "conv" and run.config.presets["network"] == "data"
    assert run.vae.encoder.in_shape == (3, 28, 28) and run.config.likelihood == "bernoulli"
    assert evaluate(run_dir, iwae_samples=2, max_points=8, figures=False)["test_points"] == 2
    figure = write_figures(
        run.vae, run.config, run.test_set, str(tmp_path / "fig"), kinds=("reconstructions",)
    )
    image = np.asarray(Image.open(figure["reconstructions"]).convert("RGB")).astype(int)
    spread = image.max(-1) - image.min(-1)  # grey pixels have R = G = B
    assert (spread > 100).sum() > 100  # the red and blue squares of the originals are drawn in colour


def test_tabular_real_values_train_with_a_normal_likelihood_chosen_from_the_data(tmp_path):
    path = str(tmp_path / "table.npy")
    np.save(path, np.random.default_rng(0).normal(size=(40, 7)))
    run = train(
        RunConfig(dataset=path, epochs=1, batch_size=16, device="cpu"), str(tmp_path / "r"), progress=False
    )
    assert run.vae.likelihood_name == "normal" and run.config.presets["likelihood"] == "data"
    saved = json.load(open(tmp_path / "r" / "config.json"))
    assert (saved["likelihood"], saved["network"]) == ("normal", "mlp")
    figures = write_figures(run.vae, run.config, run.test_set, str(tmp_path / "f"), kinds=("samples",))
    assert figures == {}  # 7-D points: no samples figure (it draws images and 2-D points only)


def test_a_config_file_of_another_data_set_lends_it_no_preset(tmp_path):
    x, _ = _rings(40)
    path = str(tmp_path / "my.npz")
    np.savez(path, x=x)
    for first in ("fashion-mnist", "pinwheel"):
        os.makedirs(tmp_path / first)
        save_config(
            RunConfig(dataset=first, seed=3), str(tmp_path / first)
        )  # as that data set's run wrote it
        run_dir = str(tmp_path / f"{first}-then-npz")
        args = ["--config", str(tmp_path / first / "config.json"), "--dataset", path, "--run-dir", run_dir]
        assert main(["train", *args, "--no-figures", *QUICK]) == 0
        saved = json.load(open(os.path.join(run_dir, "config.json")))
        assert saved["seed"] == 3  # chosen in the file: kept
        assert set(saved["presets"].values()) <= {"own data", "data"}
        assert (saved["prior"], saved["network"], saved["likelihood"]) == ("gaussian", "mlp", "normal")
        assert (saved["alpha"], saved["beta"], saved["network_options"]) == (0.0, 1.0, {})


def test_a_run_whose_data_cannot_be_read_leaves_no_directory_and_no_lock_file(tmp_path, capsys):
    bad = tmp_path / "table.npz"
    bad.write_text("a,b\n1,2\n")  # a CSV file named .npz
    new = tmp_path / "runs" / "a" / "b"  # neither runs/ nor its subdirectories exist yet
    assert main(["train", "--dataset", str(bad), "--run-dir", str(new), *QUICK]) == 2
    assert "it is not a .npz archive" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # every directory the command made is gone again
    empty = tmp_path / "mine"
    empty.mkdir()
    assert main(["train", "--dataset", str(bad), "--run-dir", str(empty), *QUICK]) == 2
    assert empty.is_dir() and os.listdir(empty) == []  # the user's directory stays, and stays empty


def test_bernoulli_on_data_in_minus_one_to_one_is_one_line(tmp_path, capsys):
    path = str(tmp_path / "pm.npz")
    np.savez(path, x=np.linspace(-1, 1, 40, dtype=np.float32).reshape(20, 2))
    run_dir = str(tmp_path / "run")
    assert main(["train", "--dataset", path, "--likelihood", "bernoulli", "--run-dir", run_dir, *QUICK]) == 2
    err = capsys.readouterr().err
    assert "bernoulli likelihood needs data in [0, 1]" in err and "[-1, 1]" in err and err.count("\n") == 1


def test_a_factory_on_the_python_path_trains_and_reloads(tmp_path, monkeypatch):
    (tmp_path / "mymod.py").write_text(
        "import torch\n"
        "from torch.utils.data import TensorDataset\n\n\n"
        "def make(n=30):\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.rand(n + 10, 5, generator=g)\n"
        "    return TensorDataset(x[:n]), TensorDataset(x[n:])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = str(tmp_path / "run")
    assert (
        main(
            [
                "train",
                "--dataset",
                "mymod:make",
                "--data-options",
                "n=20",
                "--run-dir",
                run_dir,
                "--no-figures",
                *QUICK,
            ]
        )
        == 0
    )
    run = load_run(run_dir)
    assert len(run.train_set) == 20 and run.config.data_source["path"] == str(tmp_path / "mymod.py")
    assert run.config.likelihood == "bernoulli"  # uniform draws in [0, 1)
    assert evaluate(run_dir, iwae_samples=2, figures=False)["test_points"] == 10


def test_factors_make_the_factor_metrics_run(tmp_path):
    g = np.random.default_rng(0)
    factors = np.stack([np.arange(48) % 4, np.arange(48) // 4 % 3], 1)
    x = np.concatenate([factors + 0.1 * g.standard_normal((48, 2)), g.standard_normal((48, 2))], 1)
    path = str(tmp_path / "f.npz")
    np.savez(path, x=x.astype(np.float32), factors=factors)
    run_dir = str(tmp_path / "run")
    train(RunConfig(dataset=path, epochs=1, batch_size=16, device="cpu"), run_dir, progress=False)
    result = evaluate(run_dir, iwae_samples=2, figures=False, num_votes=50, votes_size=5)
    assert 0 <= result["disentanglement"] <= 1 and 0 <= result["mig"] <= 1 and result["factor_points"] == 10
