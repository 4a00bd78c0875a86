"""Issue-14 probe: how do training epochs or inference settings move E-ABS's robustness?

Runs the E-ABS row's own attack on the first ``--blocks`` blocks of the paper sweep's samples
(``plans/fmnist-eabs-paper.toml``: n = 200, seed 0, batch 25, suite ``paper-generative``) for the
checkpoint in ``DIR`` (``eabs-fmnist.safetensors`` + card), with today's inference settings: the
same pipeline as a sweep job (clean pass, attack, verification with the real ``predict`` at 5
draws), so its records equal the sweep's shard files for the shipped checkpoint. Compare an earlier
checkpoint's robust count with the shipped one's shards on the same samples.

    BENCH_CHECKPOINTS=DIR OMP_NUM_THREADS=1 python docs/experiments/eabs_epochs_robustness.py \
        --blocks 2 --attack pgd --norm linf --out runs/eabs8/pgd-linf.json

``DIR``'s card should hold a reject threshold calibrated with today's inference
(``BENCH_CHECKPOINTS=DIR bench calibrate --defense eabs --dataset fmnist --n 300``); the run warns
otherwise. ``--option KEY=VALUE`` (repeatable, as for ``bench run``) changes an inference setting
instead, e.g. ``--option steps=100`` for twice the shipped 50 inference steps (the thesis: "with more
iterations, the model is more stable and has better accuracy and robustness"). Writes the records
and the summary as JSON to ``--out``.
"""

import argparse
import json
import time
from pathlib import Path

from harness.cli import _option
from harness.engine.runner import RunConfig, attack, clean_pass, prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=2, help="blocks of 25 samples from the start of the sweep's order")
    ap.add_argument("--attack", default="pgd")
    ap.add_argument("--norm", default="linf")
    ap.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE", help="a defense option, e.g. steps=100")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cfg = RunConfig(defense="eabs", dataset="fmnist", norm=a.norm, suite="paper-generative", n=200, seed=0, batch_size=25,
                    attacks=(a.attack,), progress=True, train_if_missing=False, device="cpu",
                    defense_options=tuple(a.option))
    ctx = prepare(cfg, log=print)
    stop = 25 * a.blocks
    t0 = time.perf_counter()
    clean = clean_pass(ctx, 0, stop)
    (job,) = ctx.jobs
    run = attack(ctx, job, clean.records, 0)
    summary = {
        "checkpoint_sha256": ctx.manifest.get("checkpoint_sha256"), "epochs": ctx.card.get("epochs"), "options": dict(a.option),
        "samples": stop, "clean_correct": sum(r["clean_correct"] for r in clean.records),
        "robust": sum(o["correct"] for o in run.outcomes), "attack": job.key, "budget": job.budget,
        "wall_time_s": round(time.perf_counter() - t0, 1), "warnings": ctx.defense.settings_warnings() if hasattr(ctx.defense, "settings_warnings") else [],
    }
    print(json.dumps(summary))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"summary": summary, "records": [r | {"attack": o} for r, o in zip(clean.records, run.outcomes)]}, indent=1))


if __name__ == "__main__":
    main()
