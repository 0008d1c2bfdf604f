"""Sparse codes from a sparse prior *and* the aggregate term α.

Mathieu, Rainforth, Siddharth & Teh (2019), §5.3. The prior is a spike-and-slab per latent coordinate,
p(z_d) = γ N(0, 0.05²) + (1 − γ) N(0, 1): with γ = 0.8 most coordinates of a draw are near zero. Matching
each encoding to it (β) is not enough to make the *aggregate* encoding sparse; the per-dimension IMQ MMD
between q(z) and p(z), weighted by α, is what aligns the two. We train on Fashion-MNIST at 32×32 and measure
the normalised Hoyer sparsity of the codes and the importance-weighted log-likelihood.

Data: Fashion-MNIST, looked up in ``--data-root``/FashionMNIST/raw (the four IDX files
train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, plain or
.gz) or downloaded there with ``--download``. Without it, ``--smoke`` falls back to the procedural shapes
resized to 32×32 (class = shape), which is enough to see the code run but is not the paper's data.

    python examples/fashion_mnist_sparsity.py --data-root ~/data --gamma 0.8 --alpha 100
    python examples/fashion_mnist_sparsity.py --smoke                   # a few seconds
"""

import argparse
import json
import os
import sys

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI
from pyro.optim import Adam
from torch.utils.data import DataLoader, TensorDataset

from pyro_decomp import DecompVAE, metrics, plots
from pyro_decomp.data import SHAPE_NAMES, Shapes, fashion_mnist
from pyro_decomp.elbo import DecompositionELBO
from pyro_decomp.nets import DCGANDecoder32, DCGANEncoder32
from pyro_decomp.priors import SparsePrior


def shapes_at_32(grid):
    """The stand-in: shapes averaged down to 32x32, clamped like Fashion-MNIST, labelled by shape."""
    shapes = Shapes(subsample=grid, progress=False)
    index = torch.arange(len(shapes))
    x = F.avg_pool2d(shapes.images_at(index), 2).clamp(1e-6, 1 - 1e-6)
    y = shapes.factors_from_index(index)[:, 0]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, train = order[: len(x) // 5], order[len(x) // 5 :]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test]), SHAPE_NAMES


def load_data(args):
    try:
        train = fashion_mnist(args.data_root, train=True, download=args.download)
        test = fashion_mnist(args.data_root, train=False, download=args.download)
        print(f"data: Fashion-MNIST, {len(train)} training and {len(test)} test images")
        return train, test, train.classes
    except (FileNotFoundError, RuntimeError) as e:
        print(f"Fashion-MNIST is not available: {e}", file=sys.stderr)
        if not args.smoke:
            print(
                "This example needs Fashion-MNIST: pass --data-root DIR with DIR/FashionMNIST/raw holding "
                "the four IDX files, or add --download to fetch them there (or try --smoke).",
                file=sys.stderr,
            )
            sys.exit(2)
        print("data: --smoke falls back to the procedural shapes at 32x32 (class = shape), NOT Fashion-MNIST")
        return shapes_at_32({"scale": 3, "orientation": 20, "position_x": 8, "position_y": 8})


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gamma", type=float, default=0.8, help="spike weight of the prior (0: a Gaussian)")
    parser.add_argument("--alpha", type=float, default=100.0, help="weight of the per-dimension MMD")
    parser.add_argument("--epochs", type=int, default=None, help="default 80, the paper's (2 with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds")
    parser.add_argument("--data-root", default=None, help="directory that holds FashionMNIST/raw")
    parser.add_argument("--download", action="store_true", help="download Fashion-MNIST into --data-root")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/examples/fashion_mnist_sparsity", help="where figures go")
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.smoke else 80)
    os.makedirs(args.out, exist_ok=True)
    pyro.set_rng_seed(args.seed)

    # data: 32x32 grey images in (0, 1) with class labels
    train, test, class_names = load_data(args)
    batch_size = 100 if args.smoke else 500
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=len(train) > batch_size)

    # model: 50-D latents with the spike-and-slab prior, DCGAN networks, Laplace likelihood of scale 0.1
    width = 8 if args.smoke else 32
    prior = SparsePrior(50, gamma=args.gamma)
    vae = DecompVAE(
        DCGANEncoder32(50, width=width),
        DCGANDecoder32(50, width=width),
        prior,
        likelihood="laplace",
        likelihood_scale=0.1,
    )

    # objective: E_q[log p(x|z)] - KL(q(z|x) ‖ p(z)) - α MMD(q(z), p(z)), per-dimension IMQ kernel
    elbo = DecompositionELBO(beta=1.0, alpha=args.alpha, divergence="mmd")
    svi = SVI(vae.model, vae.guide, Adam({"lr": 5e-4, "amsgrad": True}), elbo)

    # the SVI loop
    n = len(train)
    for epoch in range(1, epochs + 1):
        vae.train()
        total = sum(svi.step(x, dataset_size=n) for x, _ in loader)
        print(f"epoch {epoch}: loss per image {total / n:.1f}")

    # evaluation on the test set: sparsity of the encoder means, IWAE log-likelihood, held-out MMD
    vae.eval()
    xs, ys = zip(*(batch for batch, _ in zip(DataLoader(test, batch_size=500), range(4))))
    x, y = torch.cat(xs), torch.cat(ys)
    with torch.no_grad():
        codes = vae.encode(x)[0]
        iwae = metrics.iwae_log_likelihood(
            vae, x[:100], num_samples=10 if args.smoke else 1000, batch_size=5000
        )
    results = {
        "hoyer": metrics.hoyer_sparsity(codes),
        "iwae": float(iwae.mean()),
        "mmd": metrics.alignment(vae, x, "mmd", generator=torch.Generator().manual_seed(0)),
    }
    print(", ".join(f"{k} {v:.3f}" for k, v in results.items()))

    # the paper's figure: average |z_d| per class
    plots.plot_latent_magnitude(
        codes, y, os.path.join(args.out, "latent_magnitude.png"), class_names=class_names
    )
    plots.plot_reconstructions(x[:16], vae.reconstruct(x[:16]), os.path.join(args.out, "reconstructions.png"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"gamma": args.gamma, "alpha": args.alpha, **results}, f, indent=2)
    print(f"figures and results.json written to {args.out}")


if __name__ == "__main__":
    main()
