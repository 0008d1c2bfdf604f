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
grows one fsynced line at a time; no write follows a link. Which files a run owns, and the checks on a
directory before a run starts there, are :mod:`pyro_decomp.run_files`'s (re-exported here). A checkpoint is
read back with ``torch.load(weights_only=True)`` only, after its zip members' CRC-32 checksums are verified,
so a damaged file is reported as damaged and no file is ever unpickled. :class:`Run` is a trained run in
memory, as :func:`pyro_decomp.evaluation.load_run` and :func:`pyro_decomp.training.train` return it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pickle
import random
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

from pyro_decomp._atomic import UnsafePathError, atomic_open, open_no_follow
from pyro_decomp.config import RunConfig
from pyro_decomp.data.indexing import subset_index, take
from pyro_decomp.run_files import (
    ASIDE_NAME,
    BEST_NAME,
    CHECKPOINT_NAME,
    CONFIG_NAME,
    EVALUATION_NAME,
    FIGURE_NAMES,
    FIGURES_DIR,
    LOCK_NAME,
    METRICS_NAME,
    TENSORBOARD_DIR,
    check_resume_dir,
    check_run_dir,
    check_writable,
    clean_temporary_files,
    clear_run,
    figures_dir,
    holds_run,
    owned_files,
    restart_command,
    set_aside,
    settle_overwrite,
)
from pyro_decomp.util import append_jsonl, read_jsonl
from pyro_decomp.version import __version__

__all__ = [
    "ASIDE_NAME",
    "BEST_NAME",
    "CHECKPOINT_FILES",
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "EVALUATION_NAME",
    "FIGURES_DIR",
    "FIGURE_NAMES",
    "LOCK_NAME",
    "METRICS_NAME",
    "TENSORBOARD_DIR",
    "CheckpointError",
    "Run",
    "UnsafePathError",
    "RunLocked",
    "append_metrics",
    "check_resume_dir",
    "check_run_dir",
    "check_writable",
    "clear_run",
    "figures_dir",
    "holds_run",
    "owned_files",
    "set_aside",
    "settle_overwrite",
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

CHECKPOINT_FILES = {"last": CHECKPOINT_NAME, "best": BEST_NAME}  # load_run's checkpoint= choices
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
    :ivar checkpoint: which checkpoint the weights come from: ``"last"`` (``checkpoint.pt``) or ``"best"``
        (``best.pt``, the lowest held-out loss).
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
    checkpoint: str = "last"

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
    if os.path.isdir(path) and os.path.basename(os.path.normpath(path)) not in (CHECKPOINT_NAME, BEST_NAME):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    if not os.path.isfile(path):
        raise CheckpointError(
            f"checkpoint {path} is damaged: it is a directory, not a checkpoint file; remove or rename it"
        )
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
    problem = _checkpoint_problem(state)
    if problem:
        raise CheckpointError(f"checkpoint {path} is damaged: {problem}")
    return state


def _is_int(value, lower: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lower


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checkpoint_problem(state: Dict[str, Any]) -> str:
    """What is wrong with a checkpoint's contents by meaning ("" when nothing): the entries a resume and
    :func:`~pyro_decomp.evaluation.load_run` read, their types, and a position inside the run."""
    for key, kind, what in (
        ("model", dict, "a dict of tensors"),
        ("optimizer", dict, "a dict"),
        ("rng", dict, "a dict of generator states"),
        ("config", dict, "a dict of settings"),
        ("partial", dict, "a dict"),
    ):
        if key not in state:
            return f"no '{key}' entry"
        if not isinstance(state[key], kind):
            return f"its '{key}' entry is a {type(state[key]).__name__}, expected {what}"
    bad = [k for k, v in state["model"].items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        return f"its 'model' entry holds {bad[0]!r}, which is not a named tensor"
    for key in ("epoch", "step", "global_step"):
        if not _is_int(state.get(key)):
            return f"its '{key}' is {state.get(key)!r}, expected an integer >= 0"
    total = state["config"].get("epochs")
    if _is_int(total, 1) and state["epoch"] > total:
        return f"its epoch {state['epoch']} is past the run's {total} epochs"
    if state["global_step"] < state["step"]:
        return f"its global step {state['global_step']} is before its step {state['step']} in the epoch"
    partial = state["partial"]
    if not (_is_real(partial.get("loss_sum")) and _is_int(partial.get("steps"))):
        return f"its 'partial' entry is {partial!r}, expected a loss_sum number and a steps count"
    best = state.get("best_heldout")
    if best is not None and not _is_real(best):
        return f"its 'best_heldout' is {best!r}, expected a number or None"
    rng = state["rng"]
    if not (
        torch.is_tensor(rng.get("torch"))
        and isinstance(rng.get("python"), dict)
        and torch.is_tensor(rng["python"].get("state"))
        and isinstance(rng.get("numpy"), dict)
        and torch.is_tensor(rng["numpy"].get("keys"))
    ):
        return "its 'rng' entry lacks the torch, python and numpy generator states"
    ranks = state.get("rng_ranks")
    if ranks is not None and not (isinstance(ranks, list) and all(isinstance(r, dict) for r in ranks)):
        return "its 'rng_ranks' entry is not a list of generator states"
    return ""


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
def lock_run(run_dir: str, tidy: bool = False) -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` (created if needed) for the ``with`` block.

    The lock is ``fcntl.flock`` on ``RUN_DIR/.lock``, which records the holder's pid. The kernel releases it
    when the holder exits in any way, ``kill -9`` included, so a stale lock file never blocks. The lock file
    is opened without following links and must be a regular file: a symbolic link planted there is refused
    (:class:`UnsafePathError`) and the file it points to is left untouched.

    With ``tidy``, a block that raises and leaves nothing in the directory but the lock file, which this
    call created, removes that file: a run that fails before writing anything (its data cannot be read,
    say) leaves no lock file behind.

    :raises RunLocked: another process holds it (the message names its pid).
    """
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_NAME)
    made_lock = not os.path.lexists(path)
    fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)
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
        except BaseException:
            if tidy and made_lock:
                _remove_lone_lock(run_dir, path)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _remove_lone_lock(run_dir: str, path: str) -> None:
    """Remove the lock file at ``path`` (still held) when it is all that ``run_dir`` holds."""
    with contextlib.suppress(OSError):
        if os.listdir(run_dir) == [LOCK_NAME]:
            os.unlink(path)


def checkpoint_state(**entries) -> Dict[str, Any]:
    """A checkpoint dict with the format marker and version around ``entries``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "pyro_decomp_version": __version__,
        **entries,
    }
