"""The run directory: its files, the checkpoint format, the per-epoch log, the RNG state and the lock.

A run directory holds::

    config.json      the RunConfig (plain JSON, with the package version)
    checkpoint.pt    model, optimiser, RNG states and position in the run (tensors and plain data)
    best.pt          the checkpoint of the lowest held-out loss
    metrics.jsonl    one JSON record per finished epoch
    evaluation.json  what ``pyro-decomp evaluate`` measured
    figures/         PNG figures
    .lock            held (fcntl.flock) by the one process that writes the run

Every file is written atomically (a temporary file renamed over the old one), except ``metrics.jsonl``, which
grows one fsynced line at a time. A checkpoint is read back with ``torch.load(weights_only=True)`` only, after
its zip members' CRC-32 checksums are verified, so a damaged file is reported as damaged and no file is ever
unpickled. :class:`Run` is a trained run in memory, as :func:`pyro_decomp.evaluation.load_run` and
:func:`pyro_decomp.training.train` return it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pickle
import random
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

from pyro_decomp._atomic import atomic_open
from pyro_decomp.config import RunConfig
from pyro_decomp.data.indexing import subset_index, take
from pyro_decomp.util import append_jsonl, read_jsonl
from pyro_decomp.version import __version__

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "EVALUATION_NAME",
    "FIGURES_DIR",
    "LOCK_NAME",
    "METRICS_NAME",
    "CheckpointError",
    "Run",
    "RunLocked",
    "append_metrics",
    "check_run_dir",
    "check_writable",
    "clear_run",
    "holds_run",
    "clean_temporary_files",
    "get_rng_state",
    "load_checkpoint",
    "load_config",
    "lock_run",
    "read_metrics",
    "restart_command",
    "save_checkpoint",
    "save_config",
    "set_rng_state",
    "state_mismatch",
    "write_json",
    "write_metrics",
]

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
EVALUATION_NAME = "evaluation.json"
FIGURES_DIR = "figures"
LOCK_NAME = ".lock"
CHECKPOINT_FORMAT = "pyro_decomp.checkpoint"
SHOWN = ("loss", "reconstruction", "kl", "divergence")  # the loss components in progress bars and curves
HELD_OUT = "heldout_"  # prefix of the held-out loss components in a metrics record
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, damaged, or carries anything but tensors and plain data."""


class RunLocked(RuntimeError):
    """Another process holds the run directory's lock."""


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class Run:
    """A trained run in memory.

    :ivar vae: the trained :class:`~pyro_decomp.vae.DecompVAE` (in eval mode when loaded).
    :ivar config: its :class:`~pyro_decomp.config.RunConfig`.
    :ivar elbo: the configured :class:`~pyro_decomp.elbo.DecompositionELBO`.
    :ivar metrics: the per-epoch records of ``metrics.jsonl`` (dicts), oldest first.
    :ivar epoch: the epochs trained.
    :ivar global_step: the optimiser steps taken.
    :ivar run_dir: the run directory (None for a run that wrote no files).
    :ivar train_set, test_set: the run's data sets.
    :ivar trained_epochs: the epochs trained by the call that returned this run (0 for a loaded run).
    """

    vae: Any
    config: RunConfig
    elbo: Any
    metrics: List[Dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    global_step: int = 0
    run_dir: Optional[str] = None
    train_set: Any = None
    test_set: Any = None
    trained_epochs: int = 0

    def __repr__(self) -> str:
        return f"Run(run_dir={self.run_dir!r}, dataset={self.config.dataset!r}, epoch={self.epoch})"

    def test_data(self, n: Optional[int] = None, seed: int = 0):
        """``(x, y)``: the inputs ``(n, *obs_shape)`` of ``n`` held-out points (all of them when ``n`` is
        None, else a subset drawn with ``seed``, in the data's order) and their labels ``(n,)`` or factors
        ``(n, K)``, or ``None``; the same for every data set, built-in or one's own. Ground-truth data sets
        (shapes, dSprites) are held out from nothing: their test set is the training set."""
        if self.test_set is None:
            raise ValueError(f"{self!r} holds no test set")
        index = subset_index(len(self.test_set), n, torch.Generator().manual_seed(seed))
        return take(self.test_set, index)


# ---------------------------------------------------------------------------------------------- config
def write_json(path: str, value: Any) -> None:
    """Write ``value`` as indented JSON to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write((json.dumps(value, indent=2) + "\n").encode())


def save_config(config: RunConfig, run_dir: str) -> None:
    """Write ``RUN_DIR/config.json`` atomically."""
    with atomic_open(os.path.join(run_dir, CONFIG_NAME)) as f:
        f.write((config.to_json() + "\n").encode())


def load_config(path: str) -> RunConfig:
    """Read a run's ``config.json`` (the file, or the run directory that holds it)."""
    if os.path.isdir(path):
        path = os.path.join(path, CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no run configuration at {path}: is this a run directory?") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a run configuration file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the run configuration {path}: {e}") from None
    try:
        return RunConfig.from_json(text)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(state: Dict[str, Any], path: str) -> None:
    """``torch.save(state)`` atomically: a temporary file in the same directory, flush, fsync, ``os.replace``.

    A kill at any moment leaves either the previous file or the new one, never a partial file at ``path``.
    """
    with atomic_open(path) as f:
        torch.save(state, f)


def _verify_archive(path: str) -> None:
    """Check that ``path`` is a complete zip archive whose members match their CRC-32 checksums."""
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is damaged: empty (0 bytes), truncated or corrupt")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {path} is damaged: truncated or corrupt, or not a pyro_decomp checkpoint (no zip "
            "archive)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"checkpoint {path} is damaged: truncated or corrupt ({type(e).__name__}: {e})"
        ) from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: corrupt, member {bad} fails its CRC-32 check")


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :class:`~pyro_decomp.training.Trainer`.

    The zip members' CRC-32 checksums are verified first; then ``torch.load(..., weights_only=True)``.

    :raises CheckpointError: the file is missing, empty, damaged, holds objects other than tensors and plain
        containers (refused, never executed), or is not a pyro_decomp checkpoint.
    """
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    _verify_archive(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it holds objects other than tensors and plain containers, "
            "which could run code when loaded; a pyro_decomp checkpoint never does"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as e:
        raise CheckpointError(
            f"checkpoint {path} is damaged: truncated or corrupt ({type(e).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pyro_decomp checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if state.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {state.get('format_version')!r}; this version of "
            f"pyro_decomp reads version {CHECKPOINT_VERSION}"
        )
    return state


def state_mismatch(error: RuntimeError) -> str:
    """The line of ``module.load_state_dict``'s error that says what does not fit (missing or unexpected
    keys, or the first tensor of another shape), for a one-line message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else lines[0] if lines else "mismatch"


