"""Sweep executors: ``local`` (sequential, in-process) and ``ray`` (tasks on a Ray cluster).

Both take a list of :class:`harness.orchestration.sweep.SweepJob`, run :func:`harness.orchestration.sweep.run_job` on each,
retry a failed job up to ``max_retries`` times, keep going with the other jobs, show a live
progress bar (done / running / failed, ETA) and return ``{job name: error}`` for the jobs that
still failed.
"""

from __future__ import annotations

from tqdm.auto import tqdm


class Progress:
    """A tqdm bar over jobs with running / failed / retried counts in its postfix."""

    def __init__(self, *, total: int, enabled: bool):
        self.bar = tqdm(total=total, desc="sweep", unit="job", disable=not enabled, dynamic_ncols=True)
        self.running = 0
        self.failed = 0
        self.retried = 0

    def update(self, *, done: int = 0, running: int | None = None, failed: int = 0, retried: int = 0) -> None:
        if running is not None:
            self.running = running
        self.failed += failed
        self.retried += retried
        self.bar.set_postfix(running=self.running, failed=self.failed, retried=self.retried, refresh=False)
        self.bar.update(done)

    def close(self) -> None:
        self.bar.close()


def short_error(exc: BaseException) -> str:
    """One line for a job failure report."""
    cause = getattr(exc, "cause", None) or exc  # ray.exceptions.RayTaskError wraps the original
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text[:300]}"
