"""pyro_decomp: decomposition VAEs in Pyro (Mathieu, Rainforth, Siddharth & Teh, ICML 2019).

A VAE decomposes well when the encodings of different points *overlap* by the right amount (β) and the
aggregate encoding q(z) *aligns* with the structure of the prior p(z) (α).
"""

__version__ = "0.1.0"

from pyro_decomp.vae import DecompVAE  # noqa: E402

__all__ = ["DecompVAE", "__version__"]
