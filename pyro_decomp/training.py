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
from typing import Any, Dict, Optional, Sequence

import pyro
import torch

from pyro_decomp.build import build
from pyro_decomp.config import RESUMABLE, RunConfig, resolve_device
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
    check_run_dir,
    clear_run,
    load_checkpoint,
    load_config,
    lock_run,
    read_metrics,
    restart_command,
)
from pyro_decomp.trainer import NonFiniteLossError, Trainer, TrainingInterrupted

__all__ = ["NonFiniteLossError", "Trainer", "TrainingInterrupted", "resume", "train"]


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
        pyro.set_rng_seed(config.seed + 7919 * context.rank)
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

    With a ``run_dir``, the directory is checked (a writable directory) and locked, then checked to hold no
    run unless ``overwrite``; the run is built, and only then, with ``overwrite``, are the old run's files
    removed, so a run that fails to build leaves the old one intact. The lock is held until training ends;
    another process that wants the directory meanwhile gets :class:`~pyro_decomp.runs.RunLocked`. Under
    torchrun (``WORLD_SIZE`` > 1 in the environment) the process joins the group and trains its shard.
    ``data``: a ``(train_set, test_set)`` pair instead of ``config.dataset``'s.
    """
    main = int(os.environ.get("RANK", "0")) == 0 if context is None else context.is_main
    writer = run_dir is not None and main
    if writer:
        check_run_dir(run_dir, overwrite=True)  # a directory, and writable: before the lock creates it
    with lock_run(run_dir) if writer else contextlib.nullcontext():
        if writer:
            check_run_dir(run_dir, overwrite)  # under the lock: no other process is starting a run there
        return _fit(
            config,
            run_dir,
            device=device,
            context=context,
            data=data,
            progress=progress,
            callbacks=callbacks,
            before_fit=lambda trainer: clear_run(run_dir) if writer else None,  # only once the run is built
        )


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
    load_config(run_dir)  # a missing run is named before the lock creates anything
    main = int(os.environ.get("RANK", "0")) == 0 if context is None else context.is_main
    with lock_run(run_dir) if main else contextlib.nullcontext():
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
