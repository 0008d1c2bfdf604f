"""Clustering with a mixture prior: α aligns the aggregate encoding, β alone does not.

Mathieu, Rainforth, Siddharth & Teh (2019), §5.2. The pinwheel data have four curved arms; the prior is a
mixture of four Gaussians at (±1, 0), (0, ±1) with variance 0.03. We train the same VAE twice,

    (β=1, α=0): the ordinary ELBO, and
    (β=0, α=1): no per-point KL, the inclusive KL(p(z) ‖ q(z)) between prior and aggregate encoding,

and measure how well the aggregate encoding q(z) clusters by arm: each held-out point goes to the prior
component nearest its encoder mean, and the adjusted Rand index compares that partition with the arms.

    python examples/pinwheel_clustering.py            # the paper's 500 epochs (about a minute on a CPU)
    python examples/pinwheel_clustering.py --smoke    # a few seconds
"""

import argparse
import json
import os

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_decomp import DecompVAE, metrics, plots
from pyro_decomp.data import pinwheel
from pyro_decomp.elbo import DecompositionELBO
from pyro_decomp.metrics import adjusted_rand_index
from pyro_decomp.nets import MLPDecoder, MLPEncoder
from pyro_decomp.priors import pinwheel_mixture


def train(x, beta, alpha, epochs, batch_size=400, lr=1e-3):
    """Fit a pinwheel VAE with the decomposition objective; returns the trained VAE."""
    # model: the mixture prior, an MLP encoder/decoder with 100 hidden units, a Normal likelihood whose
    # scale the decoder predicts per point (a second head, as the paper's pinwheel decoder)
    vae = DecompVAE(
        MLPEncoder(2, 2, hidden=(100,)),
        MLPDecoder(2, 2, hidden=(100,), scale="decoder"),
        pinwheel_mixture(),
        likelihood="normal",
    )
    # objective: E_q[log p(x|z)] - β KL(q(z|x) ‖ p(z)) - α D(q(z), p(z)) with D the inclusive KL
    elbo = DecompositionELBO(beta=beta, alpha=alpha, divergence="inclusive-kl")
    svi = SVI(vae.model, vae.guide, Adam({"lr": lr, "amsgrad": True}), elbo)
    n = len(x)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n)
        loss = sum(svi.step(x[order[i : i + batch_size]], dataset_size=n) for i in range(0, n, batch_size))
        if epoch == 1 or epoch % max(1, epochs // 5) == 0:
            print(f"  epoch {epoch:4d}  loss per point {loss / n:8.3f}")
    return vae


def evaluate(vae, x, labels, path):
    """ARI of the nearest-component partition, held-out D(q(z), p(z)), reconstruction; the q(z) figure."""
    vae.eval()
    with torch.no_grad():
        loc, scale = vae.encode(x)
        nearest = torch.cdist(loc, vae.prior.locs).argmin(-1)
        z = loc + scale * torch.randn_like(loc)  # one draw of q(z|x) per point: a sample of q(z)
        q = vae.encoder_distribution(x)
        reconstruction = vae.likelihood(vae.decoder(q.sample()), 1).log_prob(x).mean()
    generator = torch.Generator().manual_seed(0)
    results = {
        "ari": adjusted_rand_index(labels, nearest),
        "inclusive_kl": metrics.alignment(vae, x, "inclusive-kl", generator=generator),
        "reconstruction": float(reconstruction),
    }
    plots.plot_aggregate_posterior(z, vae.prior_distribution(), path)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a few seconds: 30 epochs")
    parser.add_argument("--epochs", type=int, default=None, help="default 500 (30 with --smoke)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/examples/pinwheel_clustering", help="where figures go")
    args = parser.parse_args(argv)
    epochs = args.epochs or (30 if args.smoke else 500)
    os.makedirs(args.out, exist_ok=True)

    # data: the paper's train and test sets are two independent draws of 4 arms x 100 points
    x, _ = pinwheel(num_per_class=100, seed=0)
    x_test, labels_test = pinwheel(num_per_class=100, seed=1)

    results = {}
    for beta, alpha in ((1.0, 0.0), (0.0, 1.0)):
        name = f"beta{beta:g}_alpha{alpha:g}"
        print(f"training with beta={beta:g}, alpha={alpha:g} for {epochs} epochs")
        pyro.set_rng_seed(args.seed)
        vae = train(x, beta, alpha, epochs)
        results[name] = evaluate(vae, x_test, labels_test, os.path.join(args.out, f"{name}_qz.png"))
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name].items()))

    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(
        f"ARI (clusters of q(z) against arms): {results['beta1_alpha0']['ari']:.3f} with beta=1, alpha=0; "
        f"{results['beta0_alpha1']['ari']:.3f} with beta=0, alpha=1"
    )
    print(f"figures and results.json written to {args.out}")


if __name__ == "__main__":
    main()
