"""Issue-17 probe: how the c-VAE novel-combination result moves with the inference budget (Adam steps
of eq. (3) and refinement steps of z^dagger(y), eq. (2)), on the shipped `ts` novel checkpoint with
the hyperparameters its card records.

    OMP_NUM_THREADS=1 python docs/experiments/cvae_steps.py --n 100 --budgets 25:10,100:10,100:50

Prints, per budget, the share of 'no left turn' test images decomposed exactly (slash, left arrow,
right arrow; the circle is in every sign), of the seen sign types, and the wall time.
"""

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from harness import datasets
from harness.datasets._synthetic import TS_SIGNS, sign_type
from harness.experiments.decompose import NOVEL_TEST, NOVEL_TRAIN, _cvae, _shuffled, _subset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="test images of each kind")
    p.add_argument("--budgets", default="25:10,100:10,100:50", help="comma-separated STEPS:REFINE_STEPS")
    p.add_argument("--checkpoint-dir", default="checkpoints")
    a = p.parse_args()
    names = list(TS_SIGNS)
    tr, va, te = (datasets.load("ts", s) for s in ("train", "val", "test"))
    train = _subset(tr, np.isin(sign_type(tr.y.numpy()), [names.index(t) for t in NOVEL_TRAIN]))
    t_te = sign_type(te.y.numpy())
    novel = _subset(te, t_te == names.index(NOVEL_TEST))
    seen = _subset(te, np.isin(t_te, [names.index(t) for t in NOVEL_TRAIN]))
    seen = _shuffled(seen, torch.Generator().manual_seed(0))
    from pathlib import Path

    model, card = _cvae("ts", "novel", train, va, epochs=0, seed=0, select_n=0, retrain=False, checkpoint_dir=Path(a.checkpoint_dir),
                        progress=False, log=lambda *_: None)
    base = model.config
    keep = ~(train.y == 1).all(0)
    want = torch.tensor(TS_SIGNS[NOVEL_TEST])
    for budget in a.budgets.split(","):
        steps, refine = (int(v) for v in budget.split(":"))
        model.config = replace(base, steps=steps, refine_steps=refine)
        t0 = time.perf_counter()
        res = {}
        for name, split, truth in (("novel", novel, None), ("seen", seen, None)):
            x, y = split.x[: a.n], split.y[: a.n]
            outs = [model.decompose(x[i : i + 50]) for i in range(0, len(x), 50)]
            labels = torch.cat([o["labels"] for o in outs])
            noise = torch.cat([o["noise"] for o in outs])
            target = want.expand_as(labels) if name == "novel" else y.long()
            res[name] = float(((labels == target)[:, keep].all(1) & ~noise).float().mean())
        print(f"steps {steps} refine {refine}: novel {res['novel']:.3f}, seen {res['seen']:.3f} "
              f"(n={a.n} each, {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
