"""Your own data, end to end: a file of points, a trained run, reloaded and evaluated on that same file.

1. Data: two concentric rings of 2-D points, written to ``OUT/rings.npz`` with their ring as the label
   (arrays ``x`` (N, 2) and ``y`` (N,)); any array file (.npz, .npy, .pt), image folder or
   ``"package.module:function"`` factory is named the same way, by ``RunConfig(dataset=...)``.
2. Model: what the config leaves open is chosen from the data and recorded in ``config.json``: an MLP for
   vectors, a Normal likelihood for real values, D = 2; a Gaussian prior, a plain VAE objective (β = 1,
   α = 0). Here we ask for a mixture prior of two components and some alignment instead (α = 1 with the
   inclusive KL), as the paper's pinwheel experiment does.
3. Training: ``train(config, run_dir)`` records where the data came from (path, size, SHA-256).
4. Reloading: ``load_run(run_dir)`` rebuilds the data from that record (and refuses if the file changed);
   ``run.test_data()`` gives the held-out points back, the seeded 20% that training never saw.
5. Evaluation: ``evaluate(run_dir)`` measures the run on those held-out points; the labels allow the
   adjusted Rand index of the clusters of q(z) (nearest mixture component) against the rings. Concentric
   rings are a hard case for two Gaussian components: with these settings (200 epochs) we measured an ARI
   of about 0, a reconstruction error of 0.013 and an IWAE log-likelihood of -7.2 per point.

    python examples/own_data.py
    python examples/own_data.py --smoke          # a few seconds
"""

import argparse
import json
import os

import numpy as np
import torch

from pyro_decomp import RunConfig, evaluate, load_run, train


def rings(n: int, seed: int = 0):
    """``n`` points on two noisy rings of radius 1 and 3, and their ring (0 or 1)."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 2
    angle = g.uniform(0, 2 * np.pi, n)
    radius = np.where(y == 0, 1.0, 3.0) + 0.1 * g.standard_normal(n)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1).astype(np.float32), y


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="own_data_out", help="output directory")
    parser.add_argument("--smoke", action="store_true", help="a few epochs on few points (seconds)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)

    # 1. the data, in a file of one's own
    path = os.path.join(args.out, "rings.npz")
    x, y = rings(200 if args.smoke else 1000)
    np.savez(path, x=x, y=y)

    # 2-3. a run on that file: the settings left out are chosen from the data and recorded
    config = RunConfig(
        dataset=path,
        prior="mixture",
        prior_options={"locs": [[-1.0, 0.0], [1.0, 0.0]], "scale": 0.1},
        alpha=1.0,
        divergence="inclusive-kl",
        epochs=3 if args.smoke else 200,
        batch_size=100,
        device="cpu",
    )
    run_dir = os.path.join(args.out, "run")
    train(config, run_dir, progress=not args.smoke, overwrite=True)

    # 4. reload: the same held-out points, rebuilt from the recorded file
    run = load_run(run_dir)
    x_test, y_test = run.test_data()
    print(f"data: {run.config.data_source['path']} (SHA-256 {run.config.data_source['sha256'][:12]}…)")
    print(
        f"chosen from the data: network {run.config.network}, likelihood {run.config.likelihood}, "
        f"D = {run.config.latent_dim}; {len(x_test)} held-out points"
    )
    z_loc, _ = run.vae.encode(x_test)

    # 5. evaluate on them: loss components, IWAE, overlap, alignment, and the ARI against the rings
    result = evaluate(run_dir, iwae_samples=10 if args.smoke else 100)
    summary = {
        "test_points": result["test_points"],
        "ari": result["ari"]["value"],
        "iwae": result["iwae_log_likelihood"]["mean"],
        "reconstruction_squared_error": result["reconstruction_squared_error"],
        "mean_code_norm": float(z_loc.norm(dim=-1).mean()),
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"ARI of the clusters of q(z) against the rings: {summary['ari']:.3f}")
    for name, figure in result["figures"].items():
        print(f"figure: {figure} ({name.replace('_', ' ')})")


if __name__ == "__main__":
    main()
