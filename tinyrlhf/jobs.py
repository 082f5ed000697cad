"""Independent jobs (one reward model, one PPO run) run one after another or in worker processes, with a labelled
progress bar per job running and one counting finished jobs.

On the 2-core machines of the `cpu` profile two single-threaded jobs at once finish about 1.85 times as fast as one
job on both cores (tiny matrices do not parallelise inside torch), while two jobs with the default threads each
oversubscribe the cores and run 4-5 times slower. So a job's torch threads are set explicitly (`threads`), in the
worker through OMP_NUM_THREADS before torch loads and through torch.set_num_threads, and in this process for the
duration of an in-process job; the numbers then depend on the settings, not on how many jobs run at once.

A job function takes (job, report) and returns a JSON-ready record; it catches its own failures. `report(done,
total)` moves its progress bar. Worker processes are spawned (fresh interpreters: no inherited CUDA or OpenMP
state), so job functions must be importable module-level functions.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

log = logging.getLogger(__name__)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_REPORT_QUEUE = None  # a worker's queue of progress messages, set by _init_worker


@contextmanager
def torch_threads(threads: int):
    """Run the block with `threads` torch threads (0: leave them as they are)."""
    import torch

    if not threads:  # not even a set to the same count: another thread may be computing (OverlappedScoring)
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reward_threads(rm_threads: int, rm_device: str, policy_device: str, physical_cores: int | None) -> int:
    """Torch threads for PPO's reward scoring on the CPU (PPOSettings.rm_threads; 0 there: see its comment).
    0 here: leave the threads as they are."""
    if rm_threads or rm_device != "cpu":
        return rm_threads
    if policy_device == "cuda":
        return max(1, (physical_cores or os.cpu_count() or 2) - 1)
    return 0


@contextmanager
def _thread_environment(threads: int):
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    if threads:
        os.environ.update({k: str(threads) for k in THREAD_VARIABLES})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _init_worker(threads: int, reports) -> None:
    global _REPORT_QUEUE
    import torch

    if threads:
        torch.set_num_threads(threads)
    _REPORT_QUEUE = reports


def _call(fn: Callable, job: dict, index: int):
    def report(done: int, total: int) -> None:
        _REPORT_QUEUE.put((index, done, total))

    return fn(job, report)


class _Bars:
    """Labelled progress bars (tqdm.auto: widgets in a notebook, text in a terminal): one per job running at once,
    relabelled as the next job starts ("PPO int4 · seed 1 (12/20)"), plus one bar counting finished jobs when there
    are more jobs than run at once. A cell then holds a few bars, not one per job (JupyterLab folds a cell's outputs
    past 50, and 20 PPO runs would fill it)."""

    def __init__(self, labels: list[str], enabled: bool, overall: str | None = None):
        self.labels, self.enabled, self.overall_label = labels, enabled, overall
        self.bars: list = []  # one per slot
        self.owner: dict[int, int] = {}  # job index -> slot
        self.free: list[int] = []
        self.closed: set[int] = set()
        self.overall = None

    def update(self, index: int, done: int, total: int) -> None:
        if not self.enabled or index in self.closed:
            return
        from tqdm.auto import tqdm

        if self.overall_label and self.overall is None:
            self.overall = tqdm(total=len(self.labels), initial=len(self.closed), desc=self.overall_label,
                                leave=True, dynamic_ncols=True)
        slot = self.owner.get(index)
        if slot is None:
            if self.free:
                slot = self.free.pop(0)
                self.bars[slot].reset(total=total)
                self.bars[slot].set_description_str(self.labels[index], refresh=False)
            else:
                slot = len(self.bars)
                self.bars.append(tqdm(total=total, desc=self.labels[index], leave=True, dynamic_ncols=True))
            self.owner[index] = slot
        bar = self.bars[slot]
        bar.total, bar.n = total, done
        bar.refresh()

    def close(self, index: int) -> None:
        """Job `index` finished (or was skipped): its slot takes the next job."""
        self.closed.add(index)
        slot = self.owner.pop(index, None)
        if slot is not None:
            self.free.append(slot)
        if self.overall is not None:
            self.overall.update(1)

    def finish(self) -> None:
        for bar in [*self.bars, self.overall]:
            if bar is not None:
                bar.close()


def run_jobs(fn: Callable, jobs: list[dict], *, workers: int, threads: int, labels: list[str],
             progress: bool = True, on_result: Callable | None = None, failed: Callable,
             overall: str | None = None) -> list:
    """fn(job, report) for every job, in `workers` processes (in this one when workers is 1); results in job order.
    `on_result(index, result)` runs as each finishes (e.g. to save it); `failed(job, reason)` makes the record of a
    job whose worker died; `overall` labels the bar counting finished jobs (shown when more jobs than workers)."""
    bars = _Bars(labels, progress, overall if len(jobs) > max(workers, 1) else None)
    try:
        if workers <= 1 or len(jobs) <= 1:
            results = []
            for i, job in enumerate(jobs):
                with torch_threads(threads):
                    results.append(fn(job, lambda done, total, i=i: bars.update(i, done, total)))
                bars.close(i)
                if on_result:
                    on_result(i, results[-1])
            return results
        return _in_workers(fn, jobs, workers=workers, threads=threads, bars=bars, on_result=on_result,
                           failed=failed)
    finally:
        bars.finish()


def _in_workers(fn, jobs, *, workers, threads, bars, on_result, failed) -> list:
    context = mp.get_context("spawn")
    reports = context.Queue()
    results: list = [None] * len(jobs)
    with _thread_environment(threads), ProcessPoolExecutor(
            max_workers=min(workers, len(jobs)), mp_context=context, initializer=_init_worker,
            initargs=(threads, reports)) as pool:
        pending = {pool.submit(_call, fn, job, i): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(reports, bars)
            for future in done:
                i = pending.pop(future)
                try:
                    results[i] = future.result()
                except BrokenProcessPool as e:  # a worker died (killed, out of memory): the job failed
                    results[i] = failed(jobs[i], f"the worker process died: {e}")
                bars.close(i)
                if on_result:
                    on_result(i, results[i])
        time.sleep(0.05)
        _drain(reports, bars)
    return results


def _drain(reports, bars) -> None:
    while True:
        try:
            index, done, total = reports.get_nowait()
        except queue.Empty:
            return
        bars.update(index, done, total)
