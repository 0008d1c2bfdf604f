"""Shared helpers of the benchmark scripts: the machine, interleaved timing, robust summaries, JSON output.

Every script prints one JSON document. Timings are medians over repeated *rounds*; in each round every
implementation runs once, in an order that alternates from round to round, so that slow drifts of a shared
machine (other processes, frequency changes) hit the baseline and the candidate alike. Each timing records
wall-clock time and the process's CPU time; on a loaded machine the CPU time is the steadier of the two.
Ratios are given two ways: the ratio of the medians, and the median of the per-round ratios (paired).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from typing import Callable, Dict, Optional, Sequence

import torch


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    """The machine and software that produced the numbers."""
    import pyro

    info = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def summarise(values: Sequence[float]) -> dict:
    """Median, quartiles, interquartile range, min, max and count of ``values``."""
    values = sorted(float(v) for v in values)
    if not values:
        raise ValueError("summarise needs at least one value")
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": values[0],
        "max": values[-1],
        "n": len(values),
    }


def ratio(candidate: Sequence[float], baseline: Sequence[float]) -> dict:
    """``candidate / baseline``: the ratio of the medians and the median (and quartiles) of paired ratios."""
    paired = [c / b for c, b in zip(candidate, baseline) if b > 0]
    out = {"of_medians": statistics.median(candidate) / statistics.median(baseline)}
    if paired:
        s = summarise(paired)
        out.update(paired_median=s["median"], paired_q1=s["q1"], paired_q3=s["q3"])
    return out


class Case:
    """One implementation to time: ``run()`` does the work once; ``context()`` (optional) is entered around
    each timed batch of calls but outside the timer (e.g. a parameter-store scope); ``sync()`` waits for an
    accelerator."""

    def __init__(
        self,
        run: Callable[[], object],
        context: Optional[Callable[[], object]] = None,
        sync: Optional[Callable[[], None]] = None,
    ):
        self.run = run
        self.context = context or nullcontext
        self.sync = sync or (lambda: None)

    def time(self, number: int) -> tuple:
        with self.context():
            self.sync()
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(number):
                self.run()
            self.sync()
            w1, c1 = time.perf_counter(), time.process_time()
        return (w1 - w0) / number, (c1 - c0) / number


def interleaved(cases: Dict[str, Case], repeats: int, warmup: int = 1, number: int = 1) -> Dict[str, dict]:
    """Time every case ``repeats`` times, round-robin, after ``warmup`` untimed rounds.

    Each measurement averages ``number`` consecutive calls. The order of the cases is reversed every other
    round. Returns ``{name: {"wall": [...], "cpu": [...]}}`` in seconds per call.
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name].time(1)
    out = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            wall, cpu = cases[name].time(number)
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
    return out


def timing_report(times: Dict[str, dict], baseline: str) -> dict:
    """Summaries of every case and its ratios against ``baseline`` (wall and CPU time)."""
    report = {}
    for name, t in times.items():
        entry = {"wall_s": summarise(t["wall"]), "cpu_s": summarise(t["cpu"])}
        if name != baseline:
            entry["ratio_vs_" + baseline] = {
                "wall": ratio(t["wall"], times[baseline]["wall"]),
                "cpu": ratio(t["cpu"], times[baseline]["cpu"]),
            }
        report[name] = entry
    return report


def relative_difference(a: float, b: float) -> float:
    """``|a - b| / max(|a|, |b|)`` (0 when both are 0)."""
    a, b = float(a), float(b)
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


def tune_malloc() -> dict:
    """Keep freed memory in glibc's heap instead of returning it to the kernel (``mallopt``).

    By default glibc serves large blocks with ``mmap`` and returns them on ``free``, so every large tensor
    of every step is faulted in, page by page, again. This sets the mmap threshold to its maximum (32 MiB),
    the trim threshold to 1 GiB and the top pad to 64 MiB, the same as exporting ``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_TOP_PAD_`` before starting Python. Returns what was set.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or platform.system() != "Linux":
        return {"applied": False, "reason": "not a glibc system"}
    libc = ctypes.CDLL(name)
    settings = {
        "M_TRIM_THRESHOLD": (-1, 1 << 30),
        "M_TOP_PAD": (-2, 64 << 20),
        "M_MMAP_THRESHOLD": (-3, 32 << 20),
    }
    done = {key: bool(libc.mallopt(code, value)) and value for key, (code, value) in settings.items()}
    return {"applied": all(done.values()), **done}


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments common to every script."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke run in seconds")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default: per script)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--output", default=None, help="also write the JSON to this file")
    p.add_argument(
        "--tune-malloc",
        action="store_true",
        help="keep freed memory in glibc's heap (mallopt) instead of re-faulting it every step",
    )
    return p


def setup(args) -> dict:
    """Apply the common arguments; returns what ``--tune-malloc`` set (or ``{"applied": False}``)."""
    if args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")
    torch.set_num_threads(args.threads)
    return tune_malloc() if args.tune_malloc else {"applied": False}


def emit(result: dict, output: Optional[str] = None) -> None:
    """Print ``result`` as JSON (and write it to ``output``); non-finite floats become ``null``."""
    text = json.dumps(_finite(result), indent=2)
    print(text)
    sys.stdout.flush()
    if output:
        with open(output, "w") as f:
            f.write(text + "\n")


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def rss_bytes() -> int:
    """Current resident set size of this process, from ``/proc/self/statm``."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux ``/proc/self/clear_refs``); ``False`` where
    that is not possible, in which case :func:`peak_rss_bytes` keeps the peak since the process started."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident set size: ``VmHWM`` (``ru_maxrss`` where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stamp() -> dict:
    """When and how long: wall-clock start, for the JSON."""
    return {"unix_time": time.time(), "argv": sys.argv[1:]}


def run_worker(
    script: str, payload: dict, threads: int, tune_malloc: bool = False, timeout: float = 900
) -> dict:
    """Run ``script --worker JSON`` in a fresh Python process and return the JSON it prints last.

    A fresh process per measurement keeps memory high-water marks and allocator state independent.
    """
    import subprocess

    cmd = [sys.executable, script, "--threads", str(threads), "--worker", json.dumps(payload)]
    if tune_malloc:
        cmd.append("--tune-malloc")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"worker {payload} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_probe(fn: Callable[[], object]) -> dict:
    """Peak resident memory of ``fn()`` above the resident memory just before it (bytes).

    The high-water mark is reset first where the kernel allows it (``reset_ok``); otherwise the peak is
    the process's peak so far, which is still an upper bound on what ``fn`` needed on top of ``before``.
    """
    import gc

    gc.collect()
    before = rss_bytes()
    reset_ok = reset_peak_rss()
    fn()
    peak = peak_rss_bytes()
    return {"rss_before": before, "peak": peak, "peak_increase": peak - before, "reset_ok": reset_ok}
