"""Harness overhead: `bench`'s PGD path vs calling foolbox LinfPGD directly, same model and samples.

Measures, in one run and on the same inputs:
  reference  foolbox.attacks.LinfPGD()(PyTorchModel(cnn), x, y, epsilons=eps)
  harness    harness.attacks.run_attack (EOTModel adapter, seeded restart) + harness.engine.verify.verify
Prints both wall times (best of --repeats) and their ratio (goal <= 1.15).

    python benchmarks/harness_overhead.py [--n 200] [--steps 40] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import foolbox as fb
import torch

from harness import datasets
from harness.attacks import run_attack
from harness.engine.eot import EOTModel
from harness.engine.models import load_defense
from harness.store.provenance import device_name, resolve_device
from harness.engine.verify import verify
from threat_models import AttackSpec, default_threat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    device = resolve_device(a.device)
    defense, card = load_defense("cnn", "fmnist", device=device, train_if_missing=False)
    test = datasets.load("fmnist", "test")
    x, y = test.x[: a.n].to(device), test.y[: a.n].to(device)
    threat = default_threat("fmnist", "linf")
    rel = 2.5 / a.steps
    spec = AttackSpec("pgd", (("steps", a.steps), ("rel_stepsize", rel)))

    def reference():
        fmodel = fb.PyTorchModel(defense, bounds=(0, 1), device=device)
        torch.manual_seed(0)
        _, adv, ok = fb.attacks.LinfPGD(steps=a.steps, rel_stepsize=rel)(fmodel, x, y, epsilons=threat.eps)
        return (~ok).float().mean().item()

    def harness():
        model = EOTModel(defense, draws=1)
        cands = run_attack(model, x, y, threat, spec, seed=0)
        v = verify(defense, x, y, cands, threat, generator=None)
        return v.correct.float().mean().item()

    def best(fn):
        times, val = [], None
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            val = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times), val

    reference()  # warm-up
    t_ref, acc_ref = best(reference)
    t_h, acc_h = best(harness)
    print(f"device {device_name(device)}; CNN fmnist (checkpoint {card.get('sha256', '')[:12]}); n={a.n}, PGD-Linf {a.steps} steps, eps={threat.eps}, best of {a.repeats}")
    print(f"foolbox LinfPGD direct : {t_ref:.3f} s   (accuracy of attacked samples by foolbox flags: {acc_ref:.3f})")
    print(f"bench run_attack+verify: {t_h:.3f} s   (verified robust accuracy: {acc_h:.3f})")
    print(f"ratio harness/foolbox  : {t_h / t_ref:.3f}   (goal <= 1.15)")


if __name__ == "__main__":
    main()
