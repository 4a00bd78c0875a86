"""Ray executor: every job is a ``@ray.remote`` task with the plan's ``num_cpus`` / ``num_gpus`` (fractional GPUs allowed).

Jobs carry names only (defense, dataset, ...); checkpoints and data are resolved on the worker, so
every node needs the package installed and the checkpoints / data sets where ``bench`` finds them
(``$BENCH_CHECKPOINTS``, ``$BENCH_DATA`` or the defaults). Install with ``pip install .[ray]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from harness.errors import BenchUserError
from harness.orchestration.executors import Progress, short_error


@dataclass(frozen=True)
class RayExecutor:
    """Submits jobs to a Ray cluster (``address``: ``auto``, ``HOST:PORT``) or a fresh local instance (None)."""

    address: str | None = None
    num_cpus: int | None = None  # CPUs of a fresh local instance (default: all)

    def _init(self, ray) -> bool:
        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
        else:
            ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
        return True

    def run(self, jobs, *, results_dir: str, max_retries: int, progress: bool = True, log=print, fn=None, landed=None) -> dict[str, str]:
        """Run ``jobs`` as Ray tasks; return ``{job name: last error}`` for jobs that failed ``1 + max_retries`` times.
        ``landed(job)`` (:func:`harness.orchestration.sweep.landed_merge`) is called in the driver after
        each job that finished."""
        try:
            import ray
        except ImportError:
            raise BenchUserError("the ray executor needs Ray: pip install -c constraints.txt '.[ray]'") from None
        from harness.orchestration import sweep

        started = self._init(ray)
        remote = ray.remote(max_retries=0)(fn or sweep.run_job)
        results_dir = os.path.abspath(results_dir)
        bar = Progress(total=len(jobs), enabled=progress)
        failures: dict[str, str] = {}
        attempts: dict[str, int] = {}
        pending: dict = {}

        def submit(job):
            attempts[job.name] = attempts.get(job.name, 0) + 1
            ref = remote.options(num_cpus=job.num_cpus, num_gpus=job.num_gpus, name=job.name).remote(job, results_dir)
            pending[ref] = job

        try:
            for job in jobs:
                submit(job)
            bar.update(running=len(pending))
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    job = pending.pop(ref)
                    try:
                        ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - reported, the sweep goes on
                        err = short_error(exc)
                        if attempts[job.name] <= max_retries:
                            log(f"sweep: job {job.name} failed ({err}); retry {attempts[job.name]}/{max_retries}")
                            bar.update(retried=1)
                            submit(job)
                            continue
                        failures[job.name] = err
                        bar.update(done=1, failed=1)
                    else:
                        bar.update(done=1)
                        if landed is not None:
                            landed(job)
                bar.update(running=len(pending))
        finally:
            bar.close()
            if started:
                ray.shutdown()
        return failures
