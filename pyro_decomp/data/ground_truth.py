"""Data sets with ground-truth factors of variation, and bit-packed storage of their binary images.

A ground-truth data set holds exactly one image for every combination of K discrete factors (shape, scale,
orientation, position, ...). Combination ``(f_1, ..., f_K)``, ``0 <= f_k < n_k``, is image number

    index = Σ_k f_k · Π_{j>k} n_j

(mixed radix, the last factor varying fastest: the order of the dSprites file). The disentanglement metrics
need exactly this: batches of images whose factors are known, with one factor held fixed.

Images are binary 64×64 and kept packed, eight pixels to a byte (``np.packbits`` along the width: 512 bytes
an image, 377 MB for the 737,280 images of the dSprites grid), either in memory or memory-mapped from a
``.npy`` file, so that a full grid costs at most its packed size in resident memory and usually much less.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyro_decomp._atomic import atomic_open

__all__ = ["GroundTruthData", "PackedImages", "default_data_dir"]

IMAGE_SIZE = 64
PACKED_WIDTH = IMAGE_SIZE // 8


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


def write_packed_atomically(
    path: Union[str, Path], num_images: int, blocks: Iterable[np.ndarray], progress=None
) -> Path:
    """Write packed images, given as consecutive ``(m, 64, 8)`` uint8 blocks, to a ``.npy`` file atomically.

    The bits go to a temporary file in the same directory, which is renamed to ``path`` only once all
    ``num_images`` images are written and flushed: an interrupted write leaves no file at ``path`` (and
    removes its temporary file), so a cache at ``path`` is never partial. Memory stays at one block.

    :param progress: an optional ``tqdm`` bar, advanced by the number of images in each block.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        header = {"descr": "|u1", "fortran_order": False, "shape": (num_images, IMAGE_SIZE, PACKED_WIDTH)}
        np.lib.format.write_array_header_1_0(f, header)
        written = 0
        for block in blocks:
            _check_packed(block, "block")
            if written + block.shape[0] > num_images:
                raise RuntimeError(f"more than the {num_images} images announced for {path}")
            f.write(np.ascontiguousarray(block).data)
            written += block.shape[0]
            if progress is not None:
                progress.update(block.shape[0])
        if written != num_images:
            raise RuntimeError(f"wrote {written} images to {path}, expected {num_images}")
    return path


def load_or_build_packed(
    path: Union[str, Path], num_images: int, build, progress_bar=None, what: str = "images"
) -> np.ndarray:
    """Memory-map the packed cache at ``path``; if it is missing or unreadable, (re)write it from ``build()``.

    ``build()`` returns an iterable of packed blocks (see :func:`write_packed_atomically`) and is called only
    when the cache has to be written, as is ``progress_bar()``, which returns a ``tqdm`` bar (or ``None``).
    A cache of the wrong size or format is rebuilt with a warning.
    """
    path = Path(path)
    if path.exists():
        try:
            return open_packed(path, num_images)
        except ValueError as e:
            warnings.warn(f"rebuilding the {what} cache: {e}", RuntimeWarning, stacklevel=3)
    bar = progress_bar() if progress_bar is not None else None
    try:
        write_packed_atomically(path, num_images, build(), progress=bar)
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
