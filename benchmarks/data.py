"""Rendering, caching and loading the procedural shapes grid (:class:`pyro_decomp.data.Shapes`).

Each step runs in a fresh Python process, so that its memory is its own:

* ``render``: ``Shapes(root=tmp)`` on an empty directory renders all 737,280 images and writes the bit-packed
  cache (377 MB). Reported: wall and CPU time, the process's peak resident memory, and that peak above the
  resident memory just before rendering (torch, numpy and pyro_decomp already imported).
* ``load``: ``Shapes(root=tmp)`` again, now memory-mapping the cache. Reported: the time to construct it,
  the resident memory of the data (resident set after the load minus before it), then the same after
  reading every image once (``images_at`` in batches of 8,192, as uint8), and the time of that pass.

The cache lives in a temporary directory that is removed at the end. ``--quick`` uses a subsampled grid
(every 10th orientation, every 4th position) with a cache file of its own.

Run: ``python benchmarks/data.py``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

QUICK_SUBSAMPLE = {"orientation": 10, "position_x": 4, "position_y": 4}
BATCH = 8192


def worker(payload):
    import torch

    from pyro_decomp.data import Shapes

    kwargs = {"root": payload["root"], "progress": False}
    if payload["quick"]:
        kwargs.update(subsample=QUICK_SUBSAMPLE, cache=True)
    import gc

    gc.collect()
    before = common.rss_bytes()
    common.reset_peak_rss()
    w0, c0 = time.perf_counter(), time.process_time()
    ds = Shapes(**kwargs)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    after = common.rss_bytes()
    out = {
        "images": len(ds),
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "resident_increase_bytes": after - before,
        "peak_rss_bytes": common.peak_rss_bytes(),
        "peak_increase_bytes": common.peak_rss_bytes() - before,
        "cache_file_bytes": Path(ds.cache_path).stat().st_size if ds.cache_path is not None else None,
    }
    if payload["step"] == "load":
        w0 = time.perf_counter()
        total = 0
        for start in range(0, len(ds), BATCH):
            index = torch.arange(start, min(start + BATCH, len(ds)))
            total += int(torch.count_nonzero(ds.images_at(index, dtype=torch.uint8)))
        out["touch_all_wall_s"] = time.perf_counter() - w0
        out["white_pixels"] = total
        gc.collect()
        touched = common.rss_bytes()
        out["rss_after_touch_bytes"] = touched
        out["resident_increase_after_touch_bytes"] = touched - before
        out["peak_increase_during_touch_bytes"] = common.peak_rss_bytes() - before
    print(json.dumps(out))


def main(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--worker", default=None, help=__import__("argparse").SUPPRESS)
    p.add_argument("--root", default=None, help="directory for the temporary cache (default: system temp)")
    args = p.parse_args(argv)
    malloc = common.setup(args)
    if args.worker:
        worker(json.loads(args.worker))
        return
    out = {"benchmark": "data", "machine": common.machine_info(), **common.stamp()}
    out["malloc_tuned"] = malloc
    script = str(Path(__file__).resolve())
    tmp = tempfile.mkdtemp(prefix="pyro_decomp_bench_", dir=args.root)
    try:
        for step in ("render", "load"):
            common.log(step)
            payload = {"root": tmp, "quick": args.quick, "step": step}
            out[step] = common.run_worker(script, payload, args.threads, args.tune_malloc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gib = 2**30
    out["summary"] = {
        "images": out["render"]["images"],
        "render_wall_s": out["render"]["wall_s"],
        "render_cpu_s": out["render"]["cpu_s"],
        "render_peak_rss_GiB": out["render"]["peak_rss_bytes"] / gib,
        "render_peak_increase_GiB": out["render"]["peak_increase_bytes"] / gib,
        "load_wall_s": out["load"]["wall_s"],
        "loaded_resident_GiB": out["load"]["resident_increase_bytes"] / gib,
        "loaded_resident_after_touch_GiB": out["load"]["resident_increase_after_touch_bytes"] / gib,
        "touch_all_wall_s": out["load"]["touch_all_wall_s"],
        "touch_peak_increase_GiB": out["load"]["peak_increase_during_touch_bytes"] / gib,
        "targets": {"render_wall_s": 60.0, "resident_GiB": 0.5},
    }
    common.emit(out, args.output)


if __name__ == "__main__":
    main()
