"""One's own data: array files, image folders, factories and in-memory data, and the record of where a
run's data came from.

``RunConfig.dataset`` names a run's data in one of five ways (:func:`source_kind`):

* a built-in data set: ``pinwheel``, ``shapes``, ``dsprites``, ``fashion-mnist``;
* an **array file**: a path ending in ``.npz`` (arrays ``x``; optional ``y`` labels ``(N,)``, ``factors``
  ``(N, K)`` ground-truth factor values, and a given test split ``x_test``/``y_test``/``factors_test``),
  ``.npy`` (the inputs ``x``) or ``.pt`` (a tensor ``x``, or a dict of tensors with the ``.npz`` keys);
* an **image folder**: a directory of images (PNG, JPEG, BMP, GIF, TIFF, WebP), flat or one subfolder per
  class, read with Pillow, converted to grayscale or RGB and resized to one size;
* a **factory** ``"package.module:function"``: ``function(**data_options)`` returns ``(train, test)``
  ``Dataset`` s;
* ``"memory"``: the ``(train, test)`` pair passed to ``train(config, run_dir, data=...)``.

Inputs of any shape ``(N, ...)`` are read: ``(N,)`` as N one-dimensional points, ``(N, H, W)`` as
one-channel images ``(N, 1, H, W)``, channels-last images ``(N, H, W, C)`` (C in {1, 3, 4}, H not) as
``(N, C, H, W)``, anything else as it is; ``uint8`` is divided by 255, every other type
becomes float32. Without a given test split, a seeded fraction of the points is held out (``data_options``
``test_fraction``, default 0.2, and ``split_seed``, default 0), the same at every rebuild.

A run records its source (:func:`record_source`): the path, size, modification time and the SHA-256 digest
of the file (of every image, for a folder; of the factory's module file, for a factory), or that the data
were in memory. :func:`check_source` compares the data with that record before a run is rebuilt and refuses,
in one line naming the file, data that changed or vanished; in-memory data cannot be rebuilt, so a run
trained on them needs them passed again.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

__all__ = [
    "ARRAY_KEYS",
    "ARRAY_SUFFIXES",
    "BUILTIN_DATASETS",
    "IMAGE_SUFFIXES",
    "MEMORY",
    "ArrayData",
    "DataSourceError",
    "as_inputs",
    "check_source",
    "load_source",
    "record_source",
    "source_kind",
    "source_name",
]

BUILTIN_DATASETS = ("pinwheel", "shapes", "dsprites", "fashion-mnist")
MEMORY = "memory"
ARRAY_SUFFIXES = (".npz", ".npy", ".pt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ARRAY_KEYS = ("x", "y", "factors", "x_test", "y_test", "factors_test")
SPLIT_OPTIONS = ("test_fraction", "split_seed")
FOLDER_OPTIONS = SPLIT_OPTIONS + ("image_size", "mode")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_CHUNK = 1 << 20  # bytes read at a time for a digest


class DataSourceError(ValueError):
    """Data that cannot be read, or that differ from what a run recorded."""


def source_kind(dataset: str) -> str:
    """``"builtin"``, ``"array"``, ``"folder"``, ``"factory"`` or ``"memory"`` for a ``dataset`` value; a
    one-line ValueError for anything else."""
    if dataset in BUILTIN_DATASETS:
        return "builtin"
    if dataset == MEMORY:
        return "memory"
    if isinstance(dataset, str) and dataset:
        if dataset.lower().endswith(ARRAY_SUFFIXES):
            return "array"
        if os.path.isdir(dataset):
            return "folder"
        if _FACTORY.match(dataset):
            return "factory"
    raise ValueError(
        f"unknown dataset {dataset!r}; expected one of {BUILTIN_DATASETS}, an array file "
        f"({', '.join(ARRAY_SUFFIXES)}), an existing image folder, 'package.module:function' or "
        f"{MEMORY!r}"
    )


def source_name(dataset: str) -> str:
    """A short name of the data for directory names: the data set, or the file's or folder's stem."""
    kind = source_kind(dataset)
    if kind in ("array", "folder"):
        return os.path.splitext(os.path.basename(os.path.normpath(dataset)))[0] or "data"
    if kind == "factory":
        return dataset.split(":")[-1]
    return dataset


# ---------------------------------------------------------------------------------------------- records
def _digest(paths: List[str], root: Optional[str] = None) -> str:
    """SHA-256 over the files in order (and, with ``root``, their paths relative to it), read 1 MiB at a
    time."""
    h = hashlib.sha256()
    for path in paths:
        if root is not None:
            h.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
    return h.hexdigest()


def _file_record(path: str) -> Dict[str, Any]:
    st = os.stat(path)
    return {
        "path": os.path.abspath(path),
        "size": st.st_size,
        "mtime": st.st_mtime,
        "sha256": _digest([path]),
    }


def _folder_images(root: str) -> Tuple[List[str], Optional[List[int]], List[str]]:
    """``(files, labels, classes)``: the images of ``root`` in sorted order; labels index ``classes`` (the
    subfolders' names) when the images sit in one subfolder per class, else ``None``."""
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    subdirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    flat = [e.path for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)]
    if subdirs and flat:
        raise DataSourceError(
            f"image folder {root} holds both images and subfolders; expected images only (unlabelled) or "
            "one subfolder of images per class"
        )
    if not subdirs:
        files, labels, classes = flat, None, []
    else:
        files, labels, classes = [], [], [e.name for e in subdirs]
        for i, sub in enumerate(subdirs):
            inside = sorted(e.path for e in os.scandir(sub.path) if e.name.lower().endswith(IMAGE_SUFFIXES))
            files += inside
            labels += [i] * len(inside)
    if len(files) < 2:
        raise DataSourceError(
            f"image folder {root} holds {len(files)} images ({', '.join(IMAGE_SUFFIXES)}); at least 2 are "
            "needed"
        )
    return files, labels, classes


