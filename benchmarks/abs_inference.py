"""E-ABS inference speed (issue: "Speed"), measured in one run on the same weights and inputs.

Prints, for the Fashion-MNIST E-ABS (default 50 inference steps, 10 classes, 8000+1 candidates):

* efficiency  -- achieved GFLOP/s of the batched inference (FLOPs counted analytically from the
  layer shapes: candidate matching, decoder forward + input-gradient per step, final decode) as a
  fraction of this machine's fp32 matmul throughput measured in the same run (goal >= 40% on CPU);
* speed-up    -- over a per-class reference loop (one ungrouped Table 2.1 decoder per class,
  batched over samples, same weights, same cached candidates, the same random draws) and the max
  absolute difference of the class losses (numerical tolerance); also the loop with decoder weight
  gradients left on, as the original ABS code runs, and (for information) the loop with its
  decoders channels-last, the layout the batched inference uses on a CPU;
* EOT draws -- one EOT-5 inference (on a CPU its draws spread over the torch threads, one Python
  thread each: ``defenses.generative.draws_in_parallel``) against 5 one-draw inferences in turn on
  all the threads (the way the draws ran before stop 66);
* attack overhead -- wall time of one EOT-5 attack-gradient evaluation (envelope gradient,
  eq. 2.9) divided by the time of one EOT-5 inference on the same batch (goal <= 1.10).

    python benchmarks/abs_inference.py [--batch 100] [--steps 50] [--device auto] [--untrained] [--precision fp32|bf16] [--threads N]

The last five lines start with ``efficiency:``, ``speed-up:``, ``max-diff:``, ``eot-draws:`` and ``attack-overhead:``.
``--precision bf16`` times the inference with the decoder in bf16 inside the optimisation steps
(the defense option ``precision=bf16``); its efficiency is still counted against the fp32 matmul
peak (the bf16 peak of the same run is printed too), and the speed-up and max-diff compare it with
the fp32 per-class loop.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import torch
from torch import nn

from harness import datasets
from harness.engine.eot import EOTModel
from harness.engine.models import build_defense, load_defense
from harness.store.provenance import device_name, resolve_device
from defenses.networks import Decoder


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def matmul_gflops(device, n=2048, repeats=5, dtype=torch.float32) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    t, _ = timed(lambda: a @ b, device, repeats)
    return 2 * n**3 / t / 1e9


def decoder_flops(layout, out_shape) -> float:
    """Forward FLOPs (2 x MACs) of one Table 2.1 decoder."""
    flops, c, hw = 2 * layout.latent * layout.decoder[0].channels, layout.decoder[0].channels, 1
    for s in layout.decoder:
        flops += 2 * c * s.channels * s.kernel * s.kernel * hw * hw
        hw = (hw - 1) * s.stride - 2 * s.padding + s.kernel
        c = s.channels
    if (c, hw, hw) != tuple(out_shape):
        raise RuntimeError("layout does not produce the image shape")
    return flops


def inference_flops(model, b: int) -> float:
    """Analytic FLOPs of one batched inference of ``b`` inputs (encoder candidate excluded: < 1%)."""
    k, cfg = model.num_classes, model.inference
    d = int(torch.tensor(model.input_shape).prod())
    f_dec = decoder_flops(model.layout, model.input_shape)
    matching = 2 * b * k * cfg.candidates * d
    per_step = b * k * (2 * f_dec)  # forward + gradient w.r.t. the latent (same cost as forward)
    return matching + cfg.steps * per_step + b * k * f_dec


def split_decoders(model) -> list[nn.Module]:
    """The K grouped decoders as K ordinary Table 2.1 decoders with the same weights (eval mode)."""
    k = model.num_classes
    out = []
    for g in range(k):
        dec = Decoder(model.layout, model.input_shape)
        dec.fc[0].weight.data.copy_(model.decoder.fc.weight[g].T)
        dec.fc[0].bias.data.copy_(model.decoder.fc.bias[g])
        src = [m for m in model.decoder.net if isinstance(m, (nn.ConvTranspose2d, nn.BatchNorm2d))]
        dst = [m for m in dec.net if isinstance(m, (nn.ConvTranspose2d, nn.BatchNorm2d))]
        for s, t in zip(src, dst):
            if isinstance(s, nn.ConvTranspose2d):
                inper = s.in_channels // k
                t.weight.data.copy_(s.weight[g * inper : (g + 1) * inper])
                t.bias.data.copy_(s.bias[g * t.out_channels : (g + 1) * t.out_channels])
            else:
                sl = slice(g * t.num_features, (g + 1) * t.num_features)
                t.weight.data.copy_(s.weight[sl]); t.bias.data.copy_(s.bias[sl])
                t.running_mean.copy_(s.running_mean[sl]); t.running_var.copy_(s.running_var[sl])
        out.append(dec.eval().to(model.decoder.fc.weight.device))
    return out


def reference_loop(model, decoders, x, generator, *, weight_grads: bool, channels_last: bool = False):
    """Per-class loop, batched over samples, replaying the batched code's random draws."""
    cache = model._prepare(x.device)
    b, k, cfg, lat = x.shape[0], model.num_classes, model.inference, model.layout.latent
    for dec in decoders:
        dec.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for p in dec.parameters():
            p.requires_grad_(weight_grads)
    # replay: the batched inference draws one (B, K, L) noise tensor per step plus one at the end
    noise = [torch.randn((b, k, lat), generator=generator, device=x.device) for _ in range(cfg.steps + 1)] if model.variational else None
    flat = x.flatten(1)
    losses = []
    with torch.no_grad():
        mu_e, lv_e = model.encoder(x) if model.variational else (None, None)
    for c in range(k):
        dec = decoders[c]
        with torch.no_grad():
            r = cache["recon"][c]
            cand = (flat * flat).sum(1)[:, None] - 2 * flat @ r.T + cache["recon_sq"][c][None] + cache["reg"][c][None]
            best, idx = cand.min(1)
            mu0, lv0 = cache["z"][idx], torch.zeros(b, lat, device=x.device)
            if model.variational:
                me, le = mu_e[:, 0], lv_e[:, 0]
                rec = (x - dec(me)).flatten(1).pow(2).sum(1)
                enc_loss = rec + model._disc_reg(me[:, None])[:, 0] if model.aae else rec + model._kl(me, le)
                use = (enc_loss < best)[:, None]
                mu0, lv0 = torch.where(use, me, mu0), torch.where(use, le, lv0)
        mu, lv = mu0.clone().requires_grad_(True), lv0.clone().requires_grad_(True)
        opt = torch.optim.Adam([mu, lv] if model.variational else [mu], lr=cfg.lr)

        def loss_at(z):
            rec = (x - dec(z)).flatten(1).pow(2).sum(1)
            if model.aae:
                return rec + model._disc_reg(z[:, None])[:, 0]
            return rec + cfg.beta * model._kl(mu, lv if model.variational else None)

        for t in range(cfg.steps):
            z = mu + (0.5 * lv).exp() * noise[t][:, c] if model.variational else mu
            loss = loss_at(z)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
        with torch.no_grad():
            z = mu + (0.5 * lv).exp() * noise[-1][:, c] if model.variational else mu
            losses.append(loss_at(z))
    return torch.stack(losses, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--defense", default="eabs")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--candidates", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--untrained", action="store_true", help="random weights (timing is weight-independent)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="decoder arithmetic inside the optimisation steps")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    if a.untrained:
        model = build_defense(a.defense, "fmnist").to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        src = "untrained weights"
    else:
        model, card = load_defense(a.defense, "fmnist", device=device, train_if_missing=False)
        src = f"checkpoint {card['sha256'][:12]}"
    model.inference = replace(model.inference, steps=a.steps, candidates=a.candidates, precision=a.precision)
    x = datasets.load("fmnist", "test").x[: a.batch].to(device)
    model._prepare(device)  # candidate reconstructions: once per model, excluded from the timings

    peak = matmul_gflops(device)
    peak_bf16 = matmul_gflops(device, dtype=torch.bfloat16) if a.precision == "bf16" else float("nan")
    gen = lambda: torch.Generator(device=device).manual_seed(0)  # noqa: E731
    t_fast, out = timed(lambda: model.infer(x, generator=gen())["loss"][0], device, a.repeats)
    flops = inference_flops(model, a.batch)
    decs = split_decoders(model)
    t_ref, ref = timed(lambda: reference_loop(model, decs, x, gen(), weight_grads=False), device, a.repeats)
    t_ref_w, _ = timed(lambda: reference_loop(model, decs, x, gen(), weight_grads=True), device, 1)
    t_ref_cl, _ = timed(lambda: reference_loop(model, decs, x, gen(), weight_grads=False, channels_last=True), device, a.repeats)
    ref_gflops = flops / t_ref / 1e9

    eot = EOTModel(model, draws=5, generator=gen())

    def attack_grad():
        xg = x.clone().requires_grad_(True)
        eot(xg)[:, 0].sum().backward()
        return xg.grad

    def five_plain():  # the draws one after another, each on all the torch threads (intra-op)
        with torch.no_grad():
            for _ in range(5):
                model.predict(x, generator=gen())

    def eot_inference():  # the same 5 draws as one EOT call: on a CPU spread over the threads (draws_in_parallel)
        with torch.no_grad():
            return model.predict_draws(x, draws=5, generator=gen())

    t_att, g = timed(attack_grad, device, a.repeats)
    t_plain, _ = timed(five_plain, device, a.repeats)
    t_eot, _ = timed(eot_inference, device, a.repeats)

    print(f"device {device_name(device)}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; {a.defense} fmnist ({src}); batch {a.batch}, {model.inference.steps} steps, "
          f"{model.num_classes} classes, {model.inference.candidates}+{int(model.variational)} candidates")
    print(f"fp32 matmul peak (2048^3, same run)   : {peak:8.1f} GFLOP/s")
    print(f"batched inference                     : {t_fast:8.3f} s  {flops / t_fast / 1e9:8.1f} GFLOP/s  efficiency {flops / t_fast / 1e9 / peak:6.1%}  (goal >= 40%)")
    print(f"per-class reference loop              : {t_ref:8.3f} s  {ref_gflops:8.1f} GFLOP/s  efficiency {ref_gflops / peak:6.1%}")
    print(f"per-class loop, weight grads on       : {t_ref_w:8.3f} s")
    print(f"per-class loop, channels-last         : {t_ref_cl:8.3f} s  {flops / t_ref_cl / 1e9:8.1f} GFLOP/s  efficiency {flops / t_ref_cl / 1e9 / peak:6.1%}  (batched is {t_ref_cl / t_fast:.2f}x faster)")
    print(f"speed-up over per-class loop          : {t_ref / t_fast:8.2f}x  (weight-grad loop: {t_ref_w / t_fast:.2f}x)")
    print(f"max |loss difference| vs loop         : {(out - ref).abs().max().item():.3e}  (losses ~{out.abs().mean().item():.1f})")
    print(f"EOT-5 attack gradient                 : {t_att:8.3f} s; EOT-5 inference {t_eot:.3f} s; grad finite: {bool(torch.isfinite(g).all())}")
    print(f"5 one-draw inferences in turn         : {t_plain:8.3f} s  (EOT-5 inference is {t_plain / t_eot:.2f}x faster)")
    if a.precision == "bf16":
        print(f"bf16 matmul peak (2048^3, same run)   : {peak_bf16:8.1f} GFLOP/s; inference at {flops / t_fast / 1e9 / peak_bf16:6.1%} of it")
    print(f"efficiency: {flops / t_fast / 1e9 / peak:.1%} of the fp32 matmul peak ({flops / t_fast / 1e9:.1f} of {peak:.1f} GFLOP/s; {a.precision} inference; goal >= 40%)")
    print(f"speed-up: {t_ref / t_fast:.2f}x over the per-class fp32 loop ({t_ref_w / t_fast:.2f}x over the loop with weight gradients)")
    print(f"max-diff: {(out - ref).abs().max().item():.3e} max |class loss difference| vs the loop (losses ~{out.abs().mean().item():.1f})")
    print(f"eot-draws: {t_plain / t_eot:.2f}x (5 one-draw inferences in turn on {torch.get_num_threads()} intra-op threads / one EOT-5 inference, draws spread over the threads)")
    print(f"attack-overhead: {t_att / t_eot:.3f} (EOT-5 attack gradient / EOT-5 inference; goal <= 1.10)")


if __name__ == "__main__":
    main()
