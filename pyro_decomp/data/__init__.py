"""Data sets: pinwheel, procedural shapes on the dSprites grid, dSprites, Fashion-MNIST."""

from pyro_decomp.data.pinwheel import PinwheelDataset, pinwheel

__all__ = ["pinwheel", "PinwheelDataset"]