def _factory_function(spec: str):
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DataSourceError(
            f"cannot import {module_name!r} for the data factory {spec!r} ({e}); put its folder on PYTHONPATH"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise DataSourceError(f"module {module_name!r} has no function {name!r} (the data factory {spec!r})")
    return module, function


def record_source(dataset: str, data: Optional[Tuple[Dataset, Dataset]] = None) -> Dict[str, Any]:
    """What a run records about its data: ``kind`` and, for a file, ``path`` (absolute), ``size`` (bytes),
    ``mtime`` and ``sha256``; for a folder the same over its images (``size`` summed, ``mtime`` the
    latest, ``files`` their number); for a factory its spec and its module file's record; for data passed
    in memory (``data`` given), the number of training and test points."""
    if data is not None:
        return {"kind": "memory", "train_points": len(data[0]), "test_points": len(data[1])}
    kind = source_kind(dataset)
    if kind == "builtin":
        return {"kind": kind, "name": dataset}
    if kind == "memory":
        raise DataSourceError(
            "dataset 'memory' needs the data: pass data=(train_set, test_set) to train, load_run or evaluate"
        )
    if kind == "array":
        if not os.path.isfile(dataset):
            raise DataSourceError(f"array file {dataset} does not exist")
        return {"kind": kind, **_file_record(dataset)}
    if kind == "folder":
        files, _, _ = _folder_images(dataset)
        stats = [os.stat(p) for p in files]
        return {
            "kind": kind,
            "path": os.path.abspath(dataset),
            "files": len(files),
            "size": sum(s.st_size for s in stats),
            "mtime": max(s.st_mtime for s in stats),
            "sha256": _digest(files, root=dataset),
        }
    module, _ = _factory_function(dataset)
    origin = getattr(module, "__file__", None)
    return {"kind": kind, "factory": dataset, **(_file_record(origin) if origin else {})}


def check_source(dataset: str, record: Dict[str, Any], data=None) -> None:
    """Refuse, in one line naming the source, data that are not those ``record`` describes: a vanished or
    changed file, folder or factory module, or in-memory data not passed again."""
    kind = record.get("kind")
    if kind == "memory":
        if data is None:
            raise DataSourceError(
                f"this run was trained on data held in memory ({record.get('train_points')} training, "
                f"{record.get('test_points')} test points): pass them again with data=(train_set, test_set)"
            )
        now = (len(data[0]), len(data[1]))
        if now != (record.get("train_points"), record.get("test_points")):
            raise DataSourceError(
                f"the data passed have {now[0]} training and {now[1]} test points, but the run was trained "
                "on "
                f"{record.get('train_points')} and {record.get('test_points')}"
            )
        return
    if kind in (None, "builtin"):
        return
    path = record.get("path")
    what = {"array": "data file", "folder": "image folder", "factory": "module of the data factory"}[kind]
    if path is not None and not os.path.exists(path):
        raise DataSourceError(f"the {what} {path} that this run was trained on has vanished")
    now = record_source(path if kind in ("array", "folder") else record["factory"])
    if now.get("sha256") != record.get("sha256") or now.get("size") != record.get("size"):
        raise DataSourceError(
            f"the {what} {path} has changed since this run was trained on it (SHA-256 "
            f"{str(record.get('sha256'))[:12]}… recorded, {str(now.get('sha256'))[:12]}… now); restore it "
            "or train a new run"
        )


# ---------------------------------------------------------------------------------------------- reading
class ArrayData(TensorDataset):
    """Inputs with optional labels ``(N,)`` and ground-truth factors ``(N, K)``.

    Items are ``(x, factors)`` when factors are given (so that ``take`` returns the factors, as for the
    ground-truth data sets), else ``(x, y)`` with labels, else ``(x,)``. ``labels`` and ``factors`` are
    attributes too (``None`` when absent); ``classes`` names the labels of an image folder.
    """

    def __init__(self, x, labels=None, factors=None, classes=None):
        second = factors if factors is not None else labels
        super().__init__(*((x,) if second is None else (x, second)))
        self.labels, self.factors, self.classes = labels, factors, list(classes or [])


def as_inputs(values, name: str = "x", where: str = "the data") -> torch.Tensor:
    """Float32 inputs ``(N, ...)`` from an array or tensor: uint8 divided by 255; ``(N,)`` becomes
    ``(N, 1)``, ``(N, H, W)`` becomes ``(N, 1, H, W)``, and channels-last images ``(N, H, W, C)`` with C in
    {1, 3, 4} (and H not) become ``(N, C, H, W)``. Non-finite values are refused."""
    t = torch.as_tensor(np.asarray(values) if not torch.is_tensor(values) else values)
    if t.dim() == 0 or len(t) == 0:
        raise DataSourceError(
            f"{name} of {where} must be an array (N, ...) with N >= 1, got {tuple(t.shape)}"
        )
    if t.dtype == torch.uint8:
        t = t.float() / 255
    elif t.is_complex() or not (
        t.is_floating_point() or t.dtype in (torch.bool, torch.int8, torch.int16, torch.int32, torch.int64)
    ):
        raise DataSourceError(f"{name} of {where} must be numbers (uint8 or float), got {t.dtype}")
    t = t.float()
    if not torch.isfinite(t).all():
        raise DataSourceError(f"{name} of {where} holds non-finite values (nan or inf)")
    if t.dim() == 1:
        t = t.unsqueeze(1)
    elif t.dim() == 3:
        t = t.unsqueeze(1)
    elif t.dim() == 4 and t.shape[3] in (1, 3, 4) and t.shape[1] not in (1, 3, 4):
        t = t.permute(0, 3, 1, 2)
    return t.contiguous()


def _integers(values, name: str, where: str, n: int, columns: bool) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(values) if not torch.is_tensor(values) else values)
    want = "(N, K)" if columns else "(N,)"
    if (
        t.dim() != (2 if columns else 1)
        or len(t) != n
        or t.is_floating_point()
        and not torch.equal(t, t.round())
    ):
        raise DataSourceError(
            f"{name} of {where} must be integers of shape {want} with N = {n}, got {tuple(t.shape)} {t.dtype}"
        )
    return t.long()


