"""The dSprites file of DeepMind (Matthey, Higgins, Hassabis & Lerchner 2017), read without unpickling.

``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` holds ``imgs`` (737,280 × 64 × 64 uint8 in {0, 1}),
``latents_classes`` and ``latents_values`` (737,280 × 6: color, shape, scale, orientation, position x,
position y; color is constant) and a pickled ``metadata`` dictionary. Only the three arrays are read, through
their ``.npy`` headers with pickles refused; ``metadata`` is never touched. The images are decompressed in
chunks straight into packed bits (512 bytes an image), cached next to the file as a ``.npy`` that is
memory-mapped, so neither a uint8 nor a float32 copy of the 3 GB of pixels is ever held in memory.

The cache is served only while it verifies (see :mod:`pyro_decomp.data.ground_truth`): the CRC-32 of its bits
matches the one stamped when it was written, and it was unpacked from the file as it is now, which the stamp
records by the file's size, modification time and a digest of its first and last MiB (where a zip keeps the
CRC-32 of every member), and, when the file passed its checksum, by that checksum, so that a copy with a new
modification time still matches. Every problem with the file raises one :class:`DataFileError` (a
``ValueError``), or ``FileNotFoundError`` when it is missing, with a one-line message that names the file and
says how to get a good copy.
"""

from __future__ import annotations

import hashlib
import lzma
import math
import struct
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from pyro_decomp._atomic import atomic_open
from pyro_decomp.data.ground_truth import (
    IMAGE_SIZE,
    DataFileError,
    DownloadError,
    GroundTruthData,
    PackedImages,
    default_data_dir,
    load_or_build_packed,
    one_line,
    source_tag,
)
from pyro_decomp.data.shapes import SHAPES_FACTOR_NAMES

__all__ = ["DSprites", "DSPRITES_FILENAME", "DSPRITES_URL", "DSPRITES_CHECKSUM", "download_file"]

DSPRITES_FILENAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_URL = "https://github.com/deepmind/dsprites-dataset/raw/master/" + DSPRITES_FILENAME
# MD5 of the published file, as listed by several independent dSprites loaders (e.g. ones pinned to
# commit fa310c66 of deepmind/dsprites-dataset). A SHA-256 can be given instead through ``checksum=``.
DSPRITES_CHECKSUM = "md5:7da33b31b13a06f4b04a70402ce90c2e"

_CHUNK_IMAGES = 4096  # images decompressed at a time: 16 MB of uint8
_CACHE_VERSION = 1  # bump whenever the unpacking changes the cached bits
_HEAD_TAIL_BYTES = 1 << 20


def _how_to_get(path: Path) -> str:
    return (
        f"Download it with DSprites({str(path.parent)!r}, download=True), or fetch {DSPRITES_URL} "
        f"yourself and save it as {path}."
    )


def _bad_file(path: Path, problem: str) -> DataFileError:
    """The error for a file that is not a readable dSprites file: ``problem``, then what to do."""
    how = _how_to_get(path)
    return DataFileError(one_line(f"{path} {problem}. Delete it, then {how[0].lower()}{how[1:]}"))


