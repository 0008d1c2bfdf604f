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
import secrets
import shlex
import stat
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch

from pyro_decomp._atomic import TEMPORARY, UnsafePathError, atomic_open, check_regular, open_no_follow
from pyro_decomp.config import RunConfig
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
    "UnsafePathError",
    "RunLocked",
    "append_metrics",
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

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
EVALUATION_NAME = "evaluation.json"
FIGURES_DIR = "figures"
LOCK_NAME = ".lock"
TENSORBOARD_DIR = "tensorboard"
ASIDE_NAME = ".replaced-run"  # the old run, set aside by --overwrite until the new one has a checkpoint
ASIDE_COMPLETE = ".complete"  # written in ASIDE_NAME once every file of the old run is in it
# the figures a run draws (evaluation.write_figures): figures/NAME.png
FIGURE_NAMES = (
    "training_curves",
    "aggregate_posterior",
    "reconstructions",
    "samples",
    "traversals",
    "latent_magnitude",
)
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
def lock_run(run_dir: str) -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` (created if needed) for the ``with`` block.

    The lock is ``fcntl.flock`` on ``RUN_DIR/.lock``, which records the holder's pid. The kernel releases it
    when the holder exits in any way, ``kill -9`` included, so a stale lock file never blocks. The lock file
    is opened without following links and must be a regular file: a symbolic link planted there is refused
    (:class:`UnsafePathError`) and the file it points to is left untouched.

    :raises RunLocked: another process holds it (the message names its pid).
    """
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_NAME)
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
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


RUN_FILES = (CONFIG_NAME, CHECKPOINT_NAME, BEST_NAME, METRICS_NAME, EVALUATION_NAME)
WRITE_TEST = "write-test"  # check_writable's probe: .write-test.<hex>.tmp


def _own_temporary(name: str, owned: Iterable[str]) -> bool:
    match = TEMPORARY.match(name)
    return match is not None and match.group("name") in owned


def _owned(rel: str) -> bool:
    """Whether the run-relative path ``rel`` (with ``/``) names a file that pyro_decomp writes in a run."""
    parts = rel.split("/")
    figures = tuple(f"{n}.png" for n in FIGURE_NAMES)
    if len(parts) == 1:
        return parts[0] in RUN_FILES or _own_temporary(parts[0], RUN_FILES + (WRITE_TEST,))
    if parts[0] == FIGURES_DIR and len(parts) == 2:
        return parts[1] in figures or _own_temporary(parts[1], figures)
    return parts[0] == TENSORBOARD_DIR and parts[-1].startswith("events.out.tfevents.")


def owned_files(run_dir: str) -> List[str]:
    """The files in ``run_dir`` that pyro_decomp wrote for a run, as run-relative paths with ``/``: the run's
    files by name, the figures by name, TensorBoard's event files and the temporary files of atomic writes.
    Regular files only: links, and directories reached through links, are never followed."""
    found = []

    def walk(rel: str) -> None:
        directory = os.path.join(run_dir, rel) if rel else run_dir
        try:
            names = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in names:
            child = f"{rel}/{name}" if rel else name
            mode = os.lstat(os.path.join(run_dir, child)).st_mode
            if stat.S_ISREG(mode) and _owned(child):
                found.append(child)
            elif stat.S_ISDIR(mode) and (
                child in (FIGURES_DIR, TENSORBOARD_DIR) or rel.startswith(TENSORBOARD_DIR)
            ):
                walk(child)

    walk("")
    return found


def _remove_empty_dirs(root: str) -> None:
    """Remove ``root/figures`` and the directories under ``root/tensorboard`` that are left empty."""
    for top in (TENSORBOARD_DIR, FIGURES_DIR):
        base = os.path.join(root, top)
        if os.path.islink(base) or not os.path.isdir(base):
            continue
        for directory, _, _ in sorted(os.walk(base), key=lambda t: -len(t[0])):
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # only an empty one goes


def clean_temporary_files(run_dir: str) -> List[str]:
    """Remove the temporary files of atomic writes cut short by a kill (``.NAME.<12 hex>.tmp`` of the run's
    own files, regular files only); returns them. Call it only while holding the run's lock."""
    removed = []
    for rel in owned_files(run_dir):
        if TEMPORARY.match(rel.rsplit("/", 1)[-1]):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(run_dir, rel))
                removed.append(rel)
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
    probe = os.path.join(directory, f".{WRITE_TEST}.{secrets.token_hex(6)}.tmp")
    try:
        os.makedirs(directory, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"cannot write to {directory}: {e.strerror or e}") from None


def restart_command(run_dir: str) -> str:
    """The command that starts the run in ``run_dir`` again from scratch, with the settings of its
    ``config.json`` (shell-quoted)."""
    config = shlex.quote(os.path.join(run_dir, CONFIG_NAME))
    return f"pyro-decomp train --config {config} --run-dir {shlex.quote(run_dir)} --overwrite"


def holds_run(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a run's configuration or checkpoint."""
    return any(os.path.lexists(os.path.join(run_dir, name)) for name in (CONFIG_NAME, CHECKPOINT_NAME))


def _foreign(run_dir: str) -> List[str]:
    """The entries of ``run_dir``, which holds no run, other than a lock file and temporary files that a run
    left (a run writes ``config.json`` before anything else, so any other file there is not a run's)."""
    if not os.path.isdir(run_dir):
        return []
    return sorted(
        name
        for name in os.listdir(run_dir)
        if name not in (LOCK_NAME, ASIDE_NAME) and not _own_temporary(name, RUN_FILES + (WRITE_TEST,))
    )


def check_run_dir(run_dir: str, overwrite: bool = False) -> None:
    """Before any expensive work: ``run_dir`` must be a writable directory (or creatable) that holds no run,
    unless ``overwrite``, and nothing that a run did not write unless it holds a run: pyro_decomp starts a
    run only in a new or empty directory, so it never replaces or deletes a file of the user's. Raises
    ValueError naming the directory and what to do."""
    if os.path.islink(run_dir) and not os.path.exists(run_dir):
        raise ValueError(
            f"--run-dir {run_dir} is a symbolic link to nothing (dangling, or a loop): remove it or point it "
            "at a directory"
        )
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"--run-dir {run_dir} is a file, not a directory")
    try:
        check_writable(run_dir)
    except ValueError as e:
        raise ValueError(f"--run-dir {run_dir}: {e}") from None
    if not holds_run(run_dir):
        foreign = _foreign(run_dir)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ValueError(
                f"--run-dir {run_dir} is not empty and holds no run ({shown}): a run starts only in a new or "
                "empty directory, so that no file of yours is replaced; choose another --run-dir"
            )
        return
    if not overwrite:
        if not os.path.exists(os.path.join(run_dir, CHECKPOINT_NAME)):
            raise ValueError(
                f"--run-dir {run_dir} holds a run that stopped before its first checkpoint, so there is "
                f"nothing to resume: start it again with {restart_command(run_dir)}, or choose another "
                "directory"
            )
        raise ValueError(
            f"--run-dir {run_dir} already holds a run: continue it with --resume {shlex.quote(run_dir)}, or "
            "pass --overwrite, or choose another directory"
        )


def figures_dir(run_dir: str) -> str:
    """``RUN_DIR/figures``, made if needed; a link or a file there is refused (:class:`UnsafePathError`)."""
    path = os.path.join(run_dir, FIGURES_DIR)
    try:
        os.mkdir(path)
    except FileExistsError:
        mode = os.lstat(path).st_mode
        if not stat.S_ISDIR(mode):
            raise UnsafePathError(
                f"refusing to draw figures into {path}: it is "
                f"{'a symbolic link' if stat.S_ISLNK(mode) else 'not a directory'} (links are never "
                "followed); remove or rename it"
            ) from None
    return path


def clear_run(run_dir: str) -> None:
    """Remove the files that pyro_decomp wrote for the run in ``run_dir`` (under its lock), and nothing
    else: no old file mixes with the new run."""
    for rel in owned_files(run_dir):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(run_dir, rel))
    _remove_empty_dirs(run_dir)


# --------------------------------------------------------------------------------------------- --overwrite
def _move_files(source: str, target: str, rels: List[str]) -> None:
    for rel in rels:
        destination = os.path.join(target, rel)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        check_regular(destination, "replace")
        os.replace(os.path.join(source, rel), destination)


def set_aside(run_dir: str) -> None:
    """Move the old run's files into ``RUN_DIR/.replaced-run`` (under the lock), checkpoint first, then
    mark the set complete; :func:`settle_overwrite` brings them back or drops them."""
    aside = os.path.join(run_dir, ASIDE_NAME)
    os.makedirs(aside, exist_ok=True)
    rels = [r for r in owned_files(run_dir) if not TEMPORARY.match(r.rsplit("/", 1)[-1])]
    rels.sort(key=lambda r: r != CHECKPOINT_NAME)  # a checkpoint at the top is then always the new run's
    _move_files(run_dir, aside, rels)
    _remove_empty_dirs(run_dir)
    with atomic_open(os.path.join(aside, ASIDE_COMPLETE)):
        pass


def settle_overwrite(run_dir: str) -> Optional[str]:
    """After an ``--overwrite`` (under the lock): once the new run has its first checkpoint the old run set
    aside is dropped ("dropped"); before that, the new run's files are removed and the old run is put back
    ("restored"). None when no run was set aside. Safe to call again after a kill at any point."""
    aside = os.path.join(run_dir, ASIDE_NAME)
    if os.path.islink(aside) or not os.path.isdir(aside):
        return None
    complete = os.path.lexists(os.path.join(aside, ASIDE_COMPLETE))
    if complete and os.path.lexists(os.path.join(run_dir, CHECKPOINT_NAME)):
        clear_run(aside)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(aside, ASIDE_COMPLETE))
        with contextlib.suppress(OSError):
            os.rmdir(aside)
        return "dropped"
    if complete:  # the new run wrote files, but no checkpoint: they go
        clear_run(run_dir)
    _move_files(aside, run_dir, owned_files(aside))
    _remove_empty_dirs(aside)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(aside, ASIDE_COMPLETE))
    with contextlib.suppress(OSError):
        os.rmdir(aside)
    return "restored"
