"""A learnt prior: a normalising flow, passed to the VAE as a plain Pyro distribution.

Any Pyro distribution with event shape (D,) can be the prior, learnable ones included: here a
spline-coupling flow (Durkan et al., 2019) on a standard Normal base,

    p(z) = N(f⁻¹(z); 0, I) |det ∂f⁻¹/∂z|,    f a rational-quadratic spline coupling layer,

written as ``dist.TransformedDistribution(base, [T.spline_coupling(2)])``. The flow's parameters live in
its ``TransformModule``; ``DecompVAE`` registers them under its own name in Pyro's parameter store, so SVI
trains them with the encoder and decoder. With β=1 the KL term pulls p(z) towards each q(z|x) and with α>0
the inclusive KL(p(z) ‖ q(z)) pulls it towards the aggregate encoding q(z) as a whole: the prior learns the
shape of the encoding.

We train the same VAE on pinwheel twice, once with the fixed N(0, I) prior and once with the flow, and
report the held-out reconstruction, KL and KL(p(z) ‖ q(z)) of each, and how far the flow's parameters
moved, with a figure of q(z) against the learnt prior.

    python examples/flow_prior.py            # 300 epochs (a few minutes on a CPU)
    python examples/flow_prior.py --smoke    # a few seconds
"""

import argparse
import json
import os

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_decomp import DecompVAE, metrics
from pyro_decomp.data import pinwheel
from pyro_decomp.elbo import DecompositionELBO
from pyro_decomp.nets import MLPDecoder, MLPEncoder


def make_prior(kind):
    """The fixed N(0, I) prior, or a spline-coupling flow on it (its parameters are learnt)."""
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    if kind == "normal":
        return base
    return dist.TransformedDistribution(base, [T.spline_coupling(2, hidden_dims=[32], count_bins=8)])


def train(x, prior, epochs, batch_size=100, lr=3e-3, alpha=1.0):
    """Fit a pinwheel VAE with the decomposition objective (β=1, α, inclusive KL); returns the VAE."""
    # model: the prior given as a distribution, MLP encoder/decoder, a decoder-predicted Normal scale
    vae = DecompVAE(
        MLPEncoder(2, 2, hidden=(64,)),
        MLPDecoder(2, 2, hidden=(64,), scale="decoder"),
        prior,
        likelihood="normal",
    )
    # objective: E_q[log p(x|z)] - KL(q(z|x) ‖ p(z)) - α KL(p(z) ‖ q(z)); the flow trains through both terms
    elbo = DecompositionELBO(beta=1.0, alpha=alpha, divergence="inclusive-kl")
    svi = SVI(vae.model, vae.guide, Adam({"lr": lr, "amsgrad": True}), elbo)
    n = len(x)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n)
        # each step's loss estimates the loss of the whole data set: average them over the epoch
        steps = [svi.step(x[order[i : i + batch_size]], dataset_size=n) for i in range(0, n, batch_size)]
        if epoch == 1 or epoch % max(1, epochs // 5) == 0:
            print(f"  epoch {epoch:4d}  loss per point {sum(steps) / len(steps) / n:8.3f}")
    return vae, elbo


def plot_codes_and_prior(z, prior_draws, path):
    """Histograms of q(z) (the codes) and of p(z) (prior draws) on one range, side by side."""
    lim = float(torch.cat([z, prior_draws]).abs().quantile(0.995)) * 1.1
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, points, title in ((axes[0], z, "q(z): codes of held-out points"), (axes[1], prior_draws, "p(z)")):
        ax.hist2d(points[:, 0].numpy(), points[:, 1].numpy(), bins=60, range=[[-lim, lim]] * 2, cmap="Blues")
        ax.set_title(title)
        ax.set_aspect("equal")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def evaluate(vae, elbo, x, path):
    """Held-out loss components and KL(p(z) ‖ q(z)); the figure of q(z) against the prior."""
    vae.eval()
    parts = elbo.loss_components(vae.model, vae.guide, x)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = vae.encoder_distribution(x).sample()  # one draw of q(z|x) per point: a sample of q(z)
        prior_draws = vae.prior_distribution().sample((20000,))
    plot_codes_and_prior(z, prior_draws, path)
    return {
        "reconstruction": parts["reconstruction"],
        "kl": parts["kl"],
        "loss": parts["loss"],
        "inclusive_kl": metrics.alignment(vae, x, "inclusive-kl", generator=generator),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a few seconds: 5 epochs")
    parser.add_argument("--epochs", type=int, default=None, help="default 300 (5 with --smoke)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/examples/flow_prior", help="where figures go")
    args = parser.parse_args(argv)
    epochs = args.epochs or (5 if args.smoke else 300)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # small models train fastest on one thread

    # data: two independent pinwheel draws, 4 arms x 100 points each, to train and to test
    x, _ = pinwheel(num_per_class=100, seed=0)
    x_test, _ = pinwheel(num_per_class=100, seed=1)

    results = {}
    for kind in ("normal", "flow"):
        print(f"training with the {kind} prior for {epochs} epochs")
        pyro.set_rng_seed(args.seed)
        prior = make_prior(kind)
        flow_params = list(prior.transforms[0].parameters()) if kind == "flow" else []
        start = [p.detach().clone() for p in flow_params]
        vae, elbo = train(x, prior, epochs)
        results[kind] = evaluate(vae, elbo, x_test, os.path.join(args.out, f"{kind}_qz.png"))
        if flow_params:  # the flow's own parameters: the very tensors SVI trained
            change = sum(float((p.detach() - s).square().sum()) for p, s in zip(flow_params, start))
            results[kind]["flow_parameter_change"] = change**0.5
        print(f"  {kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[kind].items()))

    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(
        f"held-out loss per point: {results['normal']['loss']:.3f} with N(0, I), "
        f"{results['flow']['loss']:.3f} with the learnt flow (its parameters moved by "
        f"{results['flow']['flow_parameter_change']:.3f})"
    )
    print(f"figures and results.json written to {args.out}")


if __name__ == "__main__":
    main()
