"""What a run directory owns: the names of a run's files, which files a run wrote (and so may replace or
delete), the checks on a directory before a run starts there, and the old run that ``--overwrite`` sets aside.

pyro_decomp writes, replaces and deletes only the files it wrote for a run, known by name: the files below,
the figures it draws under ``figures/``, TensorBoard's event files and the temporary files of its atomic
writes (``.NAME.<12 hex digits>.tmp``). Links are never followed; a new run starts only in a new or empty
directory. ``--overwrite`` moves the old run's files into ``RUN_DIR/.replaced-run`` once the new run is built;
:func:`settle_overwrite` drops them once the new run has a checkpoint, or puts them back when it has none,
also after a kill at any point (the next command that locks the directory settles it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import stat
from typing import Iterable, List, Optional

from pyro_decomp._atomic import TEMPORARY, UnsafePathError, atomic_open, check_regular

__all__ = [
    "ASIDE_NAME",
    "BEST_NAME",
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "EVALUATION_NAME",
    "FIGURES_DIR",
    "FIGURE_NAMES",
    "LOCK_NAME",
    "METRICS_NAME",
    "TENSORBOARD_DIR",
    "check_resume_dir",
    "check_run_dir",
    "check_writable",
    "clean_temporary_files",
    "clear_run",
    "figures_dir",
    "holds_run",
    "owned_files",
    "restart_command",
    "set_aside",
    "settle_overwrite",
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


def check_resume_dir(run_dir: str) -> None:
    """A ValueError naming ``run_dir`` when it is a file rather than the directory of a run to resume."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(
            f"cannot resume {run_dir}: it is a file, not a run directory (the directory that holds "
            "config.json and checkpoint.pt)"
        )


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


def figures_dir(run_dir: str, make: bool = True, name: str = FIGURES_DIR) -> str:
    """``RUN_DIR/figures`` (or ``RUN_DIR/name``), made if needed; a link or a file there, or a link or a
    non-file where a figure goes, is refused (:class:`UnsafePathError`): nothing is drawn through a link."""
    path = os.path.join(run_dir, name)
    with contextlib.suppress(FileExistsError):
        if make:
            os.mkdir(path)
    if os.path.lexists(path) and not stat.S_ISDIR(os.lstat(path).st_mode):
        kind = "a symbolic link" if os.path.islink(path) else "not a directory"
        raise UnsafePathError(
            f"refusing to write into {path}: it is {kind} (links are never followed); remove it"
        )
    for figure in FIGURE_NAMES if name == FIGURES_DIR else ():
        check_regular(os.path.join(path, figure + ".png"), "draw")
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
