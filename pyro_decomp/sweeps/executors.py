"""Where the tasks of a sweep run: local processes, SLURM through submitit, or a Dask cluster.

Every executor has one method, ``run(fn, items, done)``: it calls ``fn(item)`` for each item, somewhere, and
``done(i, result)`` in the calling process as each task finishes (in the order they finish). When ``done``
returns true, no further task starts; the tasks already running finish and are reported. A task must be
*idempotent*, safe to start twice and to kill at any moment, because each executor retries (boundedly)
with the means its engine gives and with no queue of our own:

=================  =================================================================================
executor           a task lost (its process killed, its job pre-empted or timed out) ...
=================  =================================================================================
:class:`Local`     ... breaks the ``concurrent.futures`` pool; the unfinished tasks start again in a
                   fresh pool, at most ``retries`` times (the one loop here: a broken
                   ``ProcessPoolExecutor`` cannot take new work).
:class:`Submitit`  ... is requeued by submitit's checkpointing hook (:class:`ResumableTask`), at most
                   ``retries`` times (submitit's ``max_num_timeout``).
:class:`Dask`      ... is rescheduled by the Dask scheduler (``distributed.scheduler.allowed-failures``);
                   a task that raises is tried again ``retries`` times (``Client.submit(retries=)``).
=================  =================================================================================

The local workers die with the process that started them, however it dies (``kill -9`` included): on
Linux through ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, elsewhere through a thread that watches the parent's
pid. Their pipes then close, and multiprocessing's resource tracker exits as well.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Dict, Optional, Sequence

import torch

__all__ = [
    "EXTRAS",
    "Dask",
    "Executor",
    "Local",
    "ResumableTask",
    "Submitit",
    "SweepIncomplete",
    "die_with_parent",
    "require",
]

Done = Callable[[int, Any], Optional[bool]]

#: the optional extra that installs each backend's package
EXTRAS = {"submitit": "sweep-slurm", "dask": "sweep-dask"}

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class SweepIncomplete(RuntimeError):
    """Tasks were interrupted or lost; their runs keep their checkpoints and the same call resumes them."""


def require(module: str):
    """Import a backend's package, or raise an ImportError of one line that names the extra to install."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ImportError(
            f"the {module.split('.')[0]} backend needs {module!r}: "
            f"pip install 'pyro-decomp[{EXTRAS[module.split('.')[0]]}]'"
        ) from None


