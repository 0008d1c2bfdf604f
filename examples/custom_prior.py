"""Compose your own prior: independent subspaces with a cluster block, a sparse block and your own block.

The decomposition a VAE learns is the one its prior expresses (Mathieu, Rainforth, Siddharth & Teh, 2019).
Beyond the paper's single-structure priors, a prior can state *different* structure in different
coordinates and independence between them:

    p(z) = p_1(z_0, z_1) · p_2(z_2 ... z_5) · p_3(z_6, z_7)

with p_1 a mixture of four Gaussians (clusters), p_2 a spike-and-slab (sparsity) and p_3 a distribution
written below from scratch -- a product of logistic distributions, as a small ``TorchDistribution`` with a
pathwise ``rsample``. Any Pyro distribution with one event dimension can be a block.

We train a VAE on the procedural shapes with this prior, the decomposition objective with an MMD (full-vector
inverse multiquadric kernel) between the aggregate encoding q(z) and p(z), and look at each block.

    python examples/custom_prior.py
    python examples/custom_prior.py --smoke          # a few seconds
"""

import argparse
import json
import math
import os

import pyro
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from pyro.infer import SVI
from pyro.optim import Adam
from torch.distributions.utils import broadcast_all
from torch.utils.data import DataLoader

from pyro_decomp import DecompVAE, metrics, plots
from pyro_decomp.data import Shapes
from pyro_decomp.divergences import MMD, IMQKernel
from pyro_decomp.elbo import DecompositionELBO
from pyro_decomp.nets import ConvDecoder64, ConvEncoder64
from pyro_decomp.priors import SparsePrior, SubspacePrior, pinwheel_mixture


class Logistic(TorchDistribution):
    r"""The logistic distribution: with u = (z − μ)/s,

        p(z) = e^{−u} / (s (1 + e^{−u})²),   F(z) = 1 / (1 + e^{−u}),

    mean μ and variance s² π² / 3; its tails are exponential, heavier than a Gaussian's. ``rsample`` inverts
    the CDF of a uniform draw, z = μ + s log(v / (1 − v)), so it is pathwise in μ and s.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc, scale, validate_args=None):
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Logistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.scale = self.loc.expand(batch_shape), self.scale.expand(batch_shape)
        super(Logistic, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        return self.scale.pow(2) * math.pi**2 / 3

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        tiny = torch.finfo(self.loc.dtype).tiny
        v = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(tiny, 1 - 1e-7)
        return self.loc + self.scale * (v.log() - (-v).log1p())

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        u = (value - self.loc) / self.scale
        return -u - 2 * F.softplus(-u) - self.scale.log()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--alpha", type=float, default=100.0, help="weight of D(q(z), p(z)) per data point")
    parser.add_argument("--epochs", type=int, default=None, help="default 3 (2 with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds on 192 images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/examples/custom_prior", help="where figures go")
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.smoke else 3)
    os.makedirs(args.out, exist_ok=True)
    pyro.set_rng_seed(args.seed)

    # data: 64x64 binary shapes (square, ellipse, heart) on a subset of the dSprites factor grid
    grid = (
        {"scale": 3, "orientation": 20, "position_x": 8, "position_y": 8}
        if args.smoke
        else {"scale": 2, "orientation": 8, "position_x": 4, "position_y": 4}
    )
    data = Shapes(subsample=grid, progress=False)
    loader = DataLoader(data, batch_size=64, shuffle=True)

    # the prior: three independent subspaces, 2 + 4 + 2 = 8 latent coordinates
    prior = SubspacePrior(
        [
            pinwheel_mixture(),  # z0, z1: four clusters
            SparsePrior(4, gamma=0.8),  # z2..z5: spike and slab
            Logistic(torch.zeros(2), torch.ones(2)).to_event(1),  # z6, z7: our own distribution
        ]
    )
    p = prior()
    print(f"prior: {type(p).__name__} with blocks {prior.sizes}, event_shape {tuple(p.event_shape)}")

    # model and objective: KL(q(z|x) ‖ p(z)) has no closed form here, so the ELBO estimates it by Monte Carlo
    vae = DecompVAE(ConvEncoder64(8), ConvDecoder64(8), prior, likelihood="bernoulli")
    elbo = DecompositionELBO(beta=1.0, alpha=args.alpha, divergence=MMD(IMQKernel(per_dim=False)))
    svi = SVI(vae.model, vae.guide, Adam({"lr": 5e-4, "amsgrad": True}), elbo)

    # the SVI loop
    n = len(data)
    for epoch in range(1, epochs + 1):
        total = sum(svi.step(x, dataset_size=n) for x, _ in loader)
        print(f"epoch {epoch}: loss per image {total / n:.1f}")

    # evaluation: one draw of q(z|x) per image is a sample of the aggregate encoding q(z)
    vae.eval()
    x = (
        torch.stack([data[i][0] for i in range(n)])
        if n <= 2048
        else data.images_at(torch.arange(0, n, n // 2048))
    )
    with torch.no_grad():
        z = vae.encoder_distribution(x).sample()
    blocks = p.split(z)  # the coordinates of each subspace
    generator = torch.Generator().manual_seed(0)
    results = {
        "mmd_all": metrics.alignment(vae, x, MMD(IMQKernel(per_dim=False)), generator=generator),
        # the same divergence block by block: how well each subspace matches its own prior
        **{
            f"mmd_block{i}": float(MMD(IMQKernel(per_dim=False))(zb, None, part))
            for i, (zb, part) in enumerate(zip(blocks, p.parts))
        },
        "hoyer_sparse_block": metrics.hoyer_sparsity(blocks[1]),
    }
    print(", ".join(f"{k} {v:.4f}" for k, v in results.items()))

    # figures: the cluster block's q(z) against its prior, and every coordinate's marginal
    plots.plot_aggregate_posterior(blocks[0], p.parts[0], os.path.join(args.out, "cluster_block.png"))
    plots.plot_aggregate_posterior(z, p, os.path.join(args.out, "marginals.png"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"figures and results.json written to {args.out}")


if __name__ == "__main__":
    main()