def file_digest(path: Union[str, Path], algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_checksum(checksum: str):
    algorithm, sep, digest = checksum.partition(":")
    if not sep or algorithm.lower() not in hashlib.algorithms_available or not digest:
        raise ValueError(
            f"checksum must look like 'sha256:<hex digest>' or 'md5:<hex digest>', got {checksum!r}"
        )
    return algorithm.lower(), digest.lower()


def verify_checksum(path: Union[str, Path], checksum: str) -> None:
    """:class:`DataFileError` unless the file's digest is ``checksum`` (``"algorithm:hexdigest"``)."""
    algorithm, expected = _parse_checksum(checksum)
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise _bad_file(
            Path(path),
            f"has {algorithm} {actual}, expected {expected}: the file is corrupt, truncated or not the "
            f"dSprites release",
        )


def _source_tags(path: Path, checksum: Optional[str]) -> tuple:
    """The tags of the file as it is now: size, modification time, first and last MiB; and its checksum."""
    stat = path.stat()
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        digest.update(f.read(_HEAD_TAIL_BYTES))
        f.seek(max(stat.st_size - _HEAD_TAIL_BYTES, 0))
        digest.update(f.read(_HEAD_TAIL_BYTES))
    tags = [source_tag("dsprites", _CACHE_VERSION, stat.st_size, stat.st_mtime_ns, digest.hexdigest())]
    if checksum is not None:
        tags.append(source_tag("dsprites", _CACHE_VERSION, _parse_checksum(checksum)))
    return tuple(tags)


def download_file(
    url: str, path: Union[str, Path], checksum: Optional[str] = None, progress: bool = True
) -> Path:
    """Download ``url`` to ``path`` through a temporary file renamed on success (checksum verified first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                total = response.headers.get("Content-Length")
                with tqdm(
                    total=int(total) if total else None,
                    unit="B",
                    unit_scale=True,
                    desc=f"downloading {path.name}",
                    disable=not progress,
                ) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError) as e:
            raise DownloadError(
                one_line(f"could not download {url} ({e}). Fetch it by hand and save it as {path}.")
            ) from e
        if checksum is not None:
            f.flush()
            algorithm, expected = _parse_checksum(checksum)
            actual = file_digest(f.name, algorithm)
            if actual != expected:
                raise DataFileError(
                    f"the file downloaded from {url} has {algorithm} {actual}, expected {expected}; it was "
                    f"not saved as {path}. Try again, or fetch it by hand and save it as {path}."
                )
    return path


def _open_member(archive: zipfile.ZipFile, key: str, path: Path):
    """Open ``key.npy`` in the archive, parse its header: ``(stream, shape, fortran, dtype)``; no pickles."""
    try:
        stream = archive.open(key + ".npy")
    except KeyError:
        names = sorted(n[:-4] if n.endswith(".npy") else n for n in archive.namelist())
        raise _bad_file(
            path, f"has no array {key!r} (it holds {names}): it is not the dSprites file"
        ) from None
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f".npy format version {version}, expected 1.0 or 2.0")
    except ValueError as e:
        stream.close()
        raise _bad_file(path, f"has an unreadable .npy header for array {key!r} ({e})") from e
    if dtype.hasobject:
        stream.close()
        raise DataFileError(
            f"array {key!r} in {path} is an object array, which only unpickling could read; data files are "
            f"never unpickled here. The real dSprites file stores it as numbers. {_how_to_get(path)}"
        )
    return stream, shape, fortran, dtype


def _read_member(archive: zipfile.ZipFile, key: str, path: Path) -> np.ndarray:
    stream, shape, fortran, dtype = _open_member(archive, key, path)
    with stream:
        count = int(np.prod(shape))
        data = stream.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            ends = f"array {key!r} ends after {len(data)} of {count * dtype.itemsize} bytes"
            raise _bad_file(path, f"is truncated or corrupt: {ends}")
        array = np.frombuffer(data, dtype=dtype)
        return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _packed_blocks(path: Path, num_images: int):
    """Decompress ``imgs`` chunk by chunk and yield its packed bits, ``(m, 64, 8)`` uint8 blocks."""
    with _reading(path), zipfile.ZipFile(path) as archive:
        stream, shape, fortran, dtype = _open_member(archive, "imgs", path)
        if fortran:
            stream.close()
            raise _bad_file(path, "stores imgs in Fortran order; expected C order (one image after another)")
        if tuple(shape) != (num_images, IMAGE_SIZE, IMAGE_SIZE) or dtype.kind not in "ub":
            stream.close()
            raise _bad_file(
                path, f"has imgs of shape {tuple(shape)} dtype {dtype}, expected ({num_images}, 64, 64) uint8"
            )
        image_bytes = IMAGE_SIZE * IMAGE_SIZE * dtype.itemsize
        with stream:
            for start in range(0, num_images, _CHUNK_IMAGES):
                m = min(_CHUNK_IMAGES, num_images - start)
                data = stream.read(m * image_bytes)
                if len(data) != m * image_bytes:
                    ends = f"imgs ends after image {start + len(data) // image_bytes} of {num_images}"
                    raise _bad_file(path, f"is truncated or corrupt: {ends}")
                images = np.frombuffer(data, dtype=dtype).reshape(m, IMAGE_SIZE, IMAGE_SIZE)
                yield np.packbits(images != 0, axis=-1)


# What reading a damaged zip can raise: zipfile, zlib, lzma and bz2 (an OSError) errors, a short read, an
# unsupported or encrypted member (NotImplementedError, RuntimeError), a bad seek or field (ValueError,
# struct.error).
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OverflowError,
    struct.error,
    OSError,
)


class _reading:
    """Turn the errors of a truncated or corrupt archive into a :class:`DataFileError` naming the file.

    Errors that are already one (with their own message), and a missing or unreadable file (``OSError``s that
    say so: not the file's fault), pass through.
    """

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        passing = (DataFileError, FileNotFoundError, PermissionError, IsADirectoryError)
        if isinstance(error, _ARCHIVE_ERRORS) and not isinstance(error, passing):
            raise _bad_file(
                self.path,
                f"is truncated or corrupt, not a readable zip archive ({type(error).__name__}: {error})",
            ) from error
        return False


class DSprites(GroundTruthData):
    """DeepMind's dSprites images with their ground-truth factors.

    Factors (colour, constant, dropped): ``("shape", "scale", "orientation", "position_x", "position_y")``
    with sizes (3, 6, 40, 32, 32) and the file's values. Item ``i`` is ``(image float32 (1, 64, 64) in
    {0, 1}, factor indices int64 (5,))``, the file's i-th image. The file must list its images in dSprites'
    order (position y fastest), which is checked against ``latents_classes``; any smaller file with the same
    layout and a complete grid in that order also loads (with its own factor sizes).

    :param root: directory of ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``; default
        ``$PYRO_DECOMP_DATA`` or ``~/.cache/pyro_decomp``.
    :param bool download: download the file from DeepMind's GitHub repository when it is missing.
    :param bool verify: check the file's digest against ``checksum`` (on every load: about 0.1 s).
    :param str checksum: ``"algorithm:hexdigest"``; default :data:`DSPRITES_CHECKSUM`.
    :param bool progress: show progress bars while downloading and unpacking.

    The packed images are cached as ``<file>.packed.npy`` next to the file, served while it verifies (see the
    module docstring) and rebuilt with a warning otherwise; if that directory is read-only they are held in
    memory instead (377 MB). A file that is damaged or not the dSprites file raises :class:`DataFileError`.
    """

    def __init__(
        self,
        root: Optional[Union[str, Path]] = None,
        download: bool = False,
        verify: bool = True,
        checksum: Optional[str] = None,
        progress: bool = True,
    ):
        self.root = Path(root).expanduser() if root is not None else default_data_dir()
        self.path = self.root / DSPRITES_FILENAME
        checksum = DSPRITES_CHECKSUM if checksum is None else checksum
        _parse_checksum(checksum)
        if not self.path.exists():
            if not download:
                raise FileNotFoundError(f"the dSprites file is not at {self.path}. {_how_to_get(self.path)}")
            download_file(DSPRITES_URL, self.path, checksum if verify else None, progress)
        elif verify:
            verify_checksum(self.path, checksum)
        source = _source_tags(self.path, checksum if verify else None)

        with _reading(self.path), zipfile.ZipFile(self.path) as archive:
            classes = _read_member(archive, "latents_classes", self.path)
            values = _read_member(archive, "latents_values", self.path)
        self._set_grid(classes, values)

        n = len(self)
        self.cache_path = self.path.with_name(self.path.name + ".packed.npy")

        def bar():
            return tqdm(total=n, unit="img", unit_scale=True, desc="unpacking dSprites", disable=not progress)

        try:
            load_or_build_packed(
                self.cache_path,
                n,
                lambda: _packed_blocks(self.path, n),
                bar,
                "dSprites",
                source=source,
                source_name=f"{self.path} as it is now",
            )
            self._storage = PackedImages(path=self.cache_path)
        except PermissionError as e:
            warnings.warn(
                f"cannot write {self.cache_path} ({e}); holding the packed images in memory", stacklevel=2
            )
            self.cache_path = None
            with bar() as progress_bar:
                blocks = []
                for block in _packed_blocks(self.path, n):
                    blocks.append(block)
                    progress_bar.update(len(block))
            self._storage = PackedImages(array=np.concatenate(blocks))

    def _set_grid(self, classes: np.ndarray, values: np.ndarray) -> None:
        def bad(problem: str) -> DataFileError:
            return _bad_file(self.path, f"has latents_classes/latents_values that {problem}")

        if classes.ndim != 2 or classes.shape[1] != 6 or values.shape != classes.shape:
            raise bad(
                f"have shapes {classes.shape}/{values.shape}, expected (N, 6) each "
                f"(color, shape, scale, orientation, position x, position y)"
            )
        if classes.dtype.kind not in "iu" or values.dtype.kind != "f":
            raise bad(f"have dtypes {classes.dtype}/{values.dtype}, expected integers/floats")
        if classes.shape[0] == 0 or (classes[:, 0] != classes[0, 0]).any():
            raise bad("are empty or have more than one colour")
        classes = torch.from_numpy(classes[:, 1:].astype(np.int64))
        values = torch.from_numpy(values[:, 1:].astype(np.float64))
        if (classes < 0).any():
            raise bad("hold negative latent classes")
        sizes = (classes.max(0).values + 1).tolist()
        if math.prod(sizes) != classes.shape[0]:
            raise bad(
                f"are not a complete factor grid: class sizes {tuple(sizes)} for {classes.shape[0]} images"
            )
        per_factor = []
        for k, size in enumerate(sizes):
            v = torch.zeros(size, dtype=torch.float64)
            v[classes[:, k]] = values[:, k]
            if not torch.equal(v[classes[:, k]], values[:, k]):
                raise bad(f"give factor {SHAPES_FACTOR_NAMES[k]!r} two values for one class")
            per_factor.append(v)
        self._set_factors(SHAPES_FACTOR_NAMES, per_factor)
        if not torch.equal(classes, self.all_factors()):
            raise bad(
                f"are not a complete factor grid of sizes {tuple(sizes)} listed in dSprites' order "
                f"(position y fastest)"
            )

    def _images_uint8(self, index: torch.Tensor) -> np.ndarray:
        return self._storage.unpack(index.numpy())

    def __repr__(self) -> str:
        return f"DSprites(n={len(self)}, path={str(self.path)!r})"
