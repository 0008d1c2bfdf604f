"""Data sets with ground-truth factors of variation, and bit-packed storage of their binary images.

A ground-truth data set holds exactly one image for every combination of K discrete factors (shape, scale,
orientation, position, ...). Combination ``(f_1, ..., f_K)``, ``0 <= f_k < n_k``, is image number

    index = Σ_k f_k · Π_{j>k} n_j

(mixed radix, the last factor varying fastest: the order of the dSprites file). The disentanglement metrics
need exactly this: batches of images whose factors are known, with one factor held fixed.

Images are binary 64×64 and kept packed, eight pixels to a byte (``np.packbits`` along the width: 512 bytes
an image, 377 MB for the 737,280 images of the dSprites grid), either in memory or memory-mapped from a
``.npy`` file, so that a full grid costs at most its packed size in resident memory and usually much less.

A cache file is served only while it checks out as what would be built now. Its ``.npy`` header carries,
as a Python comment after the header's dictionary (which ``numpy.load`` ignores), a stamp

    #crc32:<CRC-32 of the image bytes> src:<tag>[,<tag>...]

where each tag (12 hex digits, :func:`source_tag`) fingerprints what the content was built from: the
renderer's version and grid, or the source file. On every load the tags are compared with the current
source's and the CRC-32 of the image bytes is recomputed (about 0.1 s for the 377 MB of the full grid: zlib's
CRC-32 runs at about 3 GB/s where BLAKE2b runs at 0.9); a cache that fails either check is rebuilt with a
warning that says why. The stamp is written into the temporary file before its rename, so a cache and its
stamp appear together.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyro_decomp._atomic import atomic_open

__all__ = [
    "GroundTruthData",
    "PackedImages",
    "DataFileError",
    "DownloadError",
    "default_data_dir",
    "source_tag",
]

IMAGE_SIZE = 64
PACKED_WIDTH = IMAGE_SIZE // 8


class DataFileError(ValueError, RuntimeError):
    """A data file is damaged, truncated or not the data set expected.

    The message is one line that names the file and says how to get a good copy. It is a ``ValueError``, which
    a command line reports as a user error, and also a ``RuntimeError``, which these errors were before (as
    numpy's ``AxisError`` is both a ``ValueError`` and an ``IndexError``).
    """


class DownloadError(OSError, RuntimeError):
    """A data set could not be downloaded; the one-line message says where to put a copy fetched by hand.

    An ``OSError``, as network errors are, and also a ``RuntimeError``, which it was before.
    """


def one_line(text) -> str:
    """``text`` with every run of white space, line breaks included, made one space."""
    return " ".join(str(text).split())


def default_data_dir() -> Path:
    """The directory where data sets and caches live: ``$PYRO_DECOMP_DATA`` or ``~/.cache/pyro_decomp``."""
    env = os.environ.get("PYRO_DECOMP_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyro_decomp"


class PackedImages:
    """Binary ``64×64`` images stored as packed bits, ``(N, 64, 8)`` uint8.

    The bits live either in an in-memory array or in a ``.npy`` file that is memory-mapped on first access.
    A memory-mapped store pickles as its path only and reopens the map lazily, so a data set holding it can
    be sent to ``DataLoader`` worker processes without copying the images.

    :param array: packed bits in memory, ``(N, 64, 8)`` uint8; or
    :param path: a ``.npy`` file of that shape and dtype, opened read-only with ``mmap_mode="r"``.
    """

    def __init__(self, array: Optional[np.ndarray] = None, path: Optional[Union[str, Path]] = None):
        if (array is None) == (path is None):
            raise ValueError("give exactly one of array= and path=")
        self.path = None if path is None else Path(path)
        self._array = array
        if array is not None:
            _check_packed(array, "array")
        else:
            self._array = open_packed(self.path)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = open_packed(self.path)
        return self._array

    @property
    def in_memory(self) -> bool:
        return self.path is None

    def __len__(self) -> int:
        return self.array.shape[0]

    def unpack(self, index: np.ndarray) -> np.ndarray:
        """Images number ``index`` (integer array of shape S) as uint8 ``S + (64, 64)`` in {0, 1}."""
        index = np.asarray(index, dtype=np.int64)
        packed = self.array[index.reshape(-1)]
        return np.unpackbits(packed, axis=-1).reshape(index.shape + (IMAGE_SIZE, IMAGE_SIZE))

    def __getstate__(self):
        state = self.__dict__.copy()
        if self.path is not None:
            state["_array"] = None  # reopened lazily in the receiving process
        return state


def _check_packed(array: np.ndarray, what: str) -> None:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, PACKED_WIDTH):
        raise ValueError(
            f"{what} must hold packed binary images of shape (N, {IMAGE_SIZE}, {PACKED_WIDTH}) uint8, "
            f"got shape {tuple(array.shape)} dtype {array.dtype}"
        )


def open_packed(path: Union[str, Path], num_images: Optional[int] = None) -> np.ndarray:
    """Memory-map a packed-image ``.npy`` file read-only; ``ValueError`` if truncated or of another shape."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable packed-image .npy file ({e})") from e
    _check_packed(array, str(path))
    if num_images is not None and array.shape[0] != num_images:
        raise ValueError(f"{path} holds {array.shape[0]} images, expected {num_images}")
    return array


