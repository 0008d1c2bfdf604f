"""The SVI loop of a decomposition VAE: :class:`Trainer`.

:class:`Trainer` minimises −L of Mathieu et al. (2019, eq. 7) summed over the N training points,

    L_{α,β} = Σ_n ( E_{q(z|x_n)}[log p(x_n|z)] − β KL(q(z|x_n) ‖ p(z)) ) − α N D(q(z), p(z)),

with Pyro SVI and Adam (amsgrad, as the paper), one minibatch at a time with ``dataset_size = N`` so that the
data plate scales by N/B. Each epoch appends a record to ``RUN_DIR/metrics.jsonl``: the loss and its
components as means over the epoch's steps (:mod:`pyro_decomp.epoch_means`), and held-out loss components
every ``eval_every`` epochs where the data set has a test split. Checkpoints hold the model (and with it the
prior), the optimiser, every process's random number generators and the position in the run. The order of
the data in epoch e is a function of (seed, e) alone, so a run resumed from a checkpoint takes the same steps
as one that never stopped: on CPU with the same number of threads the parameters agree bitwise. SIGINT
(Ctrl-C), SIGTERM (what a job scheduler or ``docker stop`` sends) and SIGHUP (a closed terminal or SSH
session) finish the current step, write a checkpoint and raise :class:`TrainingInterrupted`. When an epoch
gives a new lowest held-out loss, ``best.pt`` is written before ``checkpoint.pt``: a kill between the two
leaves a checkpoint from before that epoch, and the resumed run, which repeats the epoch exactly, writes
``best.pt`` again, so the two files never disagree.

Callbacks are objects with optional methods ``on_epoch_end(trainer, record)`` and ``on_train_end(trainer)``;
one that sets ``trainer.should_stop = True`` ends training cleanly after the epoch, with a checkpoint.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

import pyro
import torch
from pyro import poutine
from torch.utils.data import Dataset, DistributedSampler
from tqdm.auto import tqdm

from pyro_decomp._pyro_compat import pyro_name, zero_grads
from pyro_decomp.config import RunConfig, resolve_device
from pyro_decomp.data.indexing import batches, subset_index, take
from pyro_decomp.distributed import (
    DistributedContext,
    all_gather_objects,
    all_reduce_mean,
    average_gradients,
)
from pyro_decomp.epoch_means import EpochMeans
from pyro_decomp.runs import (
    BEST_NAME,
    CHECKPOINT_NAME,
    HELD_OUT,
    METRICS_NAME,
    SHOWN,
    CheckpointError,
    append_metrics,
    checkpoint_state,
    clean_temporary_files,
    get_rng_state,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
    save_config,
    set_rng_state,
    state_mismatch,
    write_metrics,
)

__all__ = [
    "HELD_OUT_POINTS",
    "NonFiniteLossError",
    "Trainer",
    "TrainingInterrupted",
    "average_loss_components",
]

HELD_OUT_POINTS = 10000  # the most test points whose loss components are averaged


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; no parameter was updated with it, no checkpoint written after it."""

    def __init__(self, message: str, epoch: int, step: int, components: Dict[str, float]):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.components = components


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT, SIGTERM or SIGHUP after writing a checkpoint at ``checkpoint`` (None: no
    run directory).

    ``signal`` is the signal's number (``signal.SIGINT`` for Ctrl-C).
    """

    def __init__(self, message: str, checkpoint: Optional[str], epoch: int, step: int, signal: int = 2):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step = step
        self.signal = signal


def _fmt(components: Dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in components.items())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def average_loss_components(elbo, vae, batches: Iterable[torch.Tensor]) -> Dict[str, float]:
    """Per-data-point loss components of ``elbo`` over ``batches``, each batch weighted by its size
    (a batch of one point, which has no aggregate encoding, is skipped); {} when no batch counts."""
    sums: Dict[str, float] = {}
    used = 0
    with torch.no_grad():
        for x in batches:
            if len(x) < 2:
                continue
            for key, value in elbo.loss_components(vae.model, vae.guide, x, dataset_size=len(x)).items():
                sums[key] = sums.get(key, 0.0) + float(value) * len(x)
            used += len(x)
    return {k: v / used for k, v in sums.items()} if used else {}


class _Stop(Exception):
    pass


def _relative_name(name: str, prefix: str) -> str:
    return name[len(prefix) + 1 :] if prefix and name.startswith(prefix + ".") else name


class Trainer:
    """The SVI loop of a decomposition VAE, with progress, metrics, checkpoints, resume and data parallelism.

    Each step minimises the minibatch estimate of −L for ``x`` of B points with ``dataset_size = N``:
    ``elbo.loss_and_grads`` computes the gradients, which are averaged over processes when ``context`` is
    distributed, and Pyro's Adam (amsgrad) applies them to the parameters seen in the step. The data order of
    epoch e is ``DistributedSampler(seed=seed).set_epoch(e)``'s (a permutation drawn from a generator seeded
    with seed + e, split over processes). The trainer neither clears nor overwrites the Pyro parameter store:
    each :class:`~pyro_decomp.vae.DecompVAE` keeps its parameters under names of its own.

    :param vae: a :class:`~pyro_decomp.vae.DecompVAE` (moved to ``device``).
    :param elbo: the loss, e.g. a :class:`~pyro_decomp.elbo.DecompositionELBO` or any ``pyro.infer.ELBO``;
        per-epoch loss components are logged when it has ``loss_components``.
    :param train_set: a Dataset of inputs or of ``(input, ...)`` tuples.
    :param config: the run's :class:`~pyro_decomp.config.RunConfig`.
    :param run_dir: where ``config.json``, ``metrics.jsonl`` and checkpoints go (None: nothing written).
    :param device: a torch device (default: ``resolve_device(config.device)``).
    :param context: the :class:`~pyro_decomp.distributed.DistributedContext` (default: one process).
    :param progress: show tqdm progress bars (rank 0 only).
    :param test_set: held-out data: its loss components join the metrics every ``config.eval_every`` epochs
        and the checkpoint of the lowest held-out loss is kept as ``best.pt``.
    :param callbacks: objects with optional ``on_epoch_end(trainer, record)`` / ``on_train_end(trainer)``.
    """

    def __init__(
        self,
        vae,
        elbo,
        train_set: Dataset,
        config: RunConfig,
        run_dir: Optional[str] = None,
        *,
        device=None,
        context: Optional[DistributedContext] = None,
        progress: bool = True,
        test_set: Optional[Dataset] = None,
        callbacks: Sequence[Any] = (),
    ):
        self.config = config
        self.context = context if context is not None else DistributedContext()
        self.device = torch.device(device) if device is not None else resolve_device(config.device)
        self.vae = vae.to(self.device)
        self.elbo = elbo
        self.train_set = train_set
        self.test_set = test_set
        self.callbacks = list(callbacks)
        self.dataset_size = len(train_set)
        if self.dataset_size < 2:
            raise ValueError(f"the training set has {self.dataset_size} points; at least 2 are needed")
        self.run_dir = run_dir
        self.progress = bool(progress) and self.context.is_main
        self.optim = pyro.optim.Adam({"lr": config.lr, "amsgrad": True})
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best_heldout: Optional[float] = None
        self.should_stop = False
        self._partial = EpochMeans()
        self._pending_optim_state: Dict[str, Any] = {}
        self._signal: Optional[int] = None
        self._in_update = False
        self.history: List[Dict[str, Any]] = []

    # ------------------------------------------------------------------ paths
    def _path(self, name: str) -> Optional[str]:
        return None if self.run_dir is None else os.path.join(self.run_dir, name)

    @property
    def checkpoint_path(self) -> Optional[str]:
        return self._path(CHECKPOINT_NAME)

    @property
    def writes_files(self) -> bool:
        return self.run_dir is not None and self.context.is_main

    # ------------------------------------------------------------------ state
    @property
    def _prefix(self) -> str:
        return pyro_name(self.vae)

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resume needs, as tensors and plain values (``torch.load(weights_only=True)``-safe).

        Optimiser states are keyed by parameter names relative to the VAE (without its own name), and the
        random number generator states of every process are kept (``rng``: rank 0's; ``rng_ranks``: all).
        """
        optim_state = dict(self._pending_optim_state)
        optim_state.update({_relative_name(k, self._prefix): v for k, v in self.optim.get_state().items()})
        rng = get_rng_state()
        ranks = all_gather_objects(rng) if self.context.enabled else [rng]
        return checkpoint_state(
            epoch=self.epoch,
            step=self.step_in_epoch,
            global_step=self.global_step,
            partial=self._partial.state_dict(),
            best_heldout=self.best_heldout,
            model=self.vae.state_dict(),
            optimizer=optim_state,
            rng=ranks[0],
            rng_ranks=ranks,
            config=self.config.to_dict(),
        )

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: model, optimiser (applied to each parameter on its first step), RNGs
        and the position in the run (epochs done and steps done in the next epoch).

        :raises CheckpointError: the state's model does not fit this trainer's model.
        """
        try:
            self.vae.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(
                f"the checkpoint does not fit the run's model ({state_mismatch(e)})"
            ) from None
        prefix = self._prefix
        self._pending_optim_state = {k: v for k, v in state["optimizer"].items()}
        self.optim.set_state({(f"{prefix}.{k}" if prefix else k): v for k, v in state["optimizer"].items()})
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step"])
        self.global_step = int(state["global_step"])
        self.best_heldout = state.get("best_heldout")
        self._partial = EpochMeans.from_state(state["partial"])
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.context.world_size:
            set_rng_state(ranks[self.context.rank])
        elif self.context.is_main:
            set_rng_state(state["rng"])
        else:  # a checkpoint from another number of processes
            pyro.set_rng_seed(self.config.seed + 7919 * self.context.rank + 104729 * self.global_step)

    def save(self, path: Optional[str] = None, best: bool = False) -> Optional[str]:
        """Write a checkpoint to ``path`` (default ``RUN_DIR/checkpoint.pt``) and return it; with ``best``,
        the same state to ``RUN_DIR/best.pt`` first. Every process takes part (their RNG states are
        gathered); rank 0 writes."""
        path = path or self.checkpoint_path
        if path is None:
            return None
        state = self.state_dict()
        if not self.context.is_main:
            return None
        if best:
            save_checkpoint(state, self._path(BEST_NAME))
        save_checkpoint(state, path)
        return path

    def restore(self, path: Optional[str] = None) -> Dict[str, Any]:
        """Load a checkpoint (default ``RUN_DIR/checkpoint.pt``) into this trainer; returns its contents."""
        path = path or self.checkpoint_path
        if path is None:
            raise ValueError("restore() needs a checkpoint path or a run_dir")
        state = load_checkpoint(path, map_location=self.device)
        self.load_state_dict(state)
        return state

    # ------------------------------------------------------------------ data
    def _epoch_batches(self, epoch: int) -> List[List[int]]:
        sampler = DistributedSampler(
            self.train_set,
            num_replicas=self.context.world_size,
            rank=self.context.rank,
            shuffle=True,
            seed=self.config.seed,
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        indices = list(iter(sampler))
        b = self.config.batch_size
        out = [indices[i : i + b] for i in range(0, len(indices), b)]
        if len(out) > 1 and len(out[-1]) == 1:
            out.pop()  # one point has no aggregate encoding to compare with the prior
        return out

    # ------------------------------------------------------------------ one step
    def _fork_rng(self):
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    def loss_components(self, x: torch.Tensor, dataset_size: Optional[int] = None) -> Dict[str, float]:
        """Per-data-point loss components of ``elbo`` on the batch ``x`` (averaged over processes), drawn from
        a forked generator so that logging them does not change the training run; {} when unavailable."""
        if not hasattr(self.elbo, "loss_components"):
            return {}
        with self._fork_rng(), torch.no_grad():
            comps = self.elbo.loss_components(
                self.vae.model, self.vae.guide, x, dataset_size=dataset_size or self.dataset_size
            )
        keys = sorted(comps)
        values = torch.tensor([float(comps[k]) for k in keys], dtype=torch.float64)
        if self.context.enabled:
            values = all_reduce_mean(values.to(self.device)).cpu()
        return dict(zip(keys, values.tolist()))

    def _components_or_none(self, x: torch.Tensor) -> Dict[str, float]:
        """:meth:`loss_components` for a failure message: never raises, never prints tensors."""
        try:
            with pyro.validation_enabled(False):
                return self.loss_components(x)
        except (ValueError, RuntimeError):
            return {}

    def _non_finite(self, what: str, value, epoch: int, step: int, x, cause: str = "") -> NonFiniteLossError:
        components = self._components_or_none(x) if x is not None else {}
        last = (
            f"the last good checkpoint {self.checkpoint_path} is left in place"
            if self.checkpoint_path is not None and os.path.exists(self.checkpoint_path)
            else "no checkpoint was written after it"
        )
        return NonFiniteLossError(
            f"non-finite {what} {value} at epoch {epoch}, step {step} (global step {self.global_step})"
            f"{cause}; loss components per data point: {_fmt(components) or 'unavailable'}; {last}",
            epoch=epoch,
            step=step,
            components=components,
        )

    def step(self, x: torch.Tensor, epoch: int = 0, step: int = 0) -> float:
        """One SVI step on the minibatch ``x``; returns the loss (full-data estimate, mean over processes).

        :raises NonFiniteLossError: the loss is NaN or infinite; the parameters are left unchanged.
        """
        failure = None
        with poutine.trace(param_only=True) as capture:
            try:
                loss = self.elbo.loss_and_grads(
                    self.vae.model, self.vae.guide, x, dataset_size=self.dataset_size
                )
            except ValueError as e:
                # with validation on, NaN network outputs fail as invalid distribution parameters
                if not self._non_finite_failure(e, x):
                    raise
                loss, failure = float("nan"), e
        named = sorted((name, site["value"].unconstrained()) for name, site in capture.trace.nodes.items())
        params = [p for _, p in named]
        stop = self._signal is not None
        if self.context.enabled:
            flags = torch.tensor([float(loss), float(stop)], dtype=torch.float64, device=self.device)
            all_reduce_mean(flags)
            loss, stop = float(flags[0]), bool(flags[1] > 0)
        if not math.isfinite(loss):
            zero_grads(set(params))
            cause = "" if failure is None else f" ({_first_line(failure)})"
            self.global_step += 1
            error = self._non_finite(
                "loss", loss, epoch, step, x, cause + "; no parameter was updated with it"
            )
            self.global_step -= 1
            raise error
        average_gradients(params)
        self._in_update = True
        self.optim(params)
        zero_grads(set(params))
        self._in_update = False
        if stop and self._signal is None:  # a stop requested on any process stops every process
            self._signal = signal.SIGINT
        return float(loss)

    def _non_finite_failure(self, error: ValueError, x: torch.Tensor) -> bool:
        """Whether a ValueError of the loss comes from non-finite numbers (data, parameters or outputs)."""
        if "invalid values" in str(error):
            return True
        if not bool(torch.isfinite(x).all()):
            return True
        return not all(bool(torch.isfinite(p).all()) for p in self.vae.parameters())

    # ------------------------------------------------------------------ held-out numbers
    def heldout_components(self) -> Dict[str, float]:
        """Per-data-point loss components on the test set (at most :data:`HELD_OUT_POINTS` points, a fixed
        subset, in batches of ``batch_size``), each weighted by its batch's size; drawn from a forked
        generator seeded by the run's seed and the epoch, so they leave training unchanged and repeat
        exactly."""
        if self.test_set is None or not hasattr(self.elbo, "loss_components"):
            return {}
        index = subset_index(
            len(self.test_set), HELD_OUT_POINTS, torch.Generator().manual_seed(self.config.seed)
        )
        parts = index.split(self.config.batch_size)
        was_training = self.vae.training
        self.vae.eval()
        try:
            with self._fork_rng():
                torch.manual_seed(self.config.seed * 1_000_003 + self.epoch)
                batches = (take(self.test_set, part)[0].to(self.device) for part in parts)
                components = average_loss_components(self.elbo, self.vae, batches)
        finally:
            self.vae.train(was_training)
        return {HELD_OUT + k: v for k, v in components.items()}

    # ------------------------------------------------------------------ the loop
    def _on_signal(self, signum, frame):
        if self._signal is not None:
            raise KeyboardInterrupt
        self._signal = signum

    def _interrupted(self, epoch: int) -> TrainingInterrupted:
        path = self.save()
        where = f"; checkpoint written to {path}" if path else ""
        signum = self._signal or signal.SIGINT
        name = signal.Signals(signum).name
        return TrainingInterrupted(
            f"training interrupted by {name} at epoch {epoch}, after step {self.step_in_epoch}{where}",
            checkpoint=path,
            epoch=epoch,
            step=self.step_in_epoch,
            signal=signum,
        )

    def _prepare_run_dir(self) -> None:
        """Clean up after a kill and make the files agree with the restored position: every good record of
        an epoch up to it is kept, the records of later epochs (written after the last checkpoint) dropped."""
        os.makedirs(self.run_dir, exist_ok=True)
        clean_temporary_files(self.run_dir)
        save_config(self.config, self.run_dir)
        records = read_metrics(self.run_dir)
        keep = [r for r in records if isinstance(r.get("epoch"), int) and r["epoch"] <= self.epoch]
        if len(keep) != len(records) or os.path.exists(os.path.join(self.run_dir, METRICS_NAME)):
            write_metrics(self.run_dir, keep)

    def fit(self, epochs: Optional[int] = None) -> List[Dict[str, Any]]:
        """Train until ``epochs`` epochs (the run's total, default ``config.epochs``) are done.

        Writes ``config.json`` (with the new total), appends one record per epoch to ``metrics.jsonl`` and
        checkpoints every ``checkpoint_every`` epochs and at the end. On SIGINT, SIGTERM or SIGHUP the current
        step finishes, a checkpoint is written and :class:`TrainingInterrupted` is raised; a second signal
        stops at once. A callback that sets ``should_stop`` ends training after the epoch, with a checkpoint.

        :returns: the records of the epochs trained by this call.
        """
        epochs = self.config.epochs if epochs is None else epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer (the run's total), got {epochs!r}")
        if epochs < self.epoch:
            raise ValueError(f"epochs={epochs} but the run has already trained {self.epoch} epochs")
        self.config = self.config.replace(epochs=epochs)
        self._signal = None
        self.should_stop = False
        if self.writes_files:
            self._prepare_run_dir()
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                handlers[signum] = signal.signal(signum, self._on_signal)
        records: List[Dict[str, Any]] = []
        bar = tqdm(
            total=epochs,
            initial=self.epoch,
            desc="epochs",
            unit="epoch",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            for epoch in range(self.epoch + 1, epochs + 1):
                record = self._run_epoch(epoch)
                self.epoch, self.step_in_epoch = epoch, 0
                best = self._track_heldout(record)
                records.append(record)
                self.history.append(record)
                if self.writes_files:
                    append_metrics(self.run_dir, record)
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in SHOWN})
                bar.update(1)
                for callback in self.callbacks:
                    if hasattr(callback, "on_epoch_end"):
                        callback.on_epoch_end(self, record)
                stop = self._agree(self.should_stop)
                if epoch % self.config.checkpoint_every == 0 or epoch == epochs or stop:
                    self.save(best=best)  # best.pt first: see the module's docstring
                elif best:
                    self.save(self._path(BEST_NAME))
                if stop:
                    break
        except _Stop:
            raise self._interrupted(self.epoch + 1) from None
        except KeyboardInterrupt as e:
            if isinstance(e, TrainingInterrupted) or self._in_update:
                raise
            raise self._interrupted(self.epoch + 1) from None
        finally:
            bar.close()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        for callback in self.callbacks:
            if hasattr(callback, "on_train_end"):
                callback.on_train_end(self)
        return records

    def _agree(self, flag: bool) -> bool:
        """``flag`` on any process (every process must stop together)."""
        if not self.context.enabled:
            return bool(flag)
        value = torch.tensor([float(flag)], dtype=torch.float64, device=self.device)
        return bool(all_reduce_mean(value)[0] > 0)

    def _track_heldout(self, record: Dict[str, Any]) -> bool:
        """Whether this epoch's held-out loss is the best so far (then ``best.pt`` is written)."""
        loss = record.get(HELD_OUT + "loss")
        if loss is None or not math.isfinite(loss):
            return False
        if self.best_heldout is None or loss < self.best_heldout:
            self.best_heldout = float(loss)
            record["best"] = True
            return True
        return False

    # ------------------------------------------------------------------ the epoch's record
    def _step_components(self) -> Dict[str, float]:
        """The loss components of the step just taken (averaged over processes), as the ELBO computed them
        from the traces it differentiated (:attr:`DecompositionELBO.last_components`), without the loss
        itself, which the step gives; {} for an ELBO that keeps none."""
        components = dict(getattr(self.elbo, "last_components", None) or {})
        components.pop("loss", None)
        if components and self.context.enabled:
            keys = sorted(components)
            values = torch.tensor([components[k] for k in keys], dtype=torch.float64, device=self.device)
            components = dict(zip(keys, all_reduce_mean(values).cpu().tolist()))
        return components

    def _run_epoch(self, epoch: int) -> Dict[str, Any]:
        start = time.perf_counter()
        index_batches = self._epoch_batches(epoch)
        first = self.step_in_epoch
        if first == 0:
            self._partial = EpochMeans()
        inner = tqdm(
            total=len(index_batches),
            initial=first,
            desc=f"epoch {epoch}",
            unit="step",
            leave=False,
            disable=not (self.progress and len(index_batches) > 1),
            dynamic_ncols=True,
        )
        data = batches(
            self.train_set,
            index_batches[first:],
            self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        try:
            for step, x in enumerate(data, first + 1):
                x = x.to(self.device, non_blocking=True)
                loss = self.step(x, epoch, step) / self.dataset_size
                components = self._step_components()
                self.step_in_epoch = step
                self.global_step += 1
                self._partial.add(loss, components)
                inner.set_postfix(loss=f"{loss:.4g}")
                inner.update(1)
                if self._signal is not None:
                    raise _Stop
        finally:
            inner.close()
        record = self._partial.record(epoch, self.global_step)
        eval_every = self.config.eval_every
        if eval_every and (epoch % eval_every == 0 or epoch == self.config.epochs):
            record.update(self.heldout_components())
        bad = {k: v for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)}
        if bad:
            raise self._non_finite(
                "end-of-epoch " + ", ".join(sorted(bad)),
                list(bad.values())[0],
                epoch,
                self.step_in_epoch,
                None,
            )
        record["seconds"] = time.perf_counter() - start
        return record
