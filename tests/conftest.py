import pyro
import pytest
import torch
from tiny import params, tiny

from pyro_decomp.training import train


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Every test starts with an empty parameter store, fixed seeds and validation on."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    torch.set_num_threads(1)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A finished two-epoch tiny pinwheel run, one per test module: ``(run_dir, final parameters)``."""
    run_dir = str(tmp_path_factory.mktemp("run") / "run")
    torch.set_num_threads(1)
    run = train(tiny(epochs=2), run_dir, progress=False)
    return run_dir, params(run.vae)
