"""Training a run from start to end: :func:`train` a fresh run, :func:`resume` a stopped one.

Both build the run's objects from its :class:`~pyro_decomp.config.RunConfig` (seeded, so a build repeats
exactly), join the process group under torchrun, hold the run directory's lock for the whole run, drive a
:class:`~pyro_decomp.trainer.Trainer` and return the trained :class:`~pyro_decomp.runs.Run`. A resume
changes only the settings of :data:`~pyro_decomp.config.RESUMABLE` and refuses any other difference, from the
caller or from a ``config.json`` edited by hand, by name.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Dict, Optional, Sequence, Tuple

import pyro
import torch

from pyro_decomp.build import build, build_networks
from pyro_decomp.config import RESUMABLE, RunConfig, resolve_device
from pyro_decomp.data.indexing import take
from pyro_decomp.distributed import (
    DistributedContext,
    broadcast_module,
    init_distributed,
    shutdown,
)
from pyro_decomp.runs import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    CheckpointError,
    Run,
    check_resume_dir,
    check_run_dir,
    holds_run,
    load_checkpoint,
    load_config,
    lock_run,
    read_metrics,
    restart_command,
    set_aside,
    settle_overwrite,
)
from pyro_decomp.trainer import NonFiniteLossError, Trainer, TrainingInterrupted

__all__ = [
    "NonFiniteLossError",
    "Trainer",
    "TrainingBusy",
    "TrainingInterrupted",
    "check_model_size",
    "resume",
    "train",
]

SEED_MODULUS = 2**32  # NumPy's seeds are 32-bit: a process's seed is taken modulo this
# the shape of one data point of each built-in data set, for the memory estimate made before any data is read
DATA_SHAPES = {"pinwheel": (2,), "shapes": (1, 64, 64), "dsprites": (1, 64, 64), "fashion-mnist": (1, 32, 32)}
BYTES_PER_PARAMETER = 20  # float32 value, gradient and Adam's (amsgrad) three moments
TABLE_COPIES = 3  # (B, B, D) tables of the divergence estimators alive at once, with their gradients


class TrainingBusy(RuntimeError):
    """A second :func:`train` or :func:`resume` while one runs in another thread of the same process."""


_TRAINING = threading.Lock()  # Pyro's parameter store and torch's generators are global: one run at a time


@contextlib.contextmanager
def _one_training():
    if not _TRAINING.acquire(blocking=False):
        raise TrainingBusy(
            "one training per process at a time: another thread of this process is training; wait for it "
            "to end, or train in another process"
        )
    try:
        yield
    finally:
        _TRAINING.release()


# ---------------------------------------------------------------------------------------------- memory
def _available_memory(device: torch.device) -> Tuple[int, str]:
    """Bytes of memory free for a run on ``device`` and its name (0 when unknown)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info(device)[0], f"free on {device}"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "of memory available"
    except OSError:
        pass
    return 0, ""


def check_model_size(config: RunConfig, data=None, device=None) -> int:
    """Refuse a run too large for memory before anything is built or written; returns the estimate (bytes).

    The estimate: the parameters of the encoder and decoder (built on the ``meta`` device, which allocates
    nothing) at :data:`BYTES_PER_PARAMETER` bytes each, plus the (B, B, D) tables of log q(z_i|x_b) or kernel
    values that the divergence estimators hold per particle, :data:`TABLE_COPIES` of them in float32.

    :raises ValueError: the estimate exceeds the memory available (``/proc/meminfo``, or CUDA's free memory),
        naming the settings that set the size.
    """
    try:
        shape = tuple(take(data[0], [0])[0].shape[1:]) if data is not None else DATA_SHAPES[config.dataset]
        with torch.device("meta"):
            encoder, decoder = build_networks(config, shape)
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError, NotImplementedError):
        return 0  # the build reports a bad network option or data set itself
    parameters = sum(p.numel() for net in (encoder, decoder) for p in net.parameters())
    b, d = config.batch_size, config.latent_dim
    need = parameters * BYTES_PER_PARAMETER + TABLE_COPIES * 4 * b * b * d * config.num_particles
    dev = resolve_device(config.device) if device is None else torch.device(device)
    available, where = _available_memory(dev)
    if available and need > available:
        raise ValueError(
            f"the run needs about {need / 2**30:.3g} GiB ({parameters:.3g} parameters, (B, B, D) = "
            f"({b}, {b}, {d}) divergence tables), more than the {available / 2**30:.3g} GiB {where}: lower "
            "--latent-dim, --batch-size or the network sizes (--network-options)"
        )
    return need