def _check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class Executor:
    """Where tasks run. ``run(fn, items, done)`` calls ``fn(item)`` for each item somewhere and
    ``done(index, result)`` here as each finishes (a true return stops the rest); ``close()`` releases what
    the executor opened. Used as a context manager, it is closed on exit."""

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- local
def die_with_parent(parent: int) -> None:
    """Make this process die when the process ``parent`` does, in whatever way it dies.

    Linux: the kernel sends SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``); a parent that died
    before the call is caught by comparing ``os.getppid()`` after it. Elsewhere a daemon thread checks the
    parent's pid once a second.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os._exit(1)
        return

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _start_worker(parent: int, threads: int) -> None:
    """A local worker: dies with ``parent``, uses ``threads`` torch threads, and leaves Ctrl-C to the
    trainer (which installs its own handler while it trains): a run being measured finishes."""
    die_with_parent(parent)
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Local(Executor):
    """Tasks in ``workers`` local processes (``spawn``: torch and ``fork`` do not mix), one torch thread
    each by default.

    :param workers: processes at a time.
    :param retries: fresh pools allowed after a worker process dies (killed, out of memory); each time,
        every unfinished task starts again and resumes from its run's checkpoint.
    :param threads: torch threads per worker.
    :param in_process: with ``workers == 1``, run the tasks one after the other in this process instead
        (with this process's torch threads, and no retry).
    :param log: called with a line when a pool is replaced.

    As with any ``spawn`` pool, a script that uses it must do so under ``if __name__ == "__main__":``.
    """

    def __init__(
        self,
        workers: int = 2,
        retries: int = 2,
        threads: int = 1,
        in_process: bool = False,
        log: Optional[Callable[[str], None]] = None,
    ):
        self.workers = _check_count("workers", workers)
        self.retries = _check_count("retries", retries, 0)
        self.threads = _check_count("threads", threads)
        self.in_process = in_process
        self.log = log or (lambda line: None)

    def run(self, fn: Callable, items: Sequence, done: Done) -> None:
        if self.workers == 1 and self.in_process:
            for i, item in enumerate(items):
                if done(i, fn(item)):
                    return
            return
        remaining = dict(enumerate(items))
        for attempt in range(self.retries + 1):
            try:
                self._run_pool(fn, remaining, done)
                return
            except BrokenProcessPool:
                if attempt == self.retries:
                    raise SweepIncomplete(
                        f"a worker process died {attempt + 1} times; {len(remaining)} task(s) unfinished "
                        "(each resumes from its checkpoint when the same command runs again)"
                    ) from None
                self.log(
                    f"a worker process died; {len(remaining)} unfinished task(s) start again in fresh "
                    f"processes (retry {attempt + 1} of {self.retries})"
                )

    def _run_pool(self, fn: Callable, remaining: Dict[int, Any], done: Done) -> None:
        """One pool over the ``remaining`` tasks; a finished task leaves ``remaining`` before ``done``
        sees it."""

        def finish(future) -> bool:
            result = future.result()  # a broken pool raises here
            i = futures[future]
            del remaining[i]
            return bool(done(i, result))

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(self.workers, len(remaining)),
            mp_context=context,
            initializer=_start_worker,
            initargs=(os.getpid(), self.threads),
        ) as pool:
            futures = {pool.submit(fn, item): i for i, item in sorted(remaining.items())}
            pending = set(futures)
            stop = False
            try:
                while pending and not stop:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        stop = finish(future) or stop
            except KeyboardInterrupt:
                _drain(pending, finish)
                raise
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
            if stop:  # no further task starts; the running ones finish and are reported
                _drain(pending, finish)


def _drain(pending, finish) -> None:
    """Cancel the futures not yet started and report those that finish."""
    for future in pending:
        future.cancel()
    for future in pending:
        if not future.cancelled():
            wait([future])
            if future.exception() is None:
                finish(future)


# ---------------------------------------------------------------------------------------------- submitit
class ResumableTask:
    """A task as a submitit job that SLURM may pre-empt or time out: submitit calls :meth:`checkpoint`
    before the job is stopped, and requeues what it returns, the same task with the same argument, which
    resumes from the run's last checkpoint (the task is idempotent)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, item):
        return self.fn(item)

    def checkpoint(self, item):
        helpers = require("submitit.helpers")
        return helpers.DelayedSubmission(ResumableTask(self.fn), item)


class Submitit(Executor):
    """Tasks as a SLURM job array through ``submitit.AutoExecutor``.

    :param folder: submitit's folder of job scripts, logs and pickled results.
    :param partition: the SLURM partition (``--partition``).
    :param timeout_min: the time limit of each job in minutes.
    :param gpus_per_task: GPUs of each job.
    :param cpus_per_task: CPUs of each job.
    :param array_parallelism: jobs of the array running at a time.
    :param retries: requeues after pre-emption or time-out (submitit's ``max_num_timeout``).
    :param cluster: ``"slurm"``, ``"local"`` (local processes, for a check without a cluster) or ``None``
        (submitit's choice: SLURM where ``srun`` is found, else local processes).
    :param parameters: further ``AutoExecutor.update_parameters`` settings (``slurm_account``, ``mem_gb``...).
    """

    def __init__(
        self,
        folder,
        partition: Optional[str] = None,
        timeout_min: Optional[int] = None,
        gpus_per_task: Optional[int] = None,
        cpus_per_task: Optional[int] = None,
        array_parallelism: Optional[int] = None,
        retries: int = 3,
        cluster: Optional[str] = None,
        poll_seconds: float = 10.0,
        **parameters,
    ):
        self.submitit = require("submitit")
        retries = _check_count("retries", retries, 0)
        try:
            self.executor = self.submitit.AutoExecutor(
                folder=str(folder), cluster=cluster, slurm_max_num_timeout=retries
            )
        except RuntimeError as e:  # e.g. no srun: not on a SLURM cluster
            raise ValueError(f"submitit cannot submit to {cluster or 'a cluster'} here: {e}") from None
        settings = dict(
            slurm_partition=partition,
            timeout_min=timeout_min,
            gpus_per_node=gpus_per_task,
            cpus_per_task=cpus_per_task,
            slurm_array_parallelism=array_parallelism,
            **parameters,
        )
        self.executor.update_parameters(**{k: v for k, v in settings.items() if v is not None})
        self.poll_seconds = poll_seconds

    def run(self, fn: Callable, items: Sequence, done: Done) -> None:
        if not items:
            return
        jobs = self.executor.map_array(ResumableTask(fn), list(items))
        index = {job.job_id: i for i, job in enumerate(jobs)}
        stop = False
        for job in self.submitit.helpers.as_completed(jobs, poll_frequency=self.poll_seconds):
            if stop:
                continue
            stop = bool(done(index[job.job_id], job.result()))
            if stop:
                for other in jobs:
                    if not other.done():
                        other.cancel(check=False)


# ---------------------------------------------------------------------------------------------- dask
class Dask(Executor):
    """Tasks on a Dask cluster: ``Client.submit(fn, item, pure=False, retries=retries)``.

    :param scheduler: the scheduler's address (``tcp://host:8786``) or a ``dask.distributed.Client``.
    :param retries: further tries of a task that raises; a task whose worker dies is rescheduled by the
        scheduler (up to its ``allowed-failures``).

    Each worker process should run one task at a time (``dask worker --nthreads 1``): a run holds Pyro's
    parameter store, which is one per process (two tasks in one process wait for each other).
    """

    def __init__(self, scheduler, retries: int = 2):
        self.distributed = require("dask.distributed")
        self.retries = _check_count("retries", retries, 0)
        if isinstance(scheduler, self.distributed.Client):
            self.client, self.own = scheduler, False
        else:
            self.client, self.own = self.distributed.Client(scheduler), True

    def run(self, fn: Callable, items: Sequence, done: Done) -> None:
        futures = [self.client.submit(fn, item, pure=False, retries=self.retries) for item in items]
        index = {future.key: i for i, future in enumerate(futures)}
        for future in self.distributed.as_completed(futures):
            if done(index[future.key], future.result()):
                for other in futures:
                    if not other.done():
                        other.cancel()
                return

    def close(self) -> None:
        """Close the client if this executor opened it."""
        if self.own:
            self.client.close()