# the first bytes of each file format: a .npz is a zip archive (an empty one starts with its end record)
_MAGIC = {
    ".npz": ((b"PK\x03\x04", b"PK\x05\x06"), "a .npz archive (a zip of .npy arrays, as numpy.savez writes)"),
    ".npy": ((b"\x93NUMPY",), "a .npy file (as numpy.save writes)"),
}


def _check_magic(path: str) -> None:
    """A ValueError when the first bytes of ``path`` are not those of its extension's format (numpy's own
    error for a .npz that is not one speaks of pickled data)."""
    kind = os.path.splitext(path)[1].lower()
    if kind not in _MAGIC:
        return
    starts, what = _MAGIC[kind]
    with open(path, "rb") as f:
        head = f.read(6)
    if not any(head.startswith(start) for start in starts):
        raise ValueError(f"it is not {what}")


def _read_arrays(path: str) -> Dict[str, Any]:
    try:
        _check_magic(path)
        if path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        elif path.lower().endswith(".npy"):
            arrays = {"x": np.load(path, allow_pickle=False)}
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            arrays = loaded if isinstance(loaded, dict) else {"x": loaded}
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        first = str(e).strip().splitlines()
        raise DataSourceError(
            f"cannot read the array file {path}: {first[0] if first else type(e).__name__}"
        ) from None
    unknown = sorted(set(arrays) - set(ARRAY_KEYS))
    if "x" not in arrays or unknown:
        raise DataSourceError(
            f"array file {path} holds arrays {sorted(arrays)}; expected 'x' and optionally "
            f"{list(ARRAY_KEYS[1:])}"
        )
    for a, b in (("x_test", "y_test"), ("x_test", "factors_test")):
        if b in arrays and a not in arrays:
            raise DataSourceError(f"array file {path} holds {b!r} without {a!r}")
    for a, b in (("y", "y_test"), ("factors", "factors_test")):
        if "x_test" in arrays and (a in arrays) != (b in arrays):
            raise DataSourceError(
                f"array file {path} has a test split: give both {a!r} and {b!r}, or neither"
            )
    return arrays


