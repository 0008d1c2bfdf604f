"""The ``pyro-decomp`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

__all__ = ["main"]


def _train(args: argparse.Namespace) -> int:
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam

    from pyro_decomp import DecompVAE
    from pyro_decomp.data import pinwheel
    from pyro_decomp.nets import MLPDecoder, MLPEncoder

    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    x, _ = pinwheel(seed=args.seed)
    locs = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]])
    mix = dist.Categorical(torch.ones(4))
    comp = dist.Normal(locs, 0.03**0.5).to_event(1)
    prior = dist.MixtureSameFamily(mix, comp)
    vae = DecompVAE(MLPEncoder(2, 2), MLPDecoder(2, 2), prior, likelihood="normal")
    svi = SVI(vae.model, vae.guide, Adam({"lr": args.lr, "amsgrad": True}), Trace_ELBO())
    os.makedirs(args.run_dir, exist_ok=True)
    loss = float("nan")
    for _ in range(args.epochs):
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), args.batch_size):
            total += svi.step(x[perm[i : i + args.batch_size]], dataset_size=len(x))
        loss = total / len(x)
    torch.save(vae.state_dict(), os.path.join(args.run_dir, "model.pt"))
    with open(os.path.join(args.run_dir, "metrics.json"), "w") as f:
        json.dump({"epochs": args.epochs, "loss_per_point": loss}, f)
    print(f"final loss per data point: {loss:.4f}")
    print(f"results written to {args.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-decomp", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser(
        "train", help="train a decomposition VAE", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    train.add_argument("--epochs", type=int, default=200)
    train.add_argument("--batch-size", type=int, default=400)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--run-dir", default="runs/pinwheel")
    train.set_defaults(func=_train)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
