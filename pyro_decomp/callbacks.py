"""Callbacks of :class:`~pyro_decomp.training.Trainer`: TensorBoard logging and early stopping.

A callback is any object with either or both of the methods

* ``on_epoch_end(trainer, record)``, called on every process after each epoch with the epoch's record of
  ``metrics.jsonl`` (``epoch``, ``global_step``, ``loss``, ``reconstruction``, ``kl``, ``divergence``, ...,
  the ``heldout_*`` components every ``eval_every`` epochs and ``"best": True`` on a new best held-out loss);
* ``on_train_end(trainer)``, called on every process when training has ended without an error.

Setting ``trainer.should_stop = True`` in ``on_epoch_end`` ends training cleanly after that epoch, with a
checkpoint from which :func:`~pyro_decomp.training.resume` continues. A callback must leave the run as it
is: it draws no random number from the global generators outside a fork and changes no parameter.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from contextlib import ExitStack
from typing import Any, Dict, Optional

import numpy as np
import torch
from matplotlib.image import imread

from pyro_decomp import plots
from pyro_decomp.data.indexing import subset_index, take
from pyro_decomp.runs import read_metrics
from pyro_decomp.util import seeded

__all__ = ["EarlyStopping", "TensorBoardCallback"]

#: record keys that are positions in the run or flags, not measurements
NOT_LOGGED = ("epoch", "global_step", "seconds", "steps")
HELD_OUT = "heldout_"
#: the quantities of the training-curves figure, where the run logs them (``other_kl`` where it is not 0)
CURVES = ("loss", "reconstruction", "kl", "divergence")
#: the most training points whose encodings are drawn for the q(z) against p(z) figure
AGGREGATE_POINTS = 2000

MISSING_TENSORBOARD = (
    'TensorBoard logging needs the tensorboard package: pip install "pyro-decomp[tensorboard]" '
    "(or pip install tensorboard)"
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tag(key: str) -> str:
    """``loss`` -> ``train/loss``, ``heldout_loss`` -> ``heldout/loss``."""
    if key.startswith(HELD_OUT):
        return "heldout/" + key[len(HELD_OUT) :]
    return "train/" + key


class TensorBoardCallback:
    """Log a run to TensorBoard: each epoch's numbers as scalars and, at the end, the run's figures.

    Every numeric value of an epoch's record (but ``epoch``, ``global_step``, ``seconds``, ``steps`` and
    flags) is written at step = epoch under ``train/KEY``, or ``heldout/KEY`` for the held-out
    ``heldout_KEY``. When training ends, with ``figures``, the training curves (without the divergence when
    α = 0) and the aggregate encoding q(z) (one draw of
    q(z|x) for up to 2000 training points) against the prior p(z) are added as images
    ``figures/training_curves`` and ``figures/aggregate_posterior``, and the writer is closed.

    Only the main process writes. The log of a resumed run continues the same directory: the events of
    the epochs after the checkpoint (from a run killed between checkpoints) are replaced by the new ones.
    The figures' draws come from a generator seeded with ``config.seed``, in a fork of the global random
    state, so logging leaves the training run bitwise unchanged.

    :param log_dir: the directory of the event files (the command line uses ``RUN_DIR/tensorboard``).
    :param figures: add the figures when training ends.
    :raises ImportError: the optional ``tensorboard`` package is not installed.
    """

    def __init__(self, log_dir: str, *, figures: bool = True):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(MISSING_TENSORBOARD) from None
        self._summary_writer = SummaryWriter
        self.log_dir = os.fspath(log_dir)
        self.figures = bool(figures)
        self._writer = None

    def _open(self, first_step: int):
        """The writer, opened on first use; its ``purge_step`` drops older events from ``first_step`` on."""
        if self._writer is None:
            self._writer = self._summary_writer(self.log_dir, purge_step=first_step)
        return self._writer

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        if not trainer.context.is_main:
            return
        epoch = int(record["epoch"])
        writer = self._open(epoch)
        for key, value in record.items():
            if key not in NOT_LOGGED and _is_number(value):
                writer.add_scalar(_tag(key), float(value), epoch)
        writer.flush()

    def on_train_end(self, trainer) -> None:
        if not trainer.context.is_main:
            return
        try:
            if self.figures:
                self._add_figures(trainer)
        finally:
            self.close()

    def close(self) -> None:
        """Flush and close the event file (a later epoch opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ figures
    def _add_figures(self, trainer) -> None:
        writer = self._open(int(trainer.epoch) + 1)
        with tempfile.TemporaryDirectory() as tmp:
            for name, draw in (("training_curves", self._curves), ("aggregate_posterior", self._posterior)):
                path = os.path.join(tmp, name + ".png")
                try:
                    if draw(trainer, path) is None:
                        continue
                except (ValueError, RuntimeError) as e:
                    warnings.warn(f"TensorBoard figure {name} was not drawn: {e}", stacklevel=3)
                    continue
                image = np.ascontiguousarray(imread(path)[..., :3])
                writer.add_image(f"figures/{name}", image, int(trainer.epoch), dataformats="HWC")
        writer.flush()

    @staticmethod
    def _curves(trainer, path: str) -> Optional[str]:
        records = read_metrics(trainer.run_dir) if trainer.run_dir is not None else list(trainer.history)
        unused = {"divergence"} if trainer.config.alpha == 0 else set()  # not in the objective
        keys = [k for k in CURVES if k not in unused and any(_is_number(r.get(k)) for r in records)]
        if any(_is_number(r.get("other_kl")) and r["other_kl"] != 0 for r in records):
            keys.append("other_kl")
        if not keys:
            return None
        return plots.plot_training_curves(records, path, keys=keys)

    @staticmethod
    def _posterior(trainer, path: str) -> str:
        vae, data = trainer.vae, trainer.train_set
        generator = torch.Generator().manual_seed(trainer.config.seed)
        index = subset_index(len(data), AGGREGATE_POINTS, generator)
        x = take(data, index)[0].to(trainer.device)
        was_training = vae.training
        vae.eval()
        try:
            with ExitStack() as stack:
                stack.enter_context(seeded(generator))
                stack.enter_context(torch.no_grad())
                codes = torch.cat(
                    [
                        vae.encoder_distribution(part).sample()
                        for part in x.split(max(int(trainer.config.batch_size), 2))
                    ]
                )
                prior = vae.prior_distribution()
                return plots.plot_aggregate_posterior(
                    codes.cpu(), prior, path, generator=torch.Generator().manual_seed(trainer.config.seed)
                )
        finally:
            vae.train(was_training)


class EarlyStopping:
    """Stop training when ``key`` of the records has not decreased for ``patience`` evaluations.

    An evaluation is an epoch whose record holds ``key`` (the held-out loss is there every ``eval_every``
    epochs); one that is not below the best value so far (or not finite) counts towards ``patience``, a new
    best resets the count. The count starts with the callback: a resumed run starts it afresh.

    :param patience: how many evaluations in a row without improvement stop training (a positive integer).
    :param key: the record's key to watch (lower is better), e.g. ``"heldout_loss"`` or ``"loss"``.
    """

    def __init__(self, patience: int, key: str = "heldout_loss"):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive integer (evaluations), got {patience!r}")
        self.patience = patience
        self.key = key
        self.best: Optional[float] = None
        self.waited = 0

    def on_epoch_end(self, trainer, record: Dict[str, Any]) -> None:
        value = record.get(self.key)
        if not _is_number(value):
            return
        if math.isfinite(value) and (self.best is None or value < self.best):
            self.best = float(value)
            self.waited = 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            trainer.should_stop = True
