"""Issue-14 probe: which reduced C&W budget keeps the thesis's C&W (5 binary searches x 100 steps)?

C&W L2 at the thesis budget costs about 10x PGD-80 per sample on ABS (77.5 s vs 7.58 s, sweep
shards, one core); on E-ABS (EOT 5, ~12x ABS's PGD time) that is about 50 core-hours for 200
samples, out of reach on a CPU. This script reruns C&W at other budgets (``--variant
BINARY_SEARCHES,STEPS,INITIAL_CONST``) on the clean-correct samples of the first ``--count``
positions of a row (same samples, block seeds and verification as ``bench run``: candidates
projected into the eps-ball and re-scored with the real ``predict``) and compares each sample's
verdict with the row's own C&W record (``--results``; the thesis budget). Optional
``--with-reference`` reruns the row's budget on the same subset too (C&W's early abort watches the
loss summed over the batch, so a smaller batch can differ from the row's 100).

    OMP_NUM_THREADS=1 python docs/experiments/cw_budget.py --defense abs --count 25 \
        --variant 5,20,0.001 --variant 2,50,0.01 --variant 3,100,0.01 --variant 1,100,1 \
        --out docs/experiments/results/cw-budget-abs.json
"""

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from harness.engine.runner import RunConfig, _batch_seed, blocks, clean_pass, prepare, propose
from harness.engine.verify import score
from threat_models import AttackSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--defense", required=True)
    ap.add_argument("--suite", default="paper-generative")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=100, help="the row's batch size (block seeds)")
    ap.add_argument("--count", type=int, default=25, help="the first COUNT positions of the first block")
    ap.add_argument("--variant", action="append", required=True, metavar="BS,STEPS,C0",
                    help="binary_search_steps,steps,initial_const of a reduced budget (repeatable)")
    ap.add_argument("--with-reference", action="store_true", help="also rerun the row's own C&W budget on the subset")
    ap.add_argument("--results", default="results", help="results dir holding the row (merged file or sweep shards)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if not 1 <= a.count <= a.batch_size:
        raise SystemExit(f"--count must be between 1 and --batch-size ({a.batch_size})")
    cfg = RunConfig(defense=a.defense, dataset="fmnist", norm="l2", suite=a.suite, n=a.n, seed=a.seed, batch_size=a.batch_size,
                    attacks=("cw",), progress=False, train_if_missing=False, device="cpu")
    ctx = prepare(cfg, log=print)
    (job,) = ctx.jobs
    threat = job.threat
    (b0, _b1), *_ = blocks(ctx, 0, a.count)
    clean = clean_pass(ctx, 0, a.count).records
    idx = [p for p in range(a.count) if clean[p]["clean_correct"]]
    xb, yb = ctx.x[idx], ctx.y[idx]
    seed = _batch_seed(cfg.seed, job.hash, b0 // a.batch_size)  # the row's seed of block 0

    row = _row_verdicts(Path(a.results), a.defense, a.suite, [ctx.ids[p] for p in idx])
    variants = [tuple(v.split(",")) for v in a.variant]
    specs = [("row", job.spec)] if a.with_reference else []
    for bs_, steps, c0 in variants:
        kw = dict(job.spec.kwargs, binary_search_steps=int(bs_), steps=int(steps), initial_const=float(c0))
        specs.append((f"{bs_}x{steps}@{c0}", AttackSpec("cw", tuple(kw.items()), job.spec.restarts, job.spec.eot, job.spec.seed, job.spec.label)))
    out = {"defense": a.defense, "eps": threat.eps, "row_budget": job.budget, "samples": len(idx), "positions": a.count,
           "indices": [ctx.ids[p] for p in idx], "row_robust": row, "checkpoint_sha256": ctx.manifest.get("checkpoint_sha256"), "variants": {}}
    for name, spec in specs:
        t0 = time.perf_counter()
        (cand,), _ = propose(ctx, replace(job, spec=spec), xb, yb, seed)
        cand = torch.nan_to_num(cand, nan=0.0)
        raw_norm = threat.distance(cand.clamp(*threat.bounds), xb)
        ok, _ = score(ctx.defense, threat.project(cand, xb), yb, generator=torch.Generator().manual_seed(seed ^ 0x5EED), draws=ctx.draws)
        flags = [bool(v) for v in ok]
        res = {"budget": f"{spec.kwargs['binary_search_steps']} x {spec.kwargs['steps']} steps, initial_const {spec.kwargs['initial_const']}",
               "steps_total": spec.kwargs["binary_search_steps"] * spec.kwargs["steps"], "robust": sum(flags), "wall_time_s": round(time.perf_counter() - t0, 1),
               "flags": flags, "median_raw_norm": float(raw_norm.median())}
        if row is not None:
            res["broken_by_row_not_by_this"] = sum(1 for f, r in zip(flags, row) if f and r is False)
            res["broken_by_this_not_by_row"] = sum(1 for f, r in zip(flags, row) if not f and r is True)
        out["variants"][name] = res
        print(json.dumps({"variant": name, **{k: v for k, v in res.items() if k != "flags"}}), flush=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1))
    if row is not None:
        print(json.dumps({"row_robust": sum(1 for r in row if r), "of": len(row)}))


def _row_verdicts(results: Path, defense: str, suite: str, indices: list[int]) -> list[bool | None] | None:
    """The row's C&W verdict per sample index: from the merged result file, else from its sweep shards."""
    recs: dict[int, dict] = {}
    merged = results / "fmnist" / "l2" / f"{defense}.json"
    if merged.is_file():
        recs = {r["index"]: r for r in json.loads(merged.read_text())["records"] if "cw" in r.get("attacks", {})}
    if not recs:
        for f in sorted((results / ".shards" / "fmnist" / "l2" / defense / suite / "cw").glob("shard-*.json")):
            recs.update({r["index"]: r for r in json.loads(f.read_text())["records"] if "cw" in r.get("attacks", {})})
    if not recs:
        return None
    return [bool(recs[i]["attacks"]["cw"]["correct"]) if i in recs else None for i in indices]


if __name__ == "__main__":
    main()
