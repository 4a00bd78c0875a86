"""Issue-14 probe: how E-ABS's encoder proxy and its full inference move with training epochs.

For each checkpoint directory (holding ``eabs-fmnist.safetensors`` + card), on the first ``--n``
validation images, one thread:

* the encoder proxy ``argmin_k ||x - G_k(mu_E(x))||^2`` (the training card's ``val_acc``),
* the full inference of thesis eq. 2.6 (best of 8000 prior candidates + the encoder's output, 50
  Adam steps on mean and variance, one reparameterised sample per step) scored at one sample of
  ``Q*`` (the thesis, the default) and at its mean (``--option score_at=mean``), one draw each.

    OMP_NUM_THREADS=1 python docs/experiments/eabs_epochs.py --n 300 DIR [DIR ...]

Needs the Fashion-MNIST training files (the validation split is 10% of them).
"""

import argparse
import time
from pathlib import Path

import torch

from harness import datasets
from harness.checkpoints import load_checkpoint
from harness.models import build_defense


def accuracy(d, x, y, *, batch: int = 100) -> float:
    ok = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            s = d.predict(x[i : i + batch], generator=torch.Generator().manual_seed(i))
            ok += int((s.argmax(1) == y[i : i + batch]).sum())
    return ok / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--n", type=int, default=300, help="validation images")
    a = p.parse_args()
    val = datasets.load("fmnist", "val")
    x, y = val.x[: a.n], val.y[: a.n]
    print("| epochs | encoder proxy | inference, one sample of Q* | inference, mean of Q* | s |")
    print("|---|---|---|---|---|")
    for folder in a.dirs:
        row, t0 = [], time.perf_counter()
        for at in ("sample", "mean"):
            d = build_defense("eabs", "fmnist", score_at=at)
            card = load_checkpoint(d.checkpoint_module(), folder / "eabs-fmnist.safetensors")
            d.load_card(card)
            d.eval()
            if at == "sample":
                row.append(d.encoder_accuracy(val, device=torch.device("cpu"), limit=a.n))
            row.append(accuracy(d, x, y))
        print(f"| {card.get('epochs')} | {row[0]:.1%} | {row[1]:.1%} | {row[2]:.1%} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
