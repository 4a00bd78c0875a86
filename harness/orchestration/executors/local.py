"""Sequential, in-process executor (the default)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.orchestration.executors import Progress, short_error


@dataclass(frozen=True)
class LocalExecutor:
    """Runs jobs one after another in this process."""

    def run(self, jobs, *, results_dir: str, max_retries: int, progress: bool = True, log=print, fn=None, gate=None, claim=None, pace=None, landed=None) -> dict[str, str]:
        """Run ``jobs``; return ``{job name: last error}`` for jobs that failed ``1 + max_retries`` times.
        ``gate(job)`` (a time limit, :func:`harness.orchestration.sweep.time_gate`): asked before each
        job; a job it gives a reason for (not None) is left unstarted, neither run nor failed, and the
        run goes on with the next: a shorter job of another attack may still fit in the time left.
        ``claim(job)`` (:func:`harness.orchestration.sweep.job_claim`): asked before each job, returns a
        :class:`harness.store.claims.Claim` held while the job runs, or why another sweep
        process on the same results directory has the job (finished or running there): it is skipped.
        ``pace()`` (:func:`harness.orchestration.sweep.fit_threads`, ``--threads auto``): called before
        each job this process claims, before ``gate`` prices it.
        ``landed(job)`` (:func:`harness.orchestration.sweep.landed_merge`): called after each job that
        finished, once its claim is released (it merges the job's group when that is complete)."""
        from collections import Counter

        from harness.orchestration import sweep

        fn = fn or sweep.run_job  # looked up at call time (tests patch it)
        bar = Progress(total=len(jobs), enabled=progress)
        failures: dict[str, str] = {}
        refused: list[tuple[object, str]] = []
        elsewhere: list[tuple[object, str]] = []
        try:
            for job in jobs:
                held = claim(job) if claim is not None else None
                if isinstance(held, str):
                    elsewhere.append((job, held))
                    bar.update(done=1)
                    continue
                if pace is not None:  # first: the gate prices the job at the threads it will run on
                    pace()
                why = gate(job) if gate is not None else None
                if why is not None:
                    if held is not None:
                        held.release()
                    refused.append((job, why))
                    continue
                try:
                    ok = self._attempts(job, fn, results_dir, max_retries, bar, failures, log)
                finally:
                    if held is not None:
                        held.release()
                if ok and landed is not None:
                    landed(job)
        finally:
            bar.close()
        if elsewhere:
            log(f"sweep: {len(elsewhere)} job(s) left to another sweep process: {elsewhere[0][0].name} {elsewhere[0][1]}")
        if refused:
            per_attack = Counter(job.attack for job, _ in refused)
            counts = ", ".join(f"{a} {k}" for a, k in per_attack.items())
            log(f"sweep: {len(refused)} job(s) not started ({counts}): {refused[0][1]}; rerun the same command to continue")
        return failures

    @staticmethod
    def _attempts(job, fn, results_dir, max_retries, bar, failures, log) -> bool:
        """Run ``job`` up to ``1 + max_retries`` times; record its last error in ``failures``; True when it finished."""
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
                return False
            bar.update(done=1, running=0)
            return True
        return False
