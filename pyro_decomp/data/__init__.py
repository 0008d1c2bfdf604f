"""Data sets: pinwheel, procedural shapes on the dSprites grid, dSprites, Fashion-MNIST; and one's own data
(array files, image folders, factories) in :mod:`pyro_decomp.data.sources`."""

from pyro_decomp.data.dsprites import DSPRITES_FILENAME, DSPRITES_URL, DSprites
from pyro_decomp.data.fashion_mnist import FashionMNIST32, fashion_mnist
from pyro_decomp.data.ground_truth import (
    DataFileError,
    DownloadError,
    GroundTruthData,
    PackedImages,
    default_data_dir,
)
from pyro_decomp.data.indexing import batches, first_tensor, grid_subset, subset_index, take
from pyro_decomp.data.pinwheel import PinwheelDataset, pinwheel
from pyro_decomp.data.shapes import SHAPE_NAMES, Shapes
from pyro_decomp.data.sources import ArrayData, DataSourceError, load_source

__all__ = [
    "pinwheel",
    "PinwheelDataset",
    "GroundTruthData",
    "PackedImages",
    "Shapes",
    "SHAPE_NAMES",
    "DSprites",
    "DSPRITES_FILENAME",
    "DSPRITES_URL",
    "fashion_mnist",
    "FashionMNIST32",
    "default_data_dir",
    "DataFileError",
    "DownloadError",
    "take",
    "subset_index",
    "grid_subset",
    "batches",
    "first_tensor",
    "ArrayData",
    "DataSourceError",
    "load_source",
]
