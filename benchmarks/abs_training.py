"""E-ABS training-step speed (issue 13), measured in one run on the same weights and batch.

One training step as ``GenerativeClassifier.fit`` runs it (thesis Algorithm 1: noisy input, encoder,
reparameterised latent, the K decoders, loss of eq. 2.3-2.5, Adam step of encoder + decoders, then
the latent discriminator's Adam step), Fashion-MNIST layout, batch 512, on the given thread count
(default: all cores). Prints, from one run:

* ``train-efficiency:`` analytic FLOPs of the step per second / the fp32 matmul throughput
  (2048^3) measured in the same run with the same thread count (the higher of a measurement
  before and one after the timed steps);
* ``epoch-time:`` seconds for one Fashion-MNIST epoch (54 000 images, 106 steps) extrapolated
  from the median timed step;
* ``train-speed-up:`` median reference step / median step. The **reference is today's (pre-issue-13)
  implementation kept in this script**: the step code as it was (:func:`reference_step`) running the
  packed (grouped) modules in their original NCHW layout, on the same device;
* ``max-diff:`` between the two paths after one step from the same weights and the same random
  draws: the loss and every gradient (encoder, decoders; discriminator after its step).

Steps of the two paths are interleaved (reference, new, reference, new, ...) so that load from
other processes hits both alike. On a machine where other processes use the cores, run with
``OMP_WAIT_POLICY=PASSIVE`` (or fewer ``--threads``): the copy-by-copy CPU path runs ~10x more
(shorter) parallel regions than the packed one, and OpenMP's spinning barriers then wait for
descheduled threads (measured, 2 threads, load average ~4.4: 9.5 s a step by default, 1.47 s with
``OMP_WAIT_POLICY=PASSIVE``).

    python benchmarks/abs_training.py [--batch 512] [--repeats 3] [--threads N] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from harness import datasets
from harness.errors import DataMissingError
from harness.engine.models import build_defense
from harness.store.provenance import device_name, resolve_device

FMNIST_TRAIN = 54_000


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device, n=2048, repeats=5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def conv_out(hw, s, transposed):
    return (hw - 1) * s.stride - 2 * s.padding + s.kernel if transposed else (hw + 2 * s.padding - s.kernel) // s.stride + 1


def forward_flops(model) -> dict:
    """Analytic forward FLOPs (2 x MACs) per image of the encoder, one decoder and the discriminator."""
    lay, (c, hw, _) = model.layout, model.input_shape
    enc = 0
    for s in lay.encoder:
        hw2 = conv_out(hw, s, False)
        enc += 2 * c * s.channels * s.kernel**2 * hw2**2
        c, hw = s.channels, hw2
    enc += 2 * 2 * c * hw * hw * lay.latent  # mean and log-variance heads
    dec, c, hw = 2 * lay.latent * lay.decoder[0].channels, lay.decoder[0].channels, 1
    for s in lay.decoder:
        hw2 = conv_out(hw, s, True)
        dec += 2 * c * s.channels * s.kernel**2 * hw * hw  # every input pixel scatters a k x k patch
        c, hw = s.channels, hw2
    dims = (lay.latent, *lay.discriminator, 1)
    disc = sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))
    return {"encoder": enc, "decoder": dec, "discriminator": disc}


def step_flops(model, images: int) -> float:
    """Forward + input gradient + weight gradient ~ 3x forward, for the generator pass and the
    discriminator step (prior + encoded latents). With D (shared encoder) every image is decoded by
    all K decoders; without D (ABS) an image of class k only meets encoder / decoder k."""
    f = forward_flops(model)
    decoders = model.num_classes if model.discriminative else 1
    gen = f["encoder"] + decoders * f["decoder"] + (f["discriminator"] if model.aae else 0)
    disc = 2 * f["discriminator"] if model.aae else 0
    return 3 * images * (gen + disc)


# -- today's implementation (before issue 13), kept verbatim as the reference ------------------
def reference_recon_losses(self, xb, x_in, generator, beta):
    mu, lv = self.encoder(x_in)
    eps = torch.randn(mu.shape, generator=generator).to(mu.device)
    z = mu + (0.5 * lv).exp() * eps
    k = self.num_classes
    zk = z.expand(-1, k, -1) if self.discriminative else z
    recon = self.decoder(zk)
    target = xb[:, None] if xb.dim() == 4 else xb
    cost = (target - recon).flatten(2).pow(2).sum(-1)  # (N, K)
    if self.aae:
        logits = self.discriminator(z)
        reg = beta * F.softplus(-logits)
    else:
        reg = beta * 0.5 * (lv.exp() + mu * mu - 1 - lv).sum(-1)
    return cost, reg, z


def reference_step(self, xb, yb, *, opt, dopt, generator, beta, gamma, sigma):
    device = xb.device
    x_in = (xb + sigma * torch.randn(xb.shape, generator=generator).to(device)).clamp(0, 1) if sigma > 0 else xb
    cost, reg, z = reference_recon_losses(self, xb, x_in, generator, beta)
    if self.discriminative:
        own = cost.gather(1, yb[:, None]).squeeze(1)
        loss = (own + reg.squeeze(-1) + gamma * F.cross_entropy(-cost, yb, reduction="none")).mean()
    else:
        loss = (cost + reg).sum(1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if self.aae:
        prior = torch.randn(z.shape, generator=generator).to(device)
        d_loss = beta * (F.softplus(-self.discriminator(prior)) + F.softplus(self.discriminator(z.detach()))).mean()
        dopt.zero_grad(set_to_none=True)
        d_loss.backward()
        dopt.step()
    return loss.detach()


def as_reference(model):
    """Force today's execution path: packed (grouped) modules, NCHW layout."""
    model.encoder.per_group = False
    model.encoder.channels_last = False
    model.decoder.per_group = False
    return model