_STAMP = re.compile(r"#crc32:([0-9a-f]{8}) src:([0-9a-f,]*)\s*$")
_TAG = re.compile(r"[0-9a-f]{1,32}")
_CHUNK_BYTES = 1 << 23


def source_tag(*parts) -> str:
    """A 12-hex-digit fingerprint (BLAKE2b of the ``repr``) of what a cache's content is built from."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=6).hexdigest()


def _packed_header(num_images: int, crc: int, source: Sequence[str]) -> bytes:
    """A ``.npy`` 1.0 header for ``(num_images, 64, 8)`` uint8, the stamp a comment, padded to 64 bytes."""
    text = (
        f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({num_images}, {IMAGE_SIZE}, {PACKED_WIDTH}), }}"
        f" #crc32:{crc:08x} src:{','.join(source)}"
    )
    length = -(-(10 + len(text) + 1) // 64) * 64 - 10
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", length) + (text.ljust(length - 1) + "\n").encode("latin1")


def _crc32(f, offset: int) -> int:
    """CRC-32 of the bytes of the open file ``f`` from ``offset`` to its end."""
    f.seek(offset)
    buffer = bytearray(_CHUNK_BYTES)
    view = memoryview(buffer)
    crc = 0
    while True:
        n = f.readinto(buffer)
        if not n:
            return crc
        crc = zlib.crc32(view[:n], crc)


def write_packed_atomically(
    path: Union[str, Path],
    num_images: int,
    blocks: Iterable[np.ndarray],
    progress=None,
    source: Sequence[str] = (),
) -> Path:
    """Write packed images, given as consecutive ``(m, 64, 8)`` uint8 blocks, to a ``.npy`` file atomically.

    The bits go to a temporary file in the same directory, which is renamed to ``path`` only once all
    ``num_images`` images are written, stamped (the CRC-32 of the bits and the ``source`` tags, see the module
    docstring) and flushed: an interrupted write leaves no file at ``path`` (and removes its temporary file),
    so a cache at ``path`` is never partial. Memory stays at one block.

    :param source: the tags (:func:`source_tag`) of what the images are built from.
    :param progress: an optional ``tqdm`` bar, advanced by the number of images in each block.
    """
    path = Path(path)
    source = tuple(source)
    bad = [tag for tag in source if not _TAG.fullmatch(tag)]
    if bad:
        raise ValueError(f"source tags must be 1 to 32 lowercase hex digits, got {bad}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        header = _packed_header(num_images, 0, source)
        f.write(header)
        written, crc = 0, 0
        for block in blocks:
            _check_packed(block, "block")
            if written + block.shape[0] > num_images:
                raise RuntimeError(f"more than the {num_images} images announced for {path}")
            data = np.ascontiguousarray(block).data
            f.write(data)
            crc = zlib.crc32(data, crc)
            written += block.shape[0]
            if progress is not None:
                progress.update(block.shape[0])
        if written != num_images:
            raise RuntimeError(f"wrote {written} images to {path}, expected {num_images}")
        f.seek(0)
        f.write(_packed_header(num_images, crc, source))  # the same length: only the digits differ
    return path


def open_verified(
    path: Union[str, Path], num_images: int, source: Sequence[str], source_name: str
) -> np.ndarray:
    """Memory-map the packed cache at ``path`` after checking that it holds what would be built now.

    ``ValueError`` saying why it cannot be served: unreadable, of another shape or size, unstamped, built from
    another source (none of its tags is in ``source``, described as ``source_name``), or damaged (the CRC-32
    of its image bytes is not the one stamped when it was written). The check reads the file once through the
    page cache, not through the map, so it leaves no image resident in this process.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version != (1, 0):
                raise ValueError(f".npy format version {version}, expected (1, 0)")
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        except ValueError as e:
            raise ValueError(f"{path} is not a readable packed-image .npy file ({one_line(e)})") from e
        offset = f.tell()
        if fortran or dtype != np.uint8 or tuple(shape) != (num_images, IMAGE_SIZE, PACKED_WIDTH):
            raise ValueError(
                f"{path} holds {dtype} of shape {tuple(shape)}, expected ({num_images}, {IMAGE_SIZE}, "
                f"{PACKED_WIDTH}) uint8"
            )
        size = os.fstat(f.fileno()).st_size
        if size != offset + num_images * IMAGE_SIZE * PACKED_WIDTH:
            raise ValueError(
                f"{path} has {size} bytes, expected {offset + num_images * IMAGE_SIZE * PACKED_WIDTH}: "
                f"it is truncated or extended"
            )
        f.seek(10)
        stamp = _STAMP.search(f.read(offset - 10).decode("latin1"))
        if stamp is None:
            raise ValueError(f"{path} carries no checksum (it was written by an older version)")
        stamped = {tag for tag in stamp.group(2).split(",") if tag}
        matches = bool(stamped & set(source)) if source else not stamped
        if not matches:
            raise ValueError(f"{path} was built from another source than {source_name}")
        crc = _crc32(f, offset)
        if crc != int(stamp.group(1), 16):
            raise ValueError(
                f"{path} is damaged: the CRC-32 of its images is {crc:08x}, not {stamp.group(1)} as written"
            )
        return np.memmap(
            f, dtype=np.uint8, mode="r", offset=offset, shape=(num_images, IMAGE_SIZE, PACKED_WIDTH)
        )


