"""Small helpers shared by every floor of the package: seeded draws, a module's device, JSON-lines files.

Each exists once here so that training, evaluation, metrics and experiments agree on what they mean: a
seeded draw never disturbs the caller's random state, and a JSON-lines file with a damaged line keeps every
record that still parses.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Union

import torch

__all__ = [
    "UnsafePathError",
    "append_jsonl",
    "check_regular",
    "module_device",
    "open_no_follow",
    "read_jsonl",
    "seeded",
]

PathLike = Union[str, os.PathLike]


class UnsafePathError(ValueError):
    """A path that the package refuses to write, replace or delete: a symbolic link or not a regular file."""


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def check_regular(path: Union[str, os.PathLike], action: str = "write") -> bool:
    """Whether ``path`` exists as a regular file (False when it does not exist); anything else there (a
    symbolic link, a directory, a FIFO, ...) raises :class:`UnsafePathError` naming it and the fix."""
    path = os.fspath(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISREG(mode):
        return True
    raise UnsafePathError(
        f"refusing to {action} {path}: it is {_kind(mode)}, not a file pyro_decomp wrote (links are never "
        "followed); remove or rename it"
    )


def open_no_follow(path: Union[str, os.PathLike], flags: int, mode: int = 0o666) -> int:
    """``os.open(path, flags | O_NOFOLLOW)`` that accepts regular files only; returns the descriptor.

    A symbolic link or anything that is not a regular file (a directory, a FIFO, a device) raises
    :class:`UnsafePathError` naming it; the file is checked with ``fstat`` on the opened descriptor, so
    nothing can swap it between the check and the use. Open without ``O_TRUNC``, truncate after this check.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError:
        if os.path.islink(path) or os.path.isdir(path):
            check_regular(path)
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        check_regular(path)
        raise UnsafePathError(f"refusing to write {path}: not a regular file; remove or rename it")
    return fd


@contextmanager
def seeded(generator: Optional[torch.Generator]) -> Iterator[None]:
    """Draw from torch's global generator seeded from ``generator``, then restore the global state.

    With ``generator=None`` nothing is forked: draws come from (and advance) the global generator. The seed
    is one draw of ``generator``, so a generator passed to several calls gives each call its own stream.
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def read_jsonl(path: PathLike) -> List[Dict[str, Any]]:
    """Every record of a JSON-lines file that parses as a JSON object, in order ([] when there is no file).

    A damaged line (cut short by a kill, or edited by hand) is skipped with a warning that names the file
    and the line; the records after it are kept.
    """
    if not os.path.exists(path):
        return []
    records, damaged = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                damaged.append(number)
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                damaged.append(number)
    if damaged:
        shown = ", ".join(f"{os.fspath(path)}:{n}" for n in damaged[:5]) + (
            ", ..." if len(damaged) > 5 else ""
        )
        warnings.warn(f"skipped {len(damaged)} damaged line(s) of JSON records: {shown}", stacklevel=2)
    return records


def append_jsonl(path: PathLike, record: Dict[str, Any]) -> None:
    """Append one record as a line and flush it to disk (fsync), so that a crash keeps every earlier line.

    The file is opened without following links and must be a regular file
    (:class:`UnsafePathError` otherwise); a failed write (a full disk) names the file.
    """
    fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno is None or e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or str(e), os.fspath(path)) from None