# ----------------------------------------------------------------------------------------------
class Runner:
    """A model copy with its optimisers, as ``fit`` builds them."""

    def __init__(self, model, step_fn, config):
        self.model, self.step_fn, self.cfg = model, step_fn, config
        gen_params = list(model.encoder.parameters()) + list(model.decoder.parameters())
        self.opt = torch.optim.Adam(gen_params, lr=float(config["lr"]))
        self.dopt = torch.optim.Adam(model.discriminator.parameters(), lr=float(config["lr"])) if model.aae else None
        model.train()

    def step(self, xb, yb, seed):
        torch.manual_seed(seed)  # dropout
        gen = torch.Generator().manual_seed(seed)
        c = self.cfg
        return self.step_fn(self.model, xb, yb, opt=self.opt, dopt=self.dopt, generator=gen, beta=float(c["beta"]), gamma=float(c["gamma"]), sigma=float(c["noise_sigma"]))


def batch_of(model, n, device):
    try:
        split, which = datasets.load("fmnist", "train"), "train split"
    except DataMissingError:
        split, which = datasets.load("fmnist", "test"), "test split (train split not installed; timing is data-independent)"
    k = model.num_classes
    if model.discriminative:
        return split.x[:n].to(device), split.y[:n].to(device), which
    per = max(1, n // k)
    idx = torch.stack([torch.nonzero(split.y == c).flatten()[:per] for c in range(k)], 1)
    return split.x[idx].to(device), None, which


def bias_before_batchnorm(module: nn.Module) -> set[str]:
    """Names of convolution biases directly followed by a BatchNorm: their exact gradient is 0 (the
    BatchNorm subtracts the batch mean), so both paths hold rounding noise there."""
    out = set()
    for name, m in module.named_modules():
        if isinstance(m, nn.Sequential):
            layers = list(m)
            for i, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
                if isinstance(a, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(b, nn.BatchNorm2d) and a.bias is not None:
                    out.add(f"{name}.{i}.bias" if name else f"{i}.bias")
    return out


def grad_diffs(a: nn.Module, b: nn.Module) -> tuple[float, float, str]:
    """(max |g_a - g_b| / max |g_a| over all gradient tensors, worst per-tensor max |g_a - g_b| /
    max |g_a|, its name); the per-tensor figure skips :func:`bias_before_batchnorm`."""
    ga = {k: p.grad for k, p in a.named_parameters() if p.grad is not None}
    gb = {k: p.grad for k, p in b.named_parameters() if p.grad is not None}
    if ga.keys() != gb.keys():
        raise RuntimeError(f"different parameters received gradients: {sorted(ga.keys() ^ gb.keys())}")
    if not ga:
        return 0.0, 0.0, "-"
    top = max(g.abs().max().item() for g in ga.values())
    glob = max((ga[k] - gb[k]).abs().max().item() for k in ga) / top
    skip = bias_before_batchnorm(a)
    worst, name = 0.0, "-"
    for k in ga:
        if k in skip:
            continue
        r = (ga[k] - gb[k]).abs().max().item() / max(ga[k].abs().max().item(), 1e-30)
        if r > worst:
            worst, name = r, k
    return glob, worst, name


def fp64_report(base, config, xb, yb) -> None:
    """One step of the new path, the reference path and a float64 copy, all without dropout (its
    masks depend on the dtype), from the same weights and noise: distances of both fp32 paths to fp64."""
    from defenses.generative import GenerativeClassifier

    def nodrop(m):
        for d in m.modules():
            if isinstance(d, nn.Dropout):
                d.p = 0.0
        return m

    runs = {"new": Runner(nodrop(copy.deepcopy(base)), GenerativeClassifier.train_step, config),
            "reference": Runner(nodrop(as_reference(copy.deepcopy(base))), reference_step, config),
            "fp64": Runner(nodrop(as_reference(copy.deepcopy(base))).double(), reference_step, config)}
    losses = {k: r.step(xb, yb, 1).item() for k, r in runs.items() if k != "fp64"}
    randn = torch.randn
    try:  # the same float32 draws, promoted
        torch.randn = lambda *args, **kw: randn(*args, **kw).double()
        losses["fp64"] = runs["fp64"].step(xb.double(), yb, 1).item()
    finally:
        torch.randn = randn
    for k in ("new", "reference"):
        parts = []
        for n in ("encoder", "decoder", "discriminator"):
            if hasattr(runs[k].model, n):
                g, w, wn = grad_diffs(getattr(runs["fp64"].model, n), getattr(runs[k].model, n))
                parts.append(f"{n} {g:.1e} (worst tensor {w:.1e})")
        print(f"fp64 check, {k:9s}: loss {abs(losses[k] - losses['fp64']):.2e}; grads vs fp64: {'; '.join(parts)}")
    print(f"fp64 check, new vs reference (no dropout): loss {abs(losses['new'] - losses['reference']):.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--defense", default="eabs")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per path (after one warm-up step each)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-reference", action="store_true", help="time only the new path (no speed-up / max-diff)")
    ap.add_argument("--fp64-check", action="store_true", help="also compare both paths with a float64 step (dropout off in all three): is max-diff rounding?")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    torch.manual_seed(0)
    base = build_defense(a.defense, "fmnist").to(device)
    config = base.default_train_config("fmnist")
    xb, yb, which = batch_of(base, a.batch, device)
    images = xb.shape[0] * (1 if base.discriminative else base.num_classes)
    flops = step_flops(base, images)
    from defenses.generative import GenerativeClassifier

    new = Runner(copy.deepcopy(base), GenerativeClassifier.train_step, config)
    ref = None if a.no_reference else Runner(as_reference(copy.deepcopy(base)), reference_step, config)
    paths = {"new": new} if ref is None else {"reference": ref, "new": new}

    # max-diff: one step from the same weights and the same random draws
    if ref is not None:
        l_ref, l_new = ref.step(xb, yb, 1), new.step(xb, yb, 1)
        sync(device)
        dl = abs(l_ref.item() - l_new.item())
        enc_dec = [(m, getattr(ref.model, n), getattr(new.model, n)) for n in ("encoder", "decoder", "discriminator") if hasattr(new.model, n) for m in [n]]
        diffs = {n: grad_diffs(ra, na) for n, ra, na in enc_dec}
        loss_ref = l_ref.item()

    if a.fp64_check and ref is not None:
        fp64_report(base, config, xb, yb)

    peak0 = matmul_gflops(device)
    times = {k: [] for k in paths}
    for k, r in paths.items():  # warm-up (oneDNN primitive caches, allocator)
        r.step(xb, yb, 2)
    for i in range(a.repeats):
        for k, r in paths.items():
            sync(device)
            t0 = time.perf_counter()
            r.step(xb, yb, 3 + i)
            sync(device)
            times[k].append(time.perf_counter() - t0)
    peak = max(peak0, matmul_gflops(device))

    # information: the other execution path of the new code on this device
    other = copy.deepcopy(new.model)
    flip = not (other.decoder.per_group if other.decoder.per_group is not None else device.type == "cpu")
    other.decoder.per_group = flip
    other.encoder.per_group = flip if other.encoder.groups > 1 else None
    alt = Runner(other, GenerativeClassifier.train_step, config)
    alt.step(xb, yb, 2)
    sync(device)
    t0 = time.perf_counter()
    alt.step(xb, yb, 3)
    sync(device)
    t_alt = time.perf_counter() - t0

    steps = -(-FMNIST_TRAIN // a.batch) if base.discriminative else FMNIST_TRAIN // base.num_classes // (a.batch // base.num_classes)
    med = {k: statistics.median(v) for k, v in times.items()}
    gfs = flops / med["new"] / 1e9
    print(f"device {device_name(device)}, {torch.get_num_threads()} threads; {a.defense} fmnist (Table 2.1 layout), batch {a.batch} ({which}); load average {os.getloadavg()[0]:.2f}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"fp32 matmul peak (2048^3, same run)   : {peak:8.1f} GFLOP/s (before {peak0:.1f})")
    print(f"analytic step cost                    : {flops / 1e9:8.1f} GFLOP ({forward_flops(base)})")
    for k, v in times.items():
        print(f"{k + ' step':38s}: median {med[k]:7.3f} s  min {min(v):7.3f} s  ({', '.join(f'{t:.3f}' for t in v)})  {flops / med[k] / 1e9:6.1f} GFLOP/s")
    print(f"new code, {'per-group' if flip else 'packed'} path forced (info)  : {t_alt:7.3f} s (one step)")
    print(f"train-efficiency: {gfs / peak:.1%} of the fp32 matmul peak ({gfs:.1f} of {peak:.1f} GFLOP/s, {torch.get_num_threads()} threads)")
    print(f"epoch-time: {med['new'] * steps:.0f} s for one Fashion-MNIST epoch ({FMNIST_TRAIN} images, {steps} steps of {med['new']:.3f} s)")
    if ref is not None:
        print(f"train-speed-up: {med['reference'] / med['new']:.2f}x over the pre-issue-13 step kept in this script (packed modules, NCHW; min/min {min(times['reference']) / min(times['new']):.2f}x)")
        parts = "; ".join(f"{n} grads {g:.1e} of the largest (worst tensor {w:.1e}: {wn})" for n, (g, w, wn) in diffs.items())
        print(f"max-diff: loss {dl:.2e} (loss {loss_ref:.2f}); {parts}")


if __name__ == "__main__":
    main()
