"""Per-video work of the synthetic world (rendering, decoding) spread over processes.

Each video of a world is independent (its own random stream, its own file), so rendering and
decoding split by video. The processes are *spawned*, not forked: the demo may already hold
torch's and OpenCV's thread pools, which a forked child must not inherit. As with any spawned
pool, a script that calls this with more than one worker must keep its top-level code under
``if __name__ == "__main__":`` (a spawned child imports the script; the ``vbedge`` command does).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from ..errors import InvalidInputError


def check_workers(workers):
    """``workers`` as a process count: a positive whole number, or None for one per CPU core."""
    if workers is None:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidInputError(f"workers must be a positive whole number or None, got {workers!r}")
    return workers


def bar_map(function, jobs, workers, bar):
    """Yield ``function(job)`` for each job in order, on ``workers`` processes, updating the tqdm ``bar``.

    ``function`` must be a module-level function (it is pickled by name); with one worker, or one
    job, everything runs in this process. An exception in a job is raised here."""
    jobs = list(jobs)
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            result = function(job)
            bar.update(1)
            yield result
        return
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        for result in pool.map(function, jobs):
            bar.update(1)
            yield result