# ---------------------------------------------------------------------------------------------- metrics
def read_metrics(run_dir: str) -> List[Dict[str, Any]]:
    """The per-epoch records of ``RUN_DIR/metrics.jsonl`` ([] when there are none); a damaged line is
    skipped with a warning and costs no other record."""
    return read_jsonl(os.path.join(run_dir, METRICS_NAME))


def append_metrics(run_dir: str, record: Dict[str, Any]) -> None:
    """Append one epoch's record to ``RUN_DIR/metrics.jsonl`` (fsynced)."""
    append_jsonl(os.path.join(run_dir, METRICS_NAME), record)


def write_metrics(run_dir: str, records: List[Dict[str, Any]]) -> None:
    """Replace ``RUN_DIR/metrics.jsonl`` by ``records``, atomically."""
    with atomic_open(os.path.join(run_dir, METRICS_NAME)) as f:
        f.write("".join(json.dumps(r) + "\n" for r in records).encode())


# ---------------------------------------------------------------------------------------------- RNG state
def get_rng_state() -> Dict[str, Any]:
    """The torch, CUDA, Python and NumPy generator states as tensors and plain values (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss,
        },
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`get_rng_state`'s state."""
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------------------------- lock, clean-up
def _lock_holder(fd: int) -> str:
    """The pid recorded in a held lock file; the holder writes it just after taking the lock, so an empty
    file is read again for a moment."""
    for _ in range(50):
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if holder:
            return holder
        time.sleep(0.01)
    return "unknown"


@contextlib.contextmanager
def lock_run(run_dir: str) -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` (created if needed) for the ``with`` block.

    The lock is ``fcntl.flock`` on ``RUN_DIR/.lock``, which records the holder's pid. The kernel releases it
    when the holder exits in any way, ``kill -9`` included, so a stale lock file never blocks.

    :raises RunLocked: another process holds it (the message names its pid).
    """
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _lock_holder(fd)
            raise RunLocked(
                f"run directory {run_dir} is in use by another pyro-decomp process (pid {holder}); wait for "
                "it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def clean_temporary_files(run_dir: str) -> List[str]:
    """Remove the temporary files of atomic writes cut short by a kill (``.NAME.XXXX.tmp``); returns them.
    Call it only while holding the run's lock."""
    removed = []
    if not os.path.isdir(run_dir):
        return removed
    for name in os.listdir(run_dir):
        if name.startswith(".") and name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(run_dir, name))
                removed.append(name)
    return removed


def checkpoint_state(**entries) -> Dict[str, Any]:
    """A checkpoint dict with the format marker and version around ``entries``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "pyro_decomp_version": __version__,
        **entries,
    }


def check_writable(directory: str) -> None:
    """A ValueError naming ``directory`` unless files can be created in it (checked before expensive work)."""
    probe = os.path.join(directory, f".write-test-{os.getpid()}.tmp")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"cannot write to {directory}: {e.strerror or e}") from None


RUN_FILES = (
    CONFIG_NAME,
    CHECKPOINT_NAME,
    BEST_NAME,
    METRICS_NAME,
    EVALUATION_NAME,
    FIGURES_DIR,
    "tensorboard",
)


def restart_command(run_dir: str) -> str:
    """The command that starts the run in ``run_dir`` again from scratch, with the settings of its
    ``config.json``."""
    return f"pyro-decomp train --config {os.path.join(run_dir, CONFIG_NAME)} --run-dir {run_dir} --overwrite"


def holds_run(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a run's configuration or checkpoint."""
    return any(os.path.exists(os.path.join(run_dir, name)) for name in (CONFIG_NAME, CHECKPOINT_NAME))


def check_run_dir(run_dir: str, overwrite: bool = False) -> None:
    """Before any expensive work: ``run_dir`` must be a writable directory (or creatable) that holds no run,
    unless ``overwrite``. Raises ValueError naming the directory and what to do."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"--run-dir {run_dir} is a file, not a directory")
    try:
        check_writable(run_dir)
    except ValueError as e:
        raise ValueError(f"--run-dir {run_dir}: {e}") from None
    if not overwrite and holds_run(run_dir):
        if not os.path.exists(os.path.join(run_dir, CHECKPOINT_NAME)):
            raise ValueError(
                f"--run-dir {run_dir} holds a run that stopped before its first checkpoint, so there is "
                f"nothing to resume: start it again with {restart_command(run_dir)}, or choose another "
                "directory"
            )
        raise ValueError(
            f"--run-dir {run_dir} already holds a run: continue it with --resume {run_dir}, or pass "
            "--overwrite, or choose another directory"
        )


def clear_run(run_dir: str) -> None:
    """Remove the files of the run in ``run_dir`` (under its lock): no old file mixes with the new run."""
    for name in RUN_FILES:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