def _split(n: int, options: Dict[str, Any], where: str) -> Tuple[torch.Tensor, torch.Tensor]:
    fraction = options.get("test_fraction", 0.2)
    seed = options.get("split_seed", 0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise DataSourceError(f"data option test_fraction must lie in (0, 1), got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataSourceError(f"data option split_seed must be an integer >= 0, got {seed!r}")
    if n < 3:
        raise DataSourceError(f"{where} has {n} points; at least 3 are needed to hold some out for testing")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(n - 2, max(1, round(fraction * n)))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _check_options(options: Dict[str, Any], allowed, where: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataSourceError(f"unknown data options {unknown} for {where}; expected some of {list(allowed)}")


def _load_arrays(path: str, options: Dict[str, Any]) -> Tuple[ArrayData, ArrayData]:
    _check_options(options, SPLIT_OPTIONS, f"the array file {path}")
    arrays = _read_arrays(path)
    x = as_inputs(arrays["x"], "x", path)
    y = _integers(arrays["y"], "y", path, len(x), False) if "y" in arrays else None
    f = _integers(arrays["factors"], "factors", path, len(x), True) if "factors" in arrays else None
    if "x_test" in arrays:
        xt = as_inputs(arrays["x_test"], "x_test", path)
        if xt.shape[1:] != x.shape[1:]:
            raise DataSourceError(
                f"x_test of {path} has points of shape {tuple(xt.shape[1:])}, x of {tuple(x.shape[1:])}"
            )
        yt = _integers(arrays["y_test"], "y_test", path, len(xt), False) if y is not None else None
        ft = _integers(arrays["factors_test"], "factors_test", path, len(xt), True) if f is not None else None
        return ArrayData(x, y, f), ArrayData(xt, yt, ft)
    train, test = _split(len(x), options, f"array file {path}")

    def part(t, i):
        return None if t is None else t[i]

    return ArrayData(x[train], part(y, train), part(f, train)), ArrayData(
        x[test], part(y, test), part(f, test)
    )


def _image_size(value, path: str) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    size = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise DataSourceError(f"data option image_size must be a size or [height, width], got {value!r}")
    return int(size[0]), int(size[1])


def _load_folder(path: str, options: Dict[str, Any]) -> Tuple[ArrayData, ArrayData]:
    from PIL import Image, UnidentifiedImageError

    _check_options(options, FOLDER_OPTIONS, f"the image folder {path}")
    files, labels, classes = _folder_images(path)
    size = _image_size(options.get("image_size"), path)
    mode = options.get("mode")
    if mode not in (None, "L", "RGB"):
        raise DataSourceError(f"data option mode must be 'L' (grayscale) or 'RGB', got {mode!r}")
    images = []
    for file in files:
        try:
            with Image.open(file) as im:
                if mode is None:  # the first image decides: grayscale stays grayscale
                    mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
                if size is None:
                    size = (im.height, im.width)
                im = im.convert(mode)
                if (im.height, im.width) != size:
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8))
        except (OSError, UnidentifiedImageError) as e:
            raise DataSourceError(f"cannot read the image {file}: {e}") from None
    x = torch.from_numpy(np.stack(images))
    x = (x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)).float() / 255
    y = torch.tensor(labels) if labels is not None else None
    train, test = _split(len(x), options, f"image folder {path}")
    return (
        ArrayData(x[train], None if y is None else y[train], classes=classes),
        ArrayData(x[test], None if y is None else y[test], classes=classes),
    )


def _call_factory(spec: str, options: Dict[str, Any]) -> Tuple[Dataset, Dataset]:
    _, function = _factory_function(spec)
    try:
        out = function(**options)
    except TypeError as e:
        raise DataSourceError(
            f"the data factory {spec!r} refused data options {sorted(options)}: {e}"
        ) from None
    if not (
        isinstance(out, (tuple, list))
        and len(out) == 2
        and all(hasattr(d, "__len__") and hasattr(d, "__getitem__") for d in out)
    ):
        raise DataSourceError(
            f"the data factory {spec!r} must return a pair (train_set, test_set) of Datasets, got "
            f"{type(out).__name__}"
        )
    return out[0], out[1]


def load_source(dataset: str, options: Dict[str, Any], record: Optional[Dict[str, Any]] = None):
    """``(train_set, test_set)`` of an array file, an image folder or a factory; with a ``record``, from
    the recorded (absolute) path, so that a run reloads from any working directory."""
    kind = source_kind(dataset) if record is None else record["kind"]
    path = dataset if record is None else record.get("path", dataset)
    if kind == "array":
        return _load_arrays(path, dict(options))
    if kind == "folder":
        return _load_folder(path, dict(options))
    if kind == "factory":
        return _call_factory(dataset, dict(options))
    raise DataSourceError(f"dataset {dataset!r} ({kind}) is not read from a source")
