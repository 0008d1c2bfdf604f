"""Procedural 2-D shapes on the dSprites factor grid (Matthey et al. 2017), rendered here, no download.

The grid is dSprites': shape (square, ellipse, heart) × scale (6 values in [0.5, 1]) × orientation (40 values
in [0, 2π]) × position x (32 values in [0, 1]) × position y (32 values in [0, 1]) = 737,280 binary 64×64
images, in dSprites' order (position y fastest, then x, orientation, scale, shape). The images follow that
grid but are drawn by this module: they resemble dSprites (white sprites 10–20 pixels wide on black) and are
**not** pixel-identical to DeepMind's file; use :class:`~pyro_decomp.data.DSprites` for the original.

Rendering. A sprite is the set {p : g(R(-θ) p / (10·scale)) ≤ 0} for an implicit shape function g in the
sprite's own frame (square: ``max(|a|, |b|)`` ≤ 1; ellipse: a² + (2b)² ≤ 1; heart: the quartic-sextic heart
(a² + b² − 1)³ − a² b³ ≤ 0 fitted to [−1, 1]²), with p in pixels measured from the sprite's centre, x to the
right and y *up* (so orientation turns the sprite counterclockwise as displayed, row 0 at the top). A pixel
is white when at least half of a 4×4 grid of sample points inside it falls in the sprite. The centre sits on
a pixel corner at column ``15 + round(34·x)`` and row ``15 + round(34·y)`` (y grows down the rows), so every
sprite, at most 14.2 pixels from its centre, stays inside the image, and distinct positions, 1.1 pixels
apart on average, move it by at least one pixel. Each of the 720 sprites (shape, scale, orientation) is
rasterised once in a 30×30 window and translated by whole pixels; :func:`render_shapes` evaluates the same
implicit functions on whole images instead, and gives the same bits.
"""

from __future__ import annotations

import errno
import math
import warnings
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from pyro_decomp.data.ground_truth import (
    IMAGE_SIZE,
    GroundTruthData,
    PackedImages,
    default_data_dir,
    load_or_build_packed,
    source_tag,
)

__all__ = ["Shapes", "render_shapes", "SHAPES_FACTOR_NAMES", "SHAPE_NAMES"]

SHAPES_FACTOR_NAMES = ("shape", "scale", "orientation", "position_x", "position_y")
SHAPE_NAMES = ("square", "ellipse", "heart")
FULL_SIZES = (3, 6, 40, 32, 32)

# Geometry, in pixels. Bump RENDER_VERSION whenever anything here changes the pixels: it names the cache.
RENDER_VERSION = 1
# why a cache cannot be written (a read-only or full file system, no permission, a file where a directory
# should be): the images are then rendered in memory
_UNWRITABLE = {
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EEXIST,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ELOOP,
}
HALF_SIZE = 10.0  # half the side of the square at scale 1
WINDOW = 30  # sprite window; the sprite's centre is its middle pixel corner
MARGIN = WINDOW // 2  # the lowest centre coordinate
SPAN = IMAGE_SIZE - 2 * MARGIN  # centres run over MARGIN + [0, SPAN]
SUPERSAMPLE = 4
# subsample offsets inside a pixel, in pixel units from its top-left corner
_SUB = (np.arange(SUPERSAMPLE, dtype=np.float64) + 0.5) / SUPERSAMPLE
# heart: the curve spans a ∈ [-1.1390, 1.1390], b ∈ [-1, 1.2360]; map it onto [-1, 1]²
_HEART_A, _HEART_B, _HEART_SHIFT = 1.139, 1.118, 0.118

# A subset at most this large is rendered in memory when the full-grid cache does not exist yet.
IN_MEMORY_MAX_IMAGES = math.prod(FULL_SIZES) // 8


def _full_values():
    return [
        np.array([1.0, 2.0, 3.0]),  # dSprites' codes: 1 square, 2 ellipse, 3 heart
        np.linspace(0.5, 1.0, 6),
        np.linspace(0.0, 2 * math.pi, 40),
        np.linspace(0.0, 1.0, 32),
        np.linspace(0.0, 1.0, 32),
    ]


def _centres() -> np.ndarray:
    """Pixel-corner coordinate of the sprite centre for each of the 32 positions."""
    return MARGIN + np.floor(np.linspace(0.0, 1.0, 32) * SPAN + 0.5).astype(np.int64)


