"""Torch threads over time: what a sweep job or a budget-check block ran on, when ``bench sweep
--threads auto`` changes the count while it runs (:func:`harness.orchestration.sweep.fit_threads`,
fitted every 30 s between the defense's forwards since stop 55).

The deadline gate prices a job or block from the wall time of the latest one, scaled by the threads
it ran on (:func:`harness.engine.saturation.on_threads`). A shard's ``device`` names the threads its
job *started* with; a job that started alone on 2 threads and ran on 1 beside a second process from
its first half minute would be priced as a 2-thread job, at twice its cost. :func:`mean_since` gives
the time-weighted mean instead, which the shard records as ``threads_mean`` (and a check block as its
``sample_threads``).
"""

from __future__ import annotations

import time

import torch

_changes: list[tuple[float, int]] = []  # (time.monotonic(), threads) of each change made by set_threads
_KEEP = 1000


def set_threads(n: int, *, clock=time.monotonic) -> None:
    """``torch.set_num_threads(n)``, remembered with the time it happened."""
    torch.set_num_threads(int(n))
    _changes.append((clock(), int(n)))
    del _changes[:-_KEEP]


def mark(*, clock=time.monotonic) -> tuple[float, int]:
    """Now and this process's threads now: the start of a span for :func:`mean_since`."""
    return clock(), torch.get_num_threads()


def mean_since(start: tuple[float, int], *, clock=time.monotonic) -> float:
    """Time-weighted mean torch threads from ``start`` (:func:`mark`) to now, counting the changes
    :func:`set_threads` made meanwhile (the count at ``start`` for a span of no length)."""
    t0, threads = start
    now = clock()
    if now <= t0:
        return float(threads)
    total, t = 0.0, t0
    for tc, n in _changes:
        if tc <= t0 or tc > now:
            continue
        total += (tc - t) * threads
        t, threads = tc, n
    total += (now - t) * threads
    return total / (now - t0)


def recorded(start: tuple[float, int], *, clock=time.monotonic) -> int | float:
    """:func:`mean_since` as a record stores it: the integer count when it did not change, else the
    mean rounded to 2 decimals."""
    mean = mean_since(start, clock=clock)
    return int(round(mean)) if abs(mean - round(mean)) < 0.005 else round(mean, 2)
