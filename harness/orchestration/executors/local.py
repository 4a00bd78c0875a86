"""Sequential, in-process executor (the default)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.orchestration.executors import Progress, short_error


@dataclass(frozen=True)
class LocalExecutor:
    """Runs jobs one after another in this process."""

    def run(self, jobs, *, results_dir: str, max_retries: int, progress: bool = True, log=print, fn=None, gate=None) -> dict[str, str]:
        """Run ``jobs``; return ``{job name: last error}`` for jobs that failed ``1 + max_retries`` times.
        ``gate(job)`` (a time limit, :func:`harness.orchestration.sweep.time_gate`): asked before each
        job; a reason (not None) stops the run there, the jobs left unstarted and not failed."""
        from harness.orchestration import sweep

        fn = fn or sweep.run_job  # looked up at call time (tests patch it)
        bar = Progress(total=len(jobs), enabled=progress)
        failures: dict[str, str] = {}
        try:
            for k, job in enumerate(jobs):
                why = gate(job) if gate is not None else None
                if why is not None:
                    log(f"sweep: stopping with {len(jobs) - k} job(s) not started: {why}; rerun the same command to continue")
                    break
                for attempt in range(max_retries + 1):
                    bar.update(running=1)
                    try:
                        fn(job, results_dir)
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:  # noqa: BLE001 - reported, the sweep goes on
                        err = short_error(exc)
                        if attempt < max_retries:
                            log(f"sweep: job {job.name} failed ({err}); retry {attempt + 1}/{max_retries}")
                            bar.update(retried=1)
                            continue
                        failures[job.name] = err
                        bar.update(done=1, failed=1, running=0)
                    else:
                        bar.update(done=1, running=0)
                    break
        finally:
            bar.close()
        return failures