def load_or_build_packed(
    path: Union[str, Path],
    num_images: int,
    build,
    progress_bar=None,
    what: str = "images",
    source: Sequence[str] = (),
    source_name: str = "the current source",
) -> np.ndarray:
    """Memory-map the packed cache at ``path`` if it verifies (:func:`open_verified`); else (re)write it.

    ``build()`` returns an iterable of packed blocks (see :func:`write_packed_atomically`) and is called only
    when the cache has to be written, as is ``progress_bar()``, which returns a ``tqdm`` bar (or ``None``).
    A cache that exists but fails verification is rebuilt with a ``RuntimeWarning`` naming it and saying why.

    :param source: the tags (:func:`source_tag`) of what the images are built from now; a cache is served
        when it was stamped with at least one of them (or, when ``source`` is empty, with none).
    :param source_name: how the warning describes that source.
    """
    path = Path(path)
    if path.exists():
        try:
            return open_verified(path, num_images, source, source_name)
        except (ValueError, OSError) as e:
            warnings.warn(f"rebuilding the {what} cache: {e}", RuntimeWarning, stacklevel=3)
    bar = progress_bar() if progress_bar is not None else None
    try:
        write_packed_atomically(path, num_images, build(), progress=bar, source=source)
    finally:
        if bar is not None:
            bar.close()
    return open_packed(path, num_images)


