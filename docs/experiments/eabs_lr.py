"""Issue-14 probe: E-ABS validation accuracy of the variational inference (thesis eq. 2.6) for
separate Adam step sizes on the latent mean and on its log-variance, beside the encoder proxy
argmin_k ||x - G_k(E(x))||^2 on the same images.

    OMP_NUM_THREADS=1 python docs/experiments/eabs_lr.py --n 500 --lrs 0.4:0.4,0.05:0.4,0.1:0.4
    OMP_NUM_THREADS=1 python docs/experiments/eabs_lr.py --split test --n 300 --lrs 0.05:0.4 --steps 0,50 --score-at mean

Each entry is MEAN_LR:LOGVAR_LR, run at each of ``--steps`` (default 50); one draw per image (seeded
per block), bf16 decoder inside the steps (the final class losses are fp32). ``--split test`` runs on
the first test images instead of the validation ones. Needs the Fashion-MNIST training files (the
validation split is 10% of them).
"""

import argparse
import time

import torch

from harness import datasets
from harness.engine.models import load_defense


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="validation images (multiple of 100)")
    p.add_argument("--start", type=int, default=0, help="first validation image")
    p.add_argument("--lrs", default="0.4:0.4,0.05:0.4")
    p.add_argument("--draws", type=int, default=1, help="inference draws averaged per image (bench run scores 5)")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--steps", default="50", help="comma-separated inference step counts")
    p.add_argument("--score-at", choices=("sample", "mean"), default="sample")
    a = p.parse_args()
    val = datasets.load("fmnist", a.split)
    x, y = val.x[a.start : a.start + a.n], val.y[a.start : a.start + a.n]
    where = f"{a.split}[{a.start}:{a.start + a.n}]"
    d, _ = load_defense("eabs", "fmnist", device=torch.device("cpu"), train_if_missing=False, options={"precision": a.precision})
    with torch.no_grad():
        ok = 0
        for i in range(0, a.n, 100):
            xb = x[i : i + 100]
            mu, _lv = d.encoder.eval()(xb)
            d._prepare(xb.device)
            rec = d._decode_eval(mu.expand(len(xb), d.num_classes, -1))
            ok += int(((xb[:, None] - rec).flatten(2).pow(2).sum(-1).argmin(1) == y[i : i + 100]).sum())
    print(f"encoder proxy: {ok / a.n:.3f} on {where}", flush=True)
    for entry, steps in ((e, int(s)) for e in a.lrs.split(",") for s in a.steps.split(",")):
        lr, lr_lv = (float(v) for v in entry.split(":"))
        d, _ = load_defense("eabs", "fmnist", device=torch.device("cpu"), train_if_missing=False,
                            options={"precision": a.precision, "lr": lr, "lr_logvar": lr_lv, "steps": steps, "score_at": a.score_at})
        t0 = time.perf_counter()
        ok = 0
        for i in range(0, a.n, 100):
            scores = d.predict_draws(x[i : i + 100], draws=a.draws, generator=torch.Generator().manual_seed(a.start + i)).mean(0)
            ok += int((scores.argmax(1) == y[i : i + 100]).sum())
        print(f"lr {lr} lr_logvar {lr_lv} steps {steps} score at {a.score_at}: {ok / a.n:.3f} on {where} ({a.draws} draw(s), {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
