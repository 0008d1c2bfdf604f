"""An epoch's record: means over its steps, per-step losses in blocks, a state that survives a checkpoint."""

import pytest
import torch

from pyro_decomp.epoch_means import STEP_BINS, EpochMeans, block_means


def test_block_means_by_hand():
    assert block_means([1.0, 2.0, 3.0, 4.0, 5.0], 2) == [2.0, 4.5]  # blocks of 3: (1, 2, 3), (4, 5)
    assert block_means([1.0, 2.0], 10) == [1.0, 2.0]
    assert block_means([], 5) == []
    values = [float(v) for v in range(1000)]
    means = block_means(values, STEP_BINS)
    assert len(means) == STEP_BINS and means[0] == 4.5 and sum(means) / len(means) == pytest.approx(499.5)


def test_record_holds_means_and_its_state_round_trips_through_a_checkpoint(tmp_path):
    means = EpochMeans()
    steps = [(3.0, {"kl": 1.0, "reconstruction": -2.0}), (5.0, {"kl": 3.0, "reconstruction": -4.0})]
    for loss, components in steps:
        means.add(loss, components)
    record = means.record(epoch=2, global_step=7)
    assert record == {
        "epoch": 2,
        "global_step": 7,
        "loss": 4.0,
        "kl": 2.0,
        "reconstruction": -3.0,
        "steps": 2,
        "step_loss": [3.0, 5.0],
    }
    torch.save(means.state_dict(), tmp_path / "s.pt")
    back = EpochMeans.from_state(torch.load(tmp_path / "s.pt", weights_only=True))
    back.add(7.0, {"kl": 5.0, "reconstruction": -6.0})
    assert back.record(2, 8)["kl"] == 3.0 and back.record(2, 8)["step_loss"] == [3.0, 5.0, 7.0]
    # a checkpoint of an older version holds the loss sums only
    old = EpochMeans.from_state({"loss_sum": 8.0, "steps": 2})
    assert old.record(1, 2)["loss"] == 4.0 and old.record(1, 2)["step_loss"] == []