def _rotations() -> np.ndarray:
    """cos and sin of the 40 orientations, ``(40, 2)``; 2π is reduced to 0 so that both give one image."""
    theta = np.mod(np.linspace(0.0, 2 * math.pi, 40), 2 * math.pi)
    return np.stack([np.cos(theta), np.sin(theta)], axis=-1)


def _inside(shape: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether the sprite-frame points (a, b), in units of 10·scale pixels, lie in the shape."""
    if shape == 0:
        return np.maximum(np.abs(a), np.abs(b)) <= 1.0
    if shape == 1:
        return a * a + 4.0 * (b * b) <= 1.0
    ha = a * _HEART_A
    hb = b * _HEART_B + _HEART_SHIFT
    t = ha * ha + hb * hb - 1.0
    return t * t * t - ha * ha * (hb * hb * hb) <= 0.0


def _coverage(
    shape: int, scale: np.ndarray, cos_sin: np.ndarray, dx: np.ndarray, dy: np.ndarray
) -> np.ndarray:
    """Binary pixels of sprites of one ``shape``.

    :param scale: ``(S,)`` scale values; ``cos_sin``: ``(S, 2)`` rotation of each sprite.
    :param dx, dy: integer pixel offsets from the sprite's centre corner, broadcastable to ``(S, H, W)``:
        pixel (r, c) covers x ∈ [dx, dx+1), y_down ∈ [dy, dy+1).
    :returns: bool ``(S, H, W)``: at least half of the 4×4 sample points of the pixel lie in the shape.
    """
    k = (HALF_SIZE * scale)[:, None, None, None, None]
    c = cos_sin[:, 0][:, None, None, None, None]
    s = cos_sin[:, 1][:, None, None, None, None]
    x = dx.astype(np.float64)[..., None, None] + _SUB[:, None]  # (.., H, W, SUB, 1)
    y = -(dy.astype(np.float64)[..., None, None] + _SUB[None, :])  # (.., H, W, 1, SUB), y up
    a = (c * x + s * y) / k
    b = (c * y - s * x) / k
    count = _inside(shape, a, b).sum(axis=(-2, -1))
    return count * 2 >= SUPERSAMPLE * SUPERSAMPLE


def _render_sprites(shape: int, scale_idx: np.ndarray, orient_idx: np.ndarray) -> np.ndarray:
    """The sprites of one shape for each (scale, orientation) pair given, bool ``(S, 30, 30)``."""
    scales = _full_values()[1][scale_idx]
    offsets = np.arange(WINDOW, dtype=np.int64) - MARGIN
    return _coverage(shape, scales, _rotations()[orient_idx], offsets[None, None, :], offsets[None, :, None])


def _render_blocks(
    shape_idx: Sequence[int],
    scale_idx: Sequence[int],
    orient_idx: Sequence[int],
    x_idx: Sequence[int],
    y_idx: Sequence[int],
) -> Iterator[np.ndarray]:
    """Packed images of the sub-grid of the given (full-grid) factor indices, in grid order.

    Yields one ``(len(orient)·len(x)·len(y), 64, 8)`` uint8 block per (shape, scale). Each sprite is drawn
    once, padded so that every translation is a 64×64 window of it, and translated: first along x by
    selecting column windows and packing their bits (one row of bytes per row and x), then along y by
    selecting row windows of the packed rows, a pure byte gather.
    """
    orient_idx, x_idx, y_idx = (np.asarray(v, dtype=np.int64) for v in (orient_idx, x_idx, y_idx))
    centres = _centres()
    pad = SPAN  # the window for centre C starts at pad + MARGIN - C ∈ [0, SPAN]
    side = pad + IMAGE_SIZE
    start_x = pad + MARGIN - centres[x_idx]
    start_y = pad + MARGIN - centres[y_idx]
    rows = start_y[:, None] + np.arange(IMAGE_SIZE)  # (Y, 64)
    cols = start_x[:, None] + np.arange(IMAGE_SIZE)  # (X, 64)
    for shape in shape_idx:
        for scale in scale_idx:
            sprites = _render_sprites(int(shape), np.full(len(orient_idx), int(scale)), orient_idx)
            canvas = np.zeros((len(orient_idx), side, side), dtype=bool)
            canvas[:, pad : pad + WINDOW, pad : pad + WINDOW] = sprites
            shifted_x = np.packbits(canvas[:, :, cols], axis=-1)  # (O, side, X, 8)
            shifted_x = shifted_x.transpose(0, 2, 1, 3)  # (O, X, side, 8)
            block = shifted_x[:, :, rows]  # (O, X, Y, 64, 8)
            yield block.reshape(-1, IMAGE_SIZE, IMAGE_SIZE // 8)


def render_shapes(factors, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Render the images of full-grid factor indices ``(..., 5)`` directly, without any stored grid.

    Evaluates the implicit shape functions on the whole 64×64 image of each combination (16 samples a
    pixel): much slower than reading a store, and the reference that stores are tested against.

    :returns: ``(..., 1, 64, 64)`` tensors of ``dtype`` with values in {0, 1}.
    """
    factors = torch.as_tensor(factors)
    if factors.dtype.is_floating_point or factors.dim() < 1 or factors.shape[-1] != 5:
        raise ValueError(
            f"factors must be integer indices of shape (..., 5), got {factors.dtype} {tuple(factors.shape)}"
        )
    bad = (factors < 0) | (factors >= torch.tensor(FULL_SIZES))
    if bad.any():
        k = int(bad.reshape(-1, 5).any(0).nonzero()[0])
        value = int(factors[..., k][bad[..., k]][0])
        raise ValueError(f"factor {SHAPES_FACTOR_NAMES[k]!r} must be in [0, {FULL_SIZES[k]}), got {value}")
    full = factors.reshape(-1, 5).long().numpy()
    out = np.zeros((full.shape[0], IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    centres, grid = _centres(), np.arange(IMAGE_SIZE)
    for shape in range(3):
        sel = np.nonzero(full[:, 0] == shape)[0]
        if len(sel) == 0:
            continue
        f = full[sel]
        dx = grid[None, None, :] - centres[f[:, 3]][:, None, None]
        dy = grid[None, :, None] - centres[f[:, 4]][:, None, None]
        out[sel] = _coverage(shape, _full_values()[1][f[:, 1]], _rotations()[f[:, 2]], dx, dy)
    return torch.from_numpy(out).to(dtype).reshape(factors.shape[:-1] + (1, IMAGE_SIZE, IMAGE_SIZE))


def _cache_source(steps: Sequence[int]) -> Tuple[str, str]:
    """The source tag of a cache of the grid with these steps, and how a warning names it."""
    name = f"render version {RENDER_VERSION} of the grid with steps {tuple(steps)}"
    return source_tag("shapes", RENDER_VERSION, FULL_SIZES, tuple(int(s) for s in steps)), name


def _parse_subsample(subsample: Optional[Dict[str, int]]) -> tuple:
    steps = dict.fromkeys(SHAPES_FACTOR_NAMES, 1)
    for name, step in (subsample or {}).items():
        if name not in steps:
            raise ValueError(f"subsample has unknown factor {name!r}; the factors are {SHAPES_FACTOR_NAMES}")
        if isinstance(step, bool) or int(step) != step or step < 1:
            raise ValueError(f"subsample step for {name!r} must be a positive integer, got {step!r}")
        steps[name] = int(step)
    return tuple(steps[name] for name in SHAPES_FACTOR_NAMES)


class Shapes(GroundTruthData):
    """Procedural shapes on the dSprites grid, with ground-truth factors (see the module docstring).

    Item ``i`` is ``(image float32 (1, 64, 64) in {0, 1}, factor indices int64 (5,))``; factors are
    ``("shape", "scale", "orientation", "position_x", "position_y")`` and ``factor_values`` are dSprites'
    (shape codes 1, 2, 3 for square, ellipse, heart; scale linspace(0.5, 1, 6); orientation
    linspace(0, 2π, 40), where 0 and 2π give the same image, as in dSprites; positions linspace(0, 1, 32)).

    Storage. The full grid is rendered once (vectorised, with a progress bar) into a bit-packed ``.npy``
    cache of 377 MB under ``root``, written atomically (a temporary file renamed when complete, so an
    interrupted render leaves no cache), and memory-mapped on every later load, after checking the CRC-32 of
    its bits and that it was rendered by this ``RENDER_VERSION`` for this grid (0.1 s for the full grid); a
    cache that fails is rendered again, with a warning. A ``subsample`` (every k-th value of some factors)
    is a smaller complete grid with its own factor indices. It is read from the full-grid cache when that
    exists; otherwise a subset of at most ``IN_MEMORY_MAX_IMAGES`` (92,160, an eighth of the grid) is
    rendered in memory without touching the disk, and a larger one gets a cache file of its own.
    ``cache=True`` or ``False`` forces a cache file or memory. Where ``root`` cannot be written, the images
    are rendered in memory with a warning.

    :param root: cache directory; default ``$PYRO_DECOMP_DATA`` or ``~/.cache/pyro_decomp``.
    :param dict subsample: factor name → step k ≥ 1, e.g. ``{"orientation": 10, "position_x": 4}``.
    :param bool progress: show a progress bar while rendering.
    :param cache: ``None`` (the rule above), ``True`` (a cache file: the full grid's, or the subset's own) or
        ``False`` (render in memory).
    """

    def __init__(
        self,
        root: Optional[Union[str, Path]] = None,
        subsample: Optional[Dict[str, int]] = None,
        progress: bool = True,
        cache: Optional[bool] = None,
    ):
        self.steps = _parse_subsample(subsample)
        self.subsample = {n: s for n, s in zip(SHAPES_FACTOR_NAMES, self.steps) if s > 1}
        self._grid_idx = [np.arange(0, n, s) for n, s in zip(FULL_SIZES, self.steps)]
        self._set_factors(SHAPES_FACTOR_NAMES, [v[i] for v, i in zip(_full_values(), self._grid_idx)])
        self.root = Path(root).expanduser() if root is not None else default_data_dir()
        self.progress = progress
        self.full_cache_path = self.root / f"shapes_v{RENDER_VERSION}_full.npy"
        if cache is None:
            if not self.subsample:
                storage = "full"
            elif self.full_cache_path.exists():
                storage = "full"
            else:
                storage = "own file" if len(self) > IN_MEMORY_MAX_IMAGES else "memory"
        elif cache:
            storage = "own file" if self.subsample else "full"
        else:
            storage = "memory"
        self._storage_is_full = storage == "full"
        if self._storage_is_full:
            self.cache_path = self.full_cache_path
            grid_idx = [np.arange(n) for n in FULL_SIZES]
            source, source_name = _cache_source((1,) * len(FULL_SIZES))
        else:
            source, source_name = _cache_source(self.steps)
            grid_idx = self._grid_idx
            tag = "_".join(f"{n}{s}" for n, s in self.subsample.items())
            self.cache_path = (
                None if storage == "memory" else self.root / f"shapes_v{RENDER_VERSION}_sub_{tag}.npy"
            )
        total = math.prod(len(i) for i in grid_idx)
        if self.cache_path is not None:
            try:
                load_or_build_packed(
                    self.cache_path,
                    total,
                    lambda: _render_blocks(*grid_idx),
                    lambda: self._progress_bar(total),
                    "shapes",
                    source=(source,),
                    source_name=source_name,
                )
                self._storage = PackedImages(path=self.cache_path)
                return
            except OSError as e:
                if not isinstance(e, PermissionError) and e.errno not in _UNWRITABLE:
                    raise
                warnings.warn(
                    f"cannot write the shapes cache {self.cache_path} ({e.strerror or e}); rendering in "
                    "memory (set PYRO_DECOMP_DATA or --data-root to a writable directory to keep a cache)",
                    stacklevel=2,
                )
                self.cache_path = None
        packed = np.empty((total, IMAGE_SIZE, IMAGE_SIZE // 8), dtype=np.uint8)
        with self._progress_bar(total) as bar:
            start = 0
            for block in _render_blocks(*grid_idx):
                packed[start : start + len(block)] = block
                start += len(block)
                bar.update(len(block))
        self._storage = PackedImages(array=packed)

    def _progress_bar(self, total: int):
        return tqdm(
            total=total, unit="img", unit_scale=True, desc="rendering shapes", disable=not self.progress
        )

    def _storage_index(self, index: torch.Tensor) -> np.ndarray:
        if not self._storage_is_full or not self.subsample:
            return index.numpy()
        factors = self.factors_from_index(index) * torch.tensor(self.steps)
        strides = np.cumprod((FULL_SIZES[1:] + (1,))[::-1])[::-1]
        return (factors.numpy() * strides).sum(-1)

    def _images_uint8(self, index: torch.Tensor) -> np.ndarray:
        return self._storage.unpack(self._storage_index(index))

    def render(self, factors, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Render the images of factor indices ``(..., 5)`` of this grid directly: :func:`render_shapes`."""
        factors = self._check_factors(factors)
        return render_shapes(factors * torch.tensor(self.steps), dtype=dtype)

    def __repr__(self) -> str:
        where = "memory" if self.cache_path is None else str(self.cache_path)
        return f"Shapes(n={len(self)}, subsample={self.subsample}, storage={where})"
