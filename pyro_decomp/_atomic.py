"""Atomic file writes that never follow a link: a file at its final path is either its old self or complete,
never partial, and nothing outside the target's directory is ever written through a symbolic link."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from typing import BinaryIO, Iterator, Union

from pyro_decomp.util import UnsafePathError, check_regular, open_no_follow

__all__ = ["UnsafePathError", "atomic_open", "check_regular", "open_no_follow", "TEMPORARY"]

# the temporary files of atomic_open: ".NAME.<12 hex digits>.tmp" (what a clean-up may remove, nothing else)
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp$")


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

    ``path`` must be a regular file or absent: a symbolic link or anything else there raises
    :class:`UnsafePathError` before anything is written. The temporary file is created with
    ``O_EXCL | O_NOFOLLOW`` and opened again with ``O_NOFOLLOW``. An ``OSError`` while writing (a full disk)
    is raised again with ``path`` as its file name, so that its one-line message names the file.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    check_regular(path)
    while True:
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
            break
        except FileExistsError:
            continue
    try:
        os.close(fd)
        # by name (callers use ``f.name``), and again without following a link
        with open(tmp, "wb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)) as f:
            try:
                yield f
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                if e.errno is None or e.filename is not None:
                    raise
                raise OSError(e.errno, e.strerror or str(e), path) from None
        check_regular(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
