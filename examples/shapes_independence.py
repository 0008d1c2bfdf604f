"""Axis-aligned independence: an anisotropic or heavy-tailed prior against the isotropic Gaussian.

Mathieu, Rainforth, Siddharth & Teh (2019), §5.1. With an isotropic Gaussian prior N(0, I) the β-VAE
objective does not change when the latent space is rotated, so nothing in it prefers axis-aligned factors.
A prior without that symmetry -- an anisotropic Gaussian (variances from the data's principal components,
fixed or learnt) or a product of Student-t -- does. We train one β-VAE on the dSprites factor grid and
score how axis-aligned its code is (Kim & Mnih's disentanglement score and MIG) against its reconstruction.

Data: the dSprites file ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` when ``--data-root`` holds it,
otherwise the procedural shapes of ``pyro_decomp.data.Shapes`` on the same factor grid (a subset of it).

    python examples/shapes_independence.py --prior student-t --beta 4  # 23,040 images: ~4 min on one core
    python examples/shapes_independence.py --smoke                     # a few seconds
"""

import argparse
import json
import os

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam
from torch.utils.data import DataLoader, Subset

from pyro_decomp import DecompVAE, metrics, plots
from pyro_decomp.data import DSPRITES_FILENAME, DSprites, Shapes
from pyro_decomp.elbo import DecompositionELBO
from pyro_decomp.nets import ConvDecoder64, ConvEncoder64
from pyro_decomp.priors import GaussianPrior, StudentTPrior

# every k-th value of (scale, orientation, position x, position y): the grid the example trains on
GRID = {"scale": 2, "orientation": 4, "position_x": 2, "position_y": 2}  # 23,040 images
SMOKE_GRID = {"scale": 3, "orientation": 20, "position_x": 8, "position_y": 8}  # 192 images


def load_data(data_root, grid):
    """The dSprites file under ``data_root`` if it is there, else the procedural shapes; a grid subset."""
    if data_root is not None and os.path.exists(os.path.join(data_root, DSPRITES_FILENAME)):
        print(f"data: the dSprites file in {data_root}")
        full = DSprites(data_root, progress=False)
        axes = [
            torch.arange(0, n, grid.get(name, 1)) for name, n in zip(full.factor_names, full.factor_sizes)
        ]
        return Subset(full, full.index_from_factors(torch.cartesian_prod(*axes)).tolist()), full
    where = f"in {data_root}" if data_root is not None else "(no --data-root given)"
    print(f"data: procedural shapes on the dSprites grid -- no {DSPRITES_FILENAME} {where}")
    data = Shapes(subsample=grid, progress=False)
    return data, data


def make_prior(name, dim, images):
    """The four priors of the paper's experiment."""
    if name == "iso":
        return GaussianPrior(dim, variance="iso")
    if name in ("pca", "learnt"):
        # σ_d² ∝ the d-th principal variance of the images, largest first (learnt: a starting point)
        return GaussianPrior(
            dim, variance="pca", data=images.reshape(len(images), -1), learn_variance=name == "learnt"
        )
    return StudentTPrior(dim, df=9.0)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prior", choices=("iso", "pca", "learnt", "student-t"), default="student-t")
    parser.add_argument("--beta", type=float, default=4.0)
    parser.add_argument("--epochs", type=int, default=None, help="default 2 (1 with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds on 192 images")
    parser.add_argument("--data-root", default=None, help="directory of the dSprites .npz file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/examples/shapes_independence", help="where figures go")
    args = parser.parse_args(argv)
    epochs = args.epochs or (1 if args.smoke else 2)
    os.makedirs(args.out, exist_ok=True)
    pyro.set_rng_seed(args.seed)

    # data: 64x64 binary images with 5 ground-truth factors (shape, scale, orientation, x, y)
    data, grid_data = load_data(args.data_root, SMOKE_GRID if args.smoke else GRID)
    loader = DataLoader(data, batch_size=64, shuffle=True)
    print(f"{len(data)} images, factors {grid_data.factor_names}")

    # model: 10-D latents, convolutional encoder/decoder, Bernoulli likelihood, the chosen prior
    some = torch.stack([data[i][0] for i in torch.randperm(len(data))[:2000].tolist()])
    prior = make_prior(args.prior, 10, some)
    vae = DecompVAE(ConvEncoder64(10), ConvDecoder64(10), prior, likelihood="bernoulli")

    # objective: the β-VAE, E_q[log p(x|z)] - β KL(q(z|x) ‖ p(z)) (α = 0: no aggregate term)
    elbo = DecompositionELBO(beta=args.beta, alpha=0.0)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 5e-4, "amsgrad": True}), elbo)

    # the SVI loop
    n = len(data)
    for epoch in range(1, epochs + 1):
        total = 0.0
        for step, (x, _) in enumerate(loader, 1):
            total += svi.step(x, dataset_size=n)
            if step % 100 == 0:
                print(f"  epoch {epoch} step {step}: loss per image {total / (step * 64):.1f}")
        print(f"epoch {epoch}: loss per image {total / n:.1f}")

    # evaluation: encoder means of every image, scored against the factors
    vae.eval()
    codes, factors = [], []
    with torch.no_grad():
        for x, f in DataLoader(data, batch_size=512):
            codes.append(vae.encode(x)[0])
            factors.append(f)
    codes, factors = torch.cat(codes), torch.cat(factors)
    # Student-t codes go through the prior's CDF and the normal quantile first, as the paper does
    transform = metrics.prior_cdf_transform(vae.prior_distribution()) if args.prior == "student-t" else None
    generator = torch.Generator().manual_seed(0)
    x = torch.stack([data[i][0] for i in range(0, n, max(1, n // 512))])
    with torch.no_grad():
        q = vae.encoder_distribution(x)
        log_lik = vae.likelihood(vae.decoder(q.sample()), 3).log_prob(x).mean()
    results = {
        "disentanglement": metrics.disentanglement_score(
            codes,
            factors,
            num_votes=800,
            votes_size=min(100, n // 4),
            transform=transform,
            generator=generator,
        ),
        "mig": metrics.mig(codes, factors),
        "reconstruction_error": -float(log_lik),
    }
    print(", ".join(f"{k} {v:.3f}" for k, v in results.items()))

    # figures: traversals of each latent coordinate around the mean code, and reconstructions
    values = torch.linspace(-3, 3, 9)
    plots.plot_traversals(
        plots.latent_traversal(vae, z=codes.mean(0), values=values),
        os.path.join(args.out, "traversals.png"),
        values=values,
    )
    plots.plot_reconstructions(x[:16], vae.reconstruct(x[:16]), os.path.join(args.out, "reconstructions.png"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"prior": args.prior, "beta": args.beta, **results}, f, indent=2)
    print(f"figures and results.json written to {args.out}")


if __name__ == "__main__":
    main()
