"""The ``pyro-decomp`` command line: ``train``, ``evaluate``, ``reproduce`` and ``sweep`` decomposition VAEs.

``pyro-decomp train`` with no arguments runs the pinwheel clustering experiment of Mathieu et al. (2019,
§5.2): the 4-component mixture prior, 2-D latents, β = 0 and α = 1 with the inclusive KL, 500 epochs of the
400-point pinwheel in batches of 400. Under ``torchrun --nproc_per_node=P -m pyro_decomp train ...`` it
trains data-parallel on P processes.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import List, Optional

from pyro_decomp.cli import batch_commands, run_commands
from pyro_decomp.cli.flags import EXIT_INTERRUPTED, HelpFormatter, one_line
from pyro_decomp.version import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-decomp", description=__doc__.replace("``", ""), formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"pyro-decomp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,reproduce,sweep}")
    run_commands.add_parsers(sub)
    batch_commands.add_parsers(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``pyro-decomp``; returns the exit status (0 ok, 1 failed, 2 usage, 130/143/129 stopped
    by SIGINT/SIGTERM/SIGHUP)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.func(args, args.subparser)
        except KeyboardInterrupt:  # before training started or after it ended: nothing to checkpoint
            print("pyro-decomp: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, ``pyro-decomp: warning: ...`` (no source line: it is not a crash)."""
    print(
        f"pyro-decomp: warning: {one_line(message) if isinstance(message, Exception) else message}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
