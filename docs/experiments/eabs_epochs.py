"""Issue-14 probe: how E-ABS's encoder proxy and its full inference move with training epochs.

For each checkpoint directory (holding ``eabs-fmnist.safetensors`` + card), on the first ``--n``
validation images, one thread:

* the encoder proxy ``argmin_k ||x - G_k(mu_E(x))||^2`` (the training card's ``val_acc``),
* the full inference of thesis eq. 2.6 (best of 8000 prior candidates + the encoder's output, 50
  Adam steps on mean and variance, one reparameterised sample per step) scored at one sample of
  ``Q*`` (the thesis, the default) and at its mean (``--option score_at=mean``), one draw each.

    OMP_NUM_THREADS=1 python docs/experiments/eabs_epochs.py --n 300 DIR [DIR ...]
    OMP_NUM_THREADS=1 python docs/experiments/eabs_epochs.py --n 1000 --seeded checkpoints

``--seeded``: the validation images ``bench calibrate`` scores (seeded ids, seed 0) instead of the
first ``n``, so the figures pair with the card's ``val_acc_inference``; the last column is then the
McNemar p-value (exact binomial) of encoder proxy vs one-sample inference on the same images.

Needs the Fashion-MNIST training files (the validation split is 10% of them).
"""

import argparse
import time
from pathlib import Path

import torch

from harness import datasets
from harness.store.checkpoints import load_checkpoint
from harness.engine.models import build_defense
from harness.engine.runner import sample_ids
from scipy.stats import binomtest


def correct(d, x, y, *, batch: int = 100) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            s = d.predict(x[i : i + batch], generator=torch.Generator().manual_seed(i))
            out.append(s.argmax(1) == y[i : i + batch])
    return torch.cat(out)


def proxy_correct(d, x, y) -> torch.Tensor:
    """The encoder proxy per image (what ``encoder_accuracy`` averages)."""
    with torch.no_grad():
        mu, _ = d.encoder(x)
        recon = d.decoder(mu.expand(-1, d.num_classes, -1))
        return (x[:, None] - recon).flatten(2).pow(2).sum(-1).argmin(1) == y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--n", type=int, default=300, help="validation images")
    p.add_argument("--seeded", action="store_true", help="bench calibrate's seeded validation ids instead of the first n")
    a = p.parse_args()
    val = datasets.load("fmnist", "val")
    ids = sample_ids(len(val.x), a.n, 0) if a.seeded else list(range(a.n))
    x, y = val.x[ids], val.y[ids]
    print("| epochs | encoder proxy | inference, one sample of Q* | inference, mean of Q* | s | McNemar p (proxy vs one sample) |")
    print("|---|---|---|---|---|---|")
    for folder in a.dirs:
        row, t0 = [], time.perf_counter()
        for at in ("sample", "mean"):
            d = build_defense("eabs", "fmnist", score_at=at)
            card = load_checkpoint(d.checkpoint_module(), folder / "eabs-fmnist.safetensors")
            card.pop("reject_threshold", None)  # plain argmax accuracy, no abstention
            d.load_card(card)
            d.eval()
            if at == "sample":
                row.append(proxy_correct(d, x, y))
            row.append(correct(d, x, y))
        proxy, one = row[0], row[1]
        b, c = int((proxy & ~one).sum()), int((~proxy & one).sum())
        p = binomtest(b, b + c).pvalue if b + c else 1.0
        print(f"| {card.get('epochs')} | {proxy.float().mean():.1%} | {one.float().mean():.1%} | {row[2].float().mean():.1%} | {time.perf_counter() - t0:.0f} | {p:.3g} ({b} vs {c} discordant) |", flush=True)


if __name__ == "__main__":
    main()
