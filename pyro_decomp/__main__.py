"""``python -m pyro_decomp`` runs the ``pyro-decomp`` command line (also under ``torchrun``)."""

from pyro_decomp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
