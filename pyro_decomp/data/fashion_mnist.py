"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) at 32×32, as in the sparsity experiment of Mathieu et al. 2019.

The files are found (or downloaded) by ``torchvision.datasets.FashionMNIST``; each 28×28 image is resized to
32×32 by bilinear interpolation (``torchvision.transforms.functional.resize``) and its intensities in [0, 1]
are clamped to [1e-6, 1 − 1e-6], as the paper's code does, so that a continuous-Bernoulli or Bernoulli
likelihood never sees an exact 0 or 1.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Optional, Union

import torch

from pyro_decomp._atomic import atomic_open
from pyro_decomp.data.ground_truth import default_data_dir

__all__ = ["fashion_mnist", "FashionMNIST32", "FASHION_MNIST_FILES"]

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
EPS = 1e-6


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
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        x = images.unsqueeze(-3).float() / 255.0
        x = TF.resize(x, [self.size, self.size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        return x.clamp(self.eps, 1.0 - self.eps)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.targets[i]


def _unzip_raw_files(raw: Path) -> None:
    """Decompress ``<name>.gz`` into ``<name>`` (atomically) where only the gzipped file is present."""
    for name in FASHION_MNIST_FILES:
        target, packed = raw / name, raw / (name + ".gz")
        if target.exists() or not packed.exists():
            continue
        with atomic_open(target) as out, gzip.open(packed, "rb") as src:
            shutil.copyfileobj(src, out)


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
    if raw.is_dir():
        _unzip_raw_files(raw)
    missing = [name for name in FASHION_MNIST_FILES if not (raw / name).exists()]
    how = (
        f"Put the four Fashion-MNIST IDX files ({', '.join(FASHION_MNIST_FILES)}, plain or .gz) in {raw}, "
        f"or call fashion_mnist({str(root)!r}, download=True)."
    )
    if missing and not download:
        raise FileNotFoundError(f"Fashion-MNIST files missing from {raw}: {', '.join(missing)}. {how}")
    import torchvision

    try:
        base = torchvision.datasets.FashionMNIST(str(root), train=train, download=download)
    except Exception as e:  # torchvision raises RuntimeError, URLError, AssertionError, TypeError, ...
        if missing:
            raise RuntimeError(f"could not download Fashion-MNIST into {raw} ({e}). {how}") from e
        raise RuntimeError(
            f"could not read the Fashion-MNIST IDX files in {raw} ({type(e).__name__}: {e}); they may be "
            f"truncated or corrupt. Delete them and {how[0].lower() + how[1:]}"
        ) from e
    return FashionMNIST32(base.data, base.targets, classes=base.classes)
