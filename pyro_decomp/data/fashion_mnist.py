"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) at 32×32, as in the sparsity experiment of Mathieu et al. 2019.

The files are found (or downloaded) by ``torchvision.datasets.FashionMNIST``; each 28×28 image is resized to
32×32 by bilinear interpolation (``torchvision.transforms.functional.resize``) and its intensities in [0, 1]
are clamped to [1e-6, 1 − 1e-6], as the paper's code does, so that a continuous-Bernoulli or Bernoulli
likelihood never sees an exact 0 or 1.

torchvision is imported only when the files are read (:func:`fashion_mnist`), so the package and its other
data sets work without it; without it, :func:`fashion_mnist` raises one ``ImportError`` that names it.

A gzipped file is unzipped next to itself atomically (a temporary file renamed when complete), and an unzipped
file is used only when it is at least as new as its ``.gz`` and of the size its IDX header announces, so no
partial or stale file is ever read. A damaged file raises one :class:`DataFileError` (a ``ValueError``) whose
message names it and says how to get a good copy.
"""

from __future__ import annotations

import gzip
import math
import shutil
import struct
import warnings
import zlib
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F

from pyro_decomp._atomic import atomic_open
from pyro_decomp.data.ground_truth import DataFileError, DownloadError, default_data_dir, one_line

__all__ = ["fashion_mnist", "FashionMNIST32", "FASHION_MNIST_FILES"]

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
EPS = 1e-6
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist/"
# IDX magic numbers: two zero bytes, the element type (0x08: unsigned byte), the number of dimensions
_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


class FashionMNIST32(torch.utils.data.Dataset):
    """Grey-scale images resized to ``size × size`` and clamped to [eps, 1 − eps], with their labels.

    Item ``i`` is ``(image float32 (1, size, size), label int64 ())``. The 8-bit images are kept as they are
    (47 MB for the training set) and resized when an item is read.

    :param images: uint8 ``(N, H, W)``; ``labels``: integer ``(N,)``.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, size: int = 32, eps: float = EPS, classes=None
    ):
        if images.dtype != torch.uint8 or images.dim() != 3:
            raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if not 0 <= eps < 0.5:
            raise ValueError(f"eps must be in [0, 0.5), got {eps}")
        self.images, self.targets = images, labels.long()
        self.size, self.eps = int(size), float(eps)
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(..., H, W)`` → float32 ``(..., 1, size, size)``: bilinear resize, then clamp."""
        x = images.unsqueeze(-3).float() / 255.0
        shape = x.shape
        x = x.reshape((-1,) + shape[-3:])
        size = (self.size, self.size)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x.reshape(shape[:-2] + (self.size, self.size)).clamp(self.eps, 1.0 - self.eps)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.targets[i]


def _torchvision():
    """torchvision, imported here only: the rest of the package does not need it."""
    try:
        import torchvision
    except Exception as e:  # missing (ImportError), or built for another torch (RuntimeError, ...)
        raise ImportError(
            one_line(
                f"Fashion-MNIST is read through torchvision, which could not be imported "
                f"({type(e).__name__}: {e}); install the torchvision build that matches your torch "
                "(pip install torchvision)"
            )
        ) from e
    return torchvision


def _how_to_get(root: Path, raw: Path) -> str:
    return (
        f"Put the four Fashion-MNIST IDX files ({', '.join(FASHION_MNIST_FILES)}, plain or .gz) in {raw} "
        f"(Debian's dataset-fashion-mnist package ships them under {DEBIAN_DIR}), or download them: "
        f"--data-options download=true on the command line, fashion_mnist({str(root)!r}, download=True) "
        "in Python."
    )


def _how_to_replace(root: Path) -> str:
    return (
        f"Delete it and put a good copy in its place (Debian's dataset-fashion-mnist package ships the four "
        f"files under {DEBIAN_DIR}), or download it: --data-options download=true on the command line, "
        f"fashion_mnist({str(root)!r}, download=True) in Python."
    )


def _idx_problem(path: Path, name: str) -> Optional[str]:
    """What is wrong with the IDX file at ``path`` that should hold ``name``, or ``None``.

    Its first bytes must be the magic number of images (3 dimensions) or labels (1 dimension) of unsigned
    bytes, and the file exactly as long as the 4-byte header words and the product of the dimensions.
    """
    expected = _IDX_MAGIC["images" if "-images-" in name else "labels"]
    ndim = expected & 0xFF
    with open(path, "rb") as f:
        header = f.read(4 * (1 + ndim))
        size = f.seek(0, 2)
    if len(header) < 4 * (1 + ndim):
        return f"has {size} bytes, fewer than an IDX header"
    magic, *dims = struct.unpack(f">{1 + ndim}I", header)
    if magic != expected:
        return f"starts with {magic:#010x}, not the IDX magic number {expected:#010x}"
    announced = 4 * (1 + ndim) + math.prod(dims)
    if size != announced:
        return f"has {size} bytes where its IDX header announces {announced}"
    return None


def _gunzip(packed: Path, target: Path, how: str) -> None:
    """Decompress ``packed`` into ``target`` atomically; :class:`DataFileError` if it is damaged."""
    with atomic_open(target) as out:
        try:
            with gzip.open(packed, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise DataFileError(
                one_line(f"{packed} is damaged: not a complete gzip file ({type(e).__name__}: {e}). {how}")
            ) from e
        out.flush()
        problem = _idx_problem(Path(out.name), target.name)
        if problem is not None:
            raise DataFileError(one_line(f"{packed} is damaged: it unzips to a file that {problem}. {how}"))


def _prepare_raw_files(raw: Path, how: str, download: bool) -> None:
    """Make each plain IDX file in ``raw`` good: unzip its ``.gz`` when it is missing, older or damaged.

    A damaged file raises :class:`DataFileError`, whose message ends with ``how`` (what to do); with
    ``download`` it is instead removed, with a warning, so that it is downloaded again.
    """
    for name in FASHION_MNIST_FILES:
        target, packed = raw / name, raw / (name + ".gz")
        try:
            if packed.exists():
                if (
                    target.exists()
                    and target.stat().st_mtime_ns >= packed.stat().st_mtime_ns
                    and _idx_problem(target, name) is None
                ):
                    continue
                _gunzip(packed, target, how)
            elif target.exists():
                problem = _idx_problem(target, name)
                if problem is not None:
                    raise DataFileError(one_line(f"{target} is truncated or corrupt: it {problem}. {how}"))
        except DataFileError as e:
            if not download:
                raise
            warnings.warn(f"{e}; downloading it again", RuntimeWarning, stacklevel=3)
            for path in (target, packed):
                path.unlink(missing_ok=True)


def fashion_mnist(
    root: Optional[Union[str, Path]] = None, train: bool = True, download: bool = False
) -> FashionMNIST32:
    """Fashion-MNIST, train (60,000) or test (10,000) split, as 32×32 float32 images in (0, 1) and labels.

    :param root: directory holding ``FashionMNIST/raw/`` with the four IDX files (``train-images-idx3-ubyte``,
        ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or
        ``.gz``); default ``$PYRO_DECOMP_DATA`` or ``~/.cache/pyro_decomp``.
    :param bool train: the training split, else the test split.
    :param bool download: let torchvision download the files when they are missing.
    :returns: a :class:`FashionMNIST32` data set of ``(image (1, 32, 32), label)``.
    """
    root = Path(root).expanduser() if root is not None else default_data_dir()
    raw = root / "FashionMNIST" / "raw"
    how = _how_to_get(root, raw)
    if raw.is_dir():
        _prepare_raw_files(raw, _how_to_replace(root), download)
    missing = [name for name in FASHION_MNIST_FILES if not (raw / name).exists()]
    if missing and not download:
        raise FileNotFoundError(f"Fashion-MNIST files missing from {raw}: {', '.join(missing)}. {how}")
    torchvision = _torchvision()
    try:
        base = torchvision.datasets.FashionMNIST(str(root), train=train, download=download)
    except Exception as e:  # torchvision raises RuntimeError, URLError, AssertionError, TypeError, ...
        if missing:
            raise DownloadError(one_line(f"could not download Fashion-MNIST into {raw} ({e}). {how}")) from e
        raise DataFileError(
            one_line(
                f"could not read the Fashion-MNIST IDX files in {raw} ({type(e).__name__}: {e}); they may be "
                f"truncated or corrupt. Delete them and {how[0].lower() + how[1:]}"
            )
        ) from e
    return FashionMNIST32(base.data, base.targets, classes=base.classes)
