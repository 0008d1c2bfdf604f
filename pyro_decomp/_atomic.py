"""Atomic file writes: a file at its final path is either its old self or complete, never partial."""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import BinaryIO, Iterator, Union

__all__ = ["atomic_open"]


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Union[str, os.PathLike]) -> Iterator[BinaryIO]:
    """Open a temporary file next to ``path`` for binary writing (its ``name`` is the temporary path).

    On a clean exit the file is flushed, fsynced and renamed over ``path`` (``os.replace``), and the directory
    is fsynced; on any exception, ``KeyboardInterrupt`` included, the temporary file is removed and ``path``
    is left as it was. The file gets the usual permissions (0666 less the umask), not ``mkstemp``'s 0600.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    while True:
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        os.close(fd)
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
