"""The numbers of one epoch of training, as means over its steps: what a ``metrics.jsonl`` record holds.

Each step adds its loss (the full-data estimate divided by N) and the per-point loss components of its batch
(``reconstruction`` E_q[log p(x|z)], ``kl``, ``other_kl``, ``divergence`` D̂). An epoch's record holds

    loss = (1/S) Σ_s loss_s,    c = (1/S) Σ_s c_s  for every component c,

over its S steps, so that every name in a record means the same kind of number, and the per-step losses in
at most :data:`STEP_BINS` consecutive blocks (the mean of each), so that the curves of a run of few epochs
show its course. The running sums are part of a checkpoint: an epoch resumed part-way has the record of an
epoch that never stopped.
"""

from __future__ import annotations

from typing import Any, Dict, List

__all__ = ["STEP_BINS", "EpochMeans", "block_means"]

STEP_BINS = 100  # the most per-step loss values an epoch's record keeps (block means)


def block_means(values: List[float], blocks: int) -> List[float]:
    """``values`` in at most ``blocks`` consecutive blocks of equal size (the last may be shorter), each
    replaced by its mean."""
    if not values:
        return []
    size = -(-len(values) // blocks)
    return [sum(values[i : i + size]) / len(values[i : i + size]) for i in range(0, len(values), size)]


class EpochMeans:
    """Running sums of an epoch in progress: the steps' losses and loss components."""

    def __init__(self):
        self.loss_sum = 0.0
        self.steps = 0
        self.component_sums: Dict[str, float] = {}
        self.step_losses: List[float] = []

    def add(self, loss: float, components: Dict[str, float]) -> None:
        """One step: its loss and its batch's loss components."""
        self.loss_sum += loss
        self.steps += 1
        self.step_losses.append(loss)
        for key, value in components.items():
            self.component_sums[key] = self.component_sums.get(key, 0.0) + value

    def record(self, epoch: int, global_step: int) -> Dict[str, Any]:
        """The epoch's record: ``loss`` and every component as means over the steps, ``steps`` and
        ``step_loss`` (the per-step losses in block means)."""
        steps = max(self.steps, 1)
        record: Dict[str, Any] = {"epoch": epoch, "global_step": global_step, "loss": self.loss_sum / steps}
        for key, value in sorted(self.component_sums.items()):
            record[key] = value / steps
        record["steps"] = self.steps
        record["step_loss"] = block_means(self.step_losses, STEP_BINS)
        return record

    def state_dict(self) -> Dict[str, Any]:
        """Plain values for a checkpoint (``torch.load(weights_only=True)``-safe)."""
        return {
            "loss_sum": self.loss_sum,
            "steps": self.steps,
            "component_sums": dict(self.component_sums),
            "step_losses": list(self.step_losses),
        }

    @classmethod
    def from_state(cls, saved: Dict[str, Any]) -> EpochMeans:
        """Back from :meth:`state_dict` (a checkpoint of an older version holds the loss sums only)."""
        means = cls()
        means.loss_sum = float(saved["loss_sum"])
        means.steps = int(saved["steps"])
        means.component_sums = {k: float(v) for k, v in saved.get("component_sums", {}).items()}
        means.step_losses = [float(v) for v in saved.get("step_losses", [])]
        return means
