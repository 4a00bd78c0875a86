"""Issue-14 probe: does checkpoint averaging (a "model soup" / SWA over saved snapshots) raise E-ABS's accuracy?

Every argument is one model: a ``+``-joined list of E-ABS safetensors files (same architecture,
here snapshots of one training run and of its continuations) whose floating-point tensors are
averaged uniformly. For each model, on all 6000 validation images, one thread or the ones given:

* the encoder proxy ``argmin_k ||x - G_k(mu_E(x))||^2`` with the averaged BatchNorm statistics,
* the same after recomputing the BatchNorm statistics on the first ``--bn-images`` training images
  (train-mode forward passes of the training step's noisy input, cumulative averages; dropout and
  noise seeded), as SWA prescribes (Izmailov et al. 2018).

The proxy is the cheap screen; a model that wins here still has to win on the full inference
(``bench calibrate``) before it could replace the shipped checkpoint.

    python docs/experiments/eabs_soup.py A.safetensors B.safetensors A.safetensors+B.safetensors

Needs the Fashion-MNIST training files (the validation split is 10% of them).
"""

import argparse
import time

import torch
from safetensors.torch import load_file

from harness import datasets
from harness.engine.models import build_defense


def averaged(paths: list[str]) -> dict:
    states = [load_file(p) for p in paths]
    return {k: (sum(s[k] for s in states) / len(states)) if v.is_floating_point() else states[-1][k] for k, v in states[0].items()}


@torch.no_grad()
def recompute_bn(d, train, *, n: int, sigma: float = 0.2, batch: int = 500) -> None:
    torch.manual_seed(0)  # dropout draws from the global generator
    g = torch.Generator().manual_seed(0)
    for m in d.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all batches
    d.train()
    for i in range(0, n, batch):
        xb = train.x[i : i + batch]
        d._recon_losses(xb, (xb + sigma * torch.randn(xb.shape, generator=g)).clamp(0, 1), g, 1.0)
    d.eval()
    d._cache = None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="safetensors files joined by '+' (one argument = one averaged model)")
    p.add_argument("--bn-images", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    val, train = datasets.load("fmnist", "val"), datasets.load("fmnist", "train")
    print(f"| model (averaged snapshots) | encoder proxy, averaged BN | encoder proxy, BN recomputed | s |  (n = {len(val.x)} validation images)")
    print("|---|---|---|---|")
    for spec in a.models:
        t0 = time.perf_counter()
        d = build_defense("eabs", "fmnist")
        d.load_state_dict(averaged(spec.split("+")))
        d.eval()
        before = d.encoder_accuracy(val, device="cpu", limit=len(val.x))
        recompute_bn(d, train, n=a.bn_images)
        after = d.encoder_accuracy(val, device="cpu", limit=len(val.x))
        print(f"| {spec} | {before:.2%} | {after:.2%} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