class GroundTruthData(torch.utils.data.Dataset):
    """Base class of the data sets with a complete grid of discrete ground-truth factors.

    Item ``i`` is ``(image, factors)``: the image as float32 ``(1, 64, 64)`` with values in {0, 1} and its
    factor indices as int64 ``(K,)``, with ``i = index_from_factors(factors)``.

    Subclasses set the grid with :meth:`_set_factors` and implement :meth:`_images_uint8`.

    Attributes: ``factor_names`` (K names), ``factor_sizes`` (n_1, ..., n_K), ``factor_values`` (K float32
    tensors, the value of each level of each factor), ``num_factors`` (K).
    """

    image_shape = (1, IMAGE_SIZE, IMAGE_SIZE)

    def _set_factors(self, names: Sequence[str], values: Sequence[Union[torch.Tensor, np.ndarray]]) -> None:
        if len(names) != len(values):
            raise ValueError(f"{len(names)} factor names for {len(values)} factor value lists")
        self.factor_names: Tuple[str, ...] = tuple(names)
        self.factor_values: List[torch.Tensor] = [
            torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in values
        ]
        self.factor_sizes: Tuple[int, ...] = tuple(len(v) for v in self.factor_values)
        if min(self.factor_sizes) < 1:
            raise ValueError(f"every factor needs at least one value, got sizes {self.factor_sizes}")
        sizes = torch.tensor(self.factor_sizes, dtype=torch.int64)
        strides = torch.ones_like(sizes)
        if len(sizes) > 1:
            strides[:-1] = torch.flip(torch.cumprod(torch.flip(sizes[1:], (0,)), 0), (0,))
        self._sizes, self._strides = sizes, strides

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    def __len__(self) -> int:
        return math.prod(self.factor_sizes)

    def _check_factors(self, factors) -> torch.Tensor:
        factors = torch.as_tensor(factors)
        if factors.dtype.is_floating_point or factors.dtype.is_complex or factors.dtype == torch.bool:
            raise ValueError(f"factors must be integer indices, got dtype {factors.dtype}")
        factors = factors.long()
        if factors.dim() < 1 or factors.shape[-1] != self.num_factors:
            raise ValueError(
                f"factors must have shape (..., {self.num_factors}) for factors {self.factor_names}, "
                f"got {tuple(factors.shape)}"
            )
        bad = (factors < 0) | (factors >= self._sizes)
        if bad.any():
            k = int(bad.reshape(-1, self.num_factors).any(0).nonzero()[0])
            value = int(factors[..., k][bad[..., k]][0])
            raise ValueError(
                f"factor {self.factor_names[k]!r} must be in [0, {self.factor_sizes[k]}), got {value}"
            )
        return factors

    def _check_index(self, index) -> torch.Tensor:
        index = torch.as_tensor(index)
        if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
            raise ValueError(f"index must be integer, got dtype {index.dtype}")
        index = index.long()
        bad = (index < 0) | (index >= len(self))
        if bad.any():
            raise ValueError(f"index must be in [0, {len(self)}), got {int(index[bad][0])}")
        return index

    def index_from_factors(self, factors) -> torch.Tensor:
        """Image numbers of factor indices: ``(..., K)`` → ``(...,)`` int64 (mixed radix, last fastest)."""
        return (self._check_factors(factors) * self._strides).sum(-1)

    def factors_from_index(self, index) -> torch.Tensor:
        """Factor indices of image numbers: ``(...,)`` → ``(..., K)`` int64, inverse of index_from_factors."""
        index = self._check_index(index)
        return torch.div(index.unsqueeze(-1), self._strides, rounding_mode="floor") % self._sizes

    def values_from_factors(self, factors) -> torch.Tensor:
        """The factor values ``(..., K)`` float32 at factor indices ``(..., K)``."""
        factors = self._check_factors(factors)
        return torch.stack([v[factors[..., k]] for k, v in enumerate(self.factor_values)], dim=-1)

    def all_factors(self) -> torch.Tensor:
        """The factor indices of the whole data set in image order, ``(N, K)`` int64."""
        return self.factors_from_index(torch.arange(len(self)))

    def sample_factors(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` factor combinations ``(n, K)`` int64: each factor uniform over its levels, independently."""
        if int(n) != n or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        u = torch.rand(int(n), self.num_factors, generator=generator, dtype=torch.float64)
        return torch.minimum((u * self._sizes).long(), self._sizes - 1)

    def _images_uint8(self, index: torch.Tensor) -> np.ndarray:
        """Images number ``index`` (1-D int64) as uint8 ``(n, 64, 64)`` in {0, 1}."""
        raise NotImplementedError

    def images_at(self, index, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Images number ``index`` (shape S) as ``S + (1, 64, 64)`` tensors of ``dtype`` in {0, 1}.

        The result is materialised (16 KiB an image as float32, 4 KiB as uint8): read large sets in batches.
        """
        index = self._check_index(index)
        flat = self._images_uint8(index.reshape(-1))
        return torch.from_numpy(flat).to(dtype).reshape(index.shape + self.image_shape)

    def images(self, factors, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Images of factor indices ``(..., K)`` as ``(..., 1, 64, 64)`` tensors of ``dtype`` in {0, 1}."""
        return self.images_at(self.index_from_factors(factors), dtype=dtype)

    def __getitem__(self, i):
        i = int(i)
        if i < 0:
            i += len(self)
        index = self._check_index(torch.tensor([i]))
        return self.images_at(index)[0], self.factors_from_index(index)[0]