# ---------------------------------------------------------------------------------------------- runs
def _start(config: RunConfig, device, context: Optional[DistributedContext], data=None):
    """Join (or make) the process group, set threads and seeds, build the run's objects."""
    dev = resolve_device(config.device) if device is None else torch.device(device)
    own_context = context is None
    if own_context:
        context = init_distributed(dev)
    if context.world_size > 1 and dev.type == "cuda":
        dev = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(dev)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    pyro.set_rng_seed(config.seed)
    vae, elbo, train_set, test_set = build(config, data=data)
    vae = vae.to(dev)
    broadcast_module(vae)
    if context.rank > 0:
        pyro.set_rng_seed((config.seed + 7919 * context.rank) % SEED_MODULUS)
    return dev, context, own_context, vae, elbo, train_set, test_set


def _fit(config: RunConfig, run_dir, *, device, context, data, progress, callbacks, before_fit) -> Run:
    """Start (process group, threads, seeds, build), make the :class:`Trainer`, let ``before_fit(trainer)``
    prepare the directory or restore a checkpoint, train up to ``config.epochs`` and return the run."""
    dev, context, own, vae, elbo, train_set, test_set = _start(config, device, context, data)
    try:
        trainer = Trainer(
            vae,
            elbo,
            train_set,
            config,
            run_dir,
            device=dev,
            context=context,
            progress=progress,
            # ground-truth data evaluate on their training set: no held-out numbers there
            test_set=None if test_set is train_set else test_set,
            callbacks=callbacks,
        )
        before_fit(trainer)
        trainer.fit(config.epochs)
        return _finish(trainer)
    finally:
        if own:
            shutdown(context)


def _finish(trainer: Trainer) -> Run:
    trainer.vae.eval()
    metrics = read_metrics(trainer.run_dir) if trainer.run_dir is not None else list(trainer.history)
    return Run(
        vae=trainer.vae,
        config=trainer.config,
        elbo=trainer.elbo,
        metrics=metrics,
        epoch=trainer.epoch,
        global_step=trainer.global_step,
        run_dir=trainer.run_dir,
        train_set=trainer.train_set,
        test_set=trainer.test_set,
        trained_epochs=len(trainer.history),
    )


@contextlib.contextmanager
def _removed_if_left_empty(run_dir: Optional[str]):
    """The directories of ``run_dir`` that did not exist before the block (it and any missing parents) and
    are empty when the block raises are removed: a run that fails before writing anything leaves no
    directory behind."""
    made = []
    path = os.path.abspath(run_dir) if run_dir is not None else None
    while path and not os.path.lexists(path):
        made.append(path)
        path = os.path.dirname(path)
    try:
        yield
    except BaseException:
        for directory in made:  # the deepest first
            try:
                os.rmdir(directory)
            except OSError:  # not empty, or not there: it and its parents are left as they are
                break
        raise


