"""Issue-14 probe: E-ABS validation accuracy with the final class loss scored at one sample of Q*
(thesis eq. 2.6, the default) or at its mean, for a few inference step counts.

    OMP_NUM_THREADS=1 python docs/experiments/eabs_score_at.py --n 300 --steps 0,50

Needs the Fashion-MNIST training files (the validation split is 10% of them).
"""

import argparse

import torch

from harness import datasets
from harness.engine.models import load_defense


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300, help="validation images (multiple of 100)")
    p.add_argument("--steps", default="0,50")
    p.add_argument("--precision", default="bf16")
    a = p.parse_args()
    val = datasets.load("fmnist", "val")
    for steps in (int(s) for s in a.steps.split(",")):
        for at in ("sample", "mean"):
            d, _ = load_defense("eabs", "fmnist", device=torch.device("cpu"), train_if_missing=False,
                                options={"precision": a.precision, "steps": steps, "score_at": at})
            ok = sum(int((d.predict(val.x[i:i + 100], generator=torch.Generator().manual_seed(i)).argmax(1) == val.y[i:i + 100]).sum())
                     for i in range(0, a.n, 100))
            print(f"steps {steps} score_at {at}: {ok / a.n:.3f} on val[0:{a.n}]", flush=True)


if __name__ == "__main__":
    main()
