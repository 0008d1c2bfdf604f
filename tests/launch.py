"""Starting processes for the multi-process tests: a free loopback port, the command line under torchrun."""

import os
import socket
import subprocess
import sys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(*args, processes: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=P -m pyro_decomp train ARGS``, one thread per process (gloo, loopback)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    cmd += [f"--master_port={free_port()}", "-m", "pyro_decomp", "train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