def train(
    config: RunConfig,
    run_dir: Optional[str] = None,
    *,
    device=None,
    progress: bool = True,
    context: Optional[DistributedContext] = None,
    callbacks: Sequence[Any] = (),
    data=None,
    overwrite: bool = False,
) -> Run:
    """Seed, build and train a fresh run; returns the trained :class:`~pyro_decomp.runs.Run`.

    First the run's memory is estimated (:func:`check_model_size`): a run too large is refused before any
    directory is made. With a ``run_dir``, the directory is checked (a new or empty directory, or one that
    holds a run) and locked, then checked to hold no run unless ``overwrite``. A directory that holds
    anything a run did not write, and no run, is refused: only the run's own files are ever written,
    replaced or deleted. With ``overwrite`` the old run's files are set aside once the new run is built, and
    dropped once the new run has written its first checkpoint; a new run that fails before that is removed
    and the old run put back (also after a kill, by the next ``train`` or ``resume`` of the directory). The
    lock is held until training ends; another process that wants the directory meanwhile gets
    :class:`~pyro_decomp.runs.RunLocked`, another thread of this process :class:`TrainingBusy`. Under
    torchrun (``WORLD_SIZE`` > 1 in the environment) the process joins the group and trains its shard.
    ``data``: a ``(train_set, test_set)`` pair instead of ``config.dataset``'s.
    """
    main = int(os.environ.get("RANK", "0")) == 0 if context is None else context.is_main
    writer = run_dir is not None and main
    check_model_size(config, data, device)
    with _one_training(), _removed_if_left_empty(run_dir if writer else None):
        if writer:
            check_run_dir(run_dir, overwrite=True)  # a directory, and writable: before the lock creates it
        with lock_run(run_dir, tidy=True) if writer else contextlib.nullcontext():
            if writer:
                settle_overwrite(run_dir)  # an --overwrite cut short by a kill
                check_run_dir(run_dir, overwrite)  # under the lock: no other process is starting a run there

            def before_fit(trainer):  # only once the run is built
                if writer and holds_run(run_dir):
                    set_aside(run_dir)

            try:
                return _fit(
                    config,
                    run_dir,
                    device=device,
                    context=context,
                    data=data,
                    progress=progress,
                    callbacks=callbacks,
                    before_fit=before_fit,
                )
            finally:
                if writer:
                    settle_overwrite(run_dir)


def resume(
    run_dir: str,
    changes: Optional[Dict[str, Any]] = None,
    *,
    epochs: Optional[int] = None,
    progress: bool = True,
    context: Optional[DistributedContext] = None,
    callbacks: Sequence[Any] = (),
    data=None,
) -> Run:
    """Continue the run in ``run_dir`` from its checkpoint.

    ``changes`` may set the settings of :data:`~pyro_decomp.config.RESUMABLE` (``epochs`` is the run's new
    total); they are written to ``config.json``. Any other difference, from ``changes`` or between
    ``config.json`` and the configuration stored in the checkpoint, is refused with a ValueError naming it.
    ``epochs`` is short for ``changes={"epochs": epochs}``. The run directory is locked before its files
    are read, and until training ends.
    """
    changes = dict(changes or {})
    if epochs is not None:
        changes["epochs"] = epochs
    refused = sorted(set(changes) - set(RESUMABLE))
    if refused:
        raise ValueError(
            f"{', '.join(refused)} cannot be changed when resuming {run_dir}: a resumed run keeps its "
            f"settings (only {', '.join(RESUMABLE)} may change)"
        )
    check_resume_dir(run_dir)
    load_config(run_dir)  # a missing run is named before the lock creates anything
    main = int(os.environ.get("RANK", "0")) == 0 if context is None else context.is_main
    with _one_training(), lock_run(run_dir) if main else contextlib.nullcontext():
        if main:
            settle_overwrite(run_dir)  # an --overwrite cut short by a kill: the old run is back
        # read under the lock: no other process is writing the run
        saved = load_config(run_dir)
        checkpoint = os.path.join(run_dir, CHECKPOINT_NAME)
        if not os.path.exists(checkpoint):
            raise CheckpointError(
                f"{run_dir} has no checkpoint ({CHECKPOINT_NAME}) to resume from: the run stopped before its "
                f"first checkpoint; start it again with {restart_command(run_dir)}"
            )
        state = load_checkpoint(checkpoint)
        try:
            stored = RunConfig.from_dict(state["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {checkpoint} holds no valid run configuration ({e})") from None
        edited = [k for k in saved.differences(stored) if k not in RESUMABLE]
        if edited:
            raise ValueError(
                f"{os.path.join(run_dir, CONFIG_NAME)} differs from the configuration in its checkpoint in "
                f"{', '.join(edited)}; a resumed run keeps its settings (restore those values, or start a "
                "new run)"
            )
        config = saved.replace(**changes)
        return _fit(
            config,
            run_dir,
            device=None,
            context=context,
            data=data,
            progress=progress,
            callbacks=callbacks,
            before_fit=lambda trainer: trainer.load_state_dict(state),  # the checkpoint read once
        )
