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
        job; a job it gives a reason for (not None) is left unstarted, neither run nor failed, and the
        run goes on with the next: a shorter job of another attack may still fit in the time left."""
        from collections import Counter

        from harness.orchestration import sweep

        fn = fn or sweep.run_job  # looked up at call time (tests patch it)
        bar = Progress(total=len(jobs), enabled=progress)
        failures: dict[str, str] = {}
        refused: list[tuple[object, str]] = []
        try:
            for job in jobs:
                why = gate(job) if gate is not None else None
                if why is not None:
                    refused.append((job, why))
                    continue
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
        if refused:
            per_attack = Counter(job.attack for job, _ in refused)
            counts = ", ".join(f"{a} {k}" for a, k in per_attack.items())
            log(f"sweep: {len(refused)} job(s) not started ({counts}): {refused[0][1]}; rerun the same command to continue")
        return failures
