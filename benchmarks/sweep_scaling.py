"""Throughput of the Ray executor with 2 workers vs 1 on independent CPU-bound jobs.

Runs the same 8 jobs (each a fixed amount of 1-thread torch matmul work, no data or checkpoints
needed) through :class:`harness.orchestration.executors.ray_executor.RayExecutor` on a local Ray instance with
``num_cpus=1`` and then ``num_cpus=2`` (each job asks for 1 CPU), and prints both wall times and the
speed-up (goal: >= 1.6x on a 2-core machine that is otherwise idle).

    python benchmarks/sweep_scaling.py [--jobs 8] [--size 384] [--reps 1200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkJob:
    """A stand-in for a SweepJob: same fields the executors use (name, resources)."""

    name: str
    size: int
    reps: int
    num_cpus: float = 1.0
    num_gpus: float = 0.0


def work(job: WorkJob, results_dir: str) -> str:
    """CPU-bound job using one torch thread."""
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(job.size, job.size, generator=g)
    b = a.clone()
    t0 = time.time()
    for _ in range(job.reps):
        b = torch.tanh(a @ b)
    with open(os.path.join(results_dir, f"{job.name}.span"), "w") as fh:
        fh.write(f"{t0} {time.time()}")
    return f"{job.name}: {float(b.sum()):.3f}"


def overlap(results_dir: str) -> float:
    """Average number of jobs running at once (sum of job durations / span from first start to last end)."""
    spans = [tuple(map(float, open(os.path.join(results_dir, f)).read().split())) for f in os.listdir(results_dir) if f.endswith(".span")]
    return sum(b - a for a, b in spans) / (max(b for _, b in spans) - min(a for a, _ in spans))


def timed(num_cpus: int, jobs: list[WorkJob]) -> tuple[float, float]:
    import ray

    from harness.orchestration.executors.ray_executor import RayExecutor

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        ex = RayExecutor()
        with tempfile.TemporaryDirectory() as warm:
            ex.run(jobs[:num_cpus], results_dir=warm, max_retries=0, progress=False, fn=work)  # warm up the workers
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            failures = ex.run(jobs, results_dir=out, max_retries=0, progress=False, fn=work)
            wall = time.perf_counter() - t0
            conc = overlap(out)
    finally:
        ray.shutdown()
    if failures:
        raise SystemExit(f"jobs failed: {failures}")
    return wall, conc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--reps", type=int, default=1200)
    a = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    jobs = [WorkJob(name=f"job{i}", size=a.size, reps=a.reps) for i in range(a.jobs)]
    t1, c1 = timed(1, jobs)
    t2, c2 = timed(2, jobs)
    print(f"{a.jobs} jobs ({a.size}x{a.size} matmul x {a.reps}, 1 torch thread each), cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    print(f"ray, 1 worker : {t1:.2f} s  (jobs running at once, on average: {c1:.2f})")
    print(f"ray, 2 workers: {t2:.2f} s  (jobs running at once, on average: {c2:.2f})")
    print(f"speed-up      : {t1 / t2:.2f}x (goal >= 1.6x)")


if __name__ == "__main__":
    main()
