"""Transfer attack: PGD on a *source* model, candidates verified on the attacked defense.

A check against gradient masking that never uses the defense's declared gradient: white-box PGD on
a plainly differentiable model that decides like the defense, then the harness verifies the
candidates with the defense's real ``predict`` as for every attack (Athalye et al. 2018; Papernot
et al. 2017 for the distilled surrogate).

Parameters (suite ``params``):

``source``
    ``"auto"`` (the default suites): the defense's wrapped base if it has one (``vsmooth-*``,
    ``binary-*``), else the data set's *reference model* (the ``cnn`` checkpoint, when one exists
    for the data set), else a surrogate *distilled* from the defense's own decisions.
    ``"base"``: the wrapped base, or the defense itself when it wraps nothing (the thesis chapter-4
    smoothing suite). ``"reference"``, ``"distill"``: force one of the above. Any other value: a
    registered defense with a checkpoint for the data set.
``steps`` (default 100), ``rel_stepsize`` (default 2.5 / steps): foolbox's PGD with random start.
``method``: ``"pgd"`` (default) or ``"apgd"`` (the default suites: AutoAttack's step-size-free APGD,
    returning each input's highest-loss point); ``loss``: ``"ce"`` or, for APGD, ``"dlr"`` (the
    difference-of-logits ratio, which does not saturate on confident source models).
``distill_samples`` (default 2000), ``distill_epochs`` (default 10): the surrogate is a Table 2.1
    CNN trained (Adam, lr 1e-3, batch 128) on the softmax of the scores the defense gives (mean of
    5 draws) to that many images of the data set's training split (the test split when no training
    files are on disk: the targets are the defense's, not the ground truth) and to a copy of each
    moved by a random perturbation of size eps.

Restarts come from the spec. No EOT: the source is evaluated as it is. Sources are cached per
process. The source actually used is reported to the runner (manifest ``notes``).
"""

from __future__ import annotations

import logging
import weakref

import foolbox as fb
import torch

from harness.attacks.base import Attack
from harness.attacks.foolbox_attacks import pgd  # the harness's PGD (foolbox, random start)
from harness.attacks.registry import register
from harness.errors import BenchUserError

log = logging.getLogger(__name__)

_KNOWN = {"source", "steps", "rel_stepsize", "method", "loss", "distill_samples", "distill_epochs"}
METHODS = ("pgd", "apgd")
LOSSES = ("ce", "dlr")
#: the data set's reference model for ``source = "auto"`` / ``"reference"``
REFERENCE = "cnn"
_SOURCES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def make_config(norm: str, p: dict) -> dict:
    unknown = set(p) - _KNOWN
    if unknown:
        raise BenchUserError(f"transfer: unknown parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_KNOWN))}")
    steps = int(p.get("steps", 100))
    if steps < 1:
        raise BenchUserError(f"transfer: steps must be >= 1, got {steps}")
    samples, epochs = int(p.get("distill_samples", 2000)), int(p.get("distill_epochs", 10))
    if samples < 10 or epochs < 1:
        raise BenchUserError(f"transfer: distill_samples must be >= 10 and distill_epochs >= 1, got {samples} and {epochs}")
    source = str(p.get("source", "base"))
    method, loss = str(p.get("method", "pgd")), str(p.get("loss", "ce"))
    if method not in METHODS:
        raise BenchUserError(f"transfer: method must be one of {', '.join(METHODS)}, got {method!r}")
    if loss not in LOSSES or (method == "pgd" and loss != "ce"):
        raise BenchUserError(f"transfer: loss must be one of {', '.join(LOSSES)} (pgd: ce only), got {loss!r}")
    return {"norm": norm, "source": source, "steps": steps, "rel_stepsize": float(p.get("rel_stepsize", 2.5 / steps)), "method": method,
            "loss": loss, "distill_samples": samples, "distill_epochs": epochs}


def budget(p: dict, restarts: int) -> str:
    steps = int(p.get("steps", 100))
    source = p.get("source", "base")
    how = f"APGD-{str(p.get('loss', 'ce')).upper()} {steps} iterations (highest-loss points)" if p.get("method") == "apgd" else f"PGD {steps} steps"
    src = {
        "base": "the defense's base model (itself if it wraps none)",
        "auto": f"the defense's base, else the reference model ({REFERENCE}), else a surrogate distilled from the defense",
        "reference": f"the reference model ({REFERENCE})",
        "distill": "a surrogate distilled from the defense's decisions",
    }.get(source, f"source model {source}")
    return f"{how} on {src} x {restarts} restarts, transferred (no EOT)"


def _device(defense) -> torch.device:
    return next((t.device for t in defense.parameters()), torch.device("cpu"))


def _wrapped_base(defense):
    """The defense a wrapper wraps (:meth:`defenses.base.Defense.wrapped_base`), None for others and plain modules."""
    from defenses.base import Defense

    base = defense.wrapped_base() if isinstance(defense, Defense) else None
    return base if base is not defense else None


def _load(name: str, defense) -> torch.nn.Module:
    from harness.engine.models import load_defense

    model, _card = load_defense(name, defense.dataset, device=_device(defense), train_if_missing=False, progress=False, announce=lambda *_: None)
    return model


def _has_reference(dataset: str) -> bool:
    from harness.store.checkpoints import find_checkpoint

    return find_checkpoint(REFERENCE, dataset) is not None


def distill(defense, *, samples: int, epochs: int, norm: str = "linf", eps: float = 0.0, seed: int = 0) -> torch.nn.Module:
    """A Table 2.1 CNN trained to reproduce ``defense``'s scores (Hinton et al. 2015 soft targets:
    the softmax of the defense's mean scores) on ``samples`` data-set images and as many copies moved
    by a random perturbation of size ``eps`` in ``norm`` (so the surrogate also learns the decision
    near the data, where the transferred adversarials have to land; Papernot et al. 2017)."""
    from defenses.cnn import build_net
    from harness import datasets
    from harness.errors import DataMissingError
    from harness.engine.verify import mean_scores

    device = _device(defense)
    try:
        split = datasets.load(defense.dataset, "train")
    except DataMissingError:
        split = datasets.load(defense.dataset, "test")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(split.x), generator=gen)[: min(samples, len(split.x))]
    x = split.x[idx]
    if eps > 0:
        u = torch.randn(x.shape, generator=gen)
        u = u.sign() if norm == "linf" else u / u.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        x = torch.cat([x, (x + eps * u).clamp(0, 1)])
    targets = []
    lgen = torch.Generator(device=device).manual_seed(seed + 1)
    with torch.no_grad():
        for i in range(0, len(x), 100):
            targets.append(torch.softmax(mean_scores(defense, x[i : i + 100].to(device), generator=lgen, draws=5).float(), dim=1).cpu())
    t = torch.cat(targets)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        net = build_net("table2.1", defense.input_shape, defense.num_classes, defense.dataset).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            b = order[i : i + 128]
            logp = torch.log_softmax(net(x[b].to(device)), dim=1)
            loss = -(t[b].to(device) * logp).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        agree = float((net(x.to(device)).argmax(1).cpu() == t.argmax(1)).float().mean())
    log.info("transfer: distilled surrogate agrees with %s on %.1f%% of its %d training images", defense.name, 100 * agree, len(x))
    net.agreement = agree  # type: ignore[attr-defined]
    return net


def source_model(defense, name: str, cfg: dict | None = None, *, eps: float = 0.0) -> tuple[torch.nn.Module, str]:
    """The source of ``defense`` for source ``name`` and a description of it (cached per process)."""
    cfg = cfg or make_config("linf", {})
    cache = _SOURCES.setdefault(defense, {})
    key = (name, cfg["distill_samples"], cfg["distill_epochs"], cfg["norm"], eps)
    if key in cache:
        return cache[key]
    base = _wrapped_base(defense)
    if name == "base":
        out = (base, f"the wrapped base {base.name}") if base is not None else (defense, "the defense itself (it wraps no base)")
    elif name == "reference" or (name == "auto" and base is None and _has_reference(defense.dataset)):
        if not _has_reference(defense.dataset):
            raise BenchUserError(f"transfer: no {REFERENCE} checkpoint for {defense.dataset} to use as reference model; run `bench train --defense {REFERENCE} --dataset {defense.dataset}` or use source = \"distill\"")
        out = (_load(REFERENCE, defense), f"the reference model {REFERENCE} of {defense.dataset}")
    elif name == "auto" and base is not None:
        out = (base, f"the wrapped base {base.name}")
    elif name in ("auto", "distill"):
        net = distill(defense, samples=cfg["distill_samples"], epochs=cfg["distill_epochs"], norm=cfg["norm"], eps=eps)
        out = (net, f"a Table 2.1 CNN distilled from the defense's decisions on {cfg['distill_samples']} images and as many randomly "
                    f"perturbed copies ({cfg['distill_epochs']} epochs; agrees on {100 * net.agreement:.1f}% of them)")
    else:
        out = (_load(name, defense), f"the source model {name}")
    cache[key] = out
    return out


def run(cfg: dict, *, defense, x, y, threat, seed, report=None) -> torch.Tensor:
    """One restart: foolbox PGD (random start) against the source of ``defense``, returning the raw candidates."""
    source, what = source_model(defense, cfg["source"], cfg, eps=float(threat.eps))
    if report is not None:
        report.note(f"transfer source: {what}")
    source = source.eval()
    if cfg["method"] == "apgd":
        return _apgd(source, x, y, threat, cfg, seed)
    src = fb.PyTorchModel(source, bounds=threat.bounds, device=x.device)
    attack = pgd(cfg["norm"], {"steps": cfg["steps"], "rel_stepsize": cfg["rel_stepsize"]})
    raw, _clipped, _success = attack(src, x, y, epsilons=threat.eps)
    return raw


def _apgd(source, x, y, threat, cfg: dict, seed: int) -> torch.Tensor:
    """APGD (Croce & Hein 2020; pyautoattack) on the source, returning each input's highest-loss point
    (adversarial on the source or not: a point the source resists may still fool the defense)."""
    if tuple(threat.bounds) != (0.0, 1.0):
        raise BenchUserError(f"transfer with method apgd assumes inputs in [0, 1], the threat model has bounds {threat.bounds}; use method pgd")
    from pyautoattack.autopgd_base import APGDAttack

    with torch.no_grad():
        k = int(source(x[:1]).shape[1])
    loss = cfg["loss"] if k >= 3 else "ce"  # DLR needs three classes
    attack = APGDAttack(source, n_iter=cfg["steps"], norm={"linf": "Linf", "l2": "L2"}[threat.norm], n_restarts=1, eps=float(threat.eps),
                        seed=int(seed % (2**31)), loss=loss, eot_iter=1, rho=0.75, device=x.device)
    return attack.perturb(x, y, best_loss=True).detach()


@register
class Transfer(Attack):
    name, label, cost = "transfer", "Transfer", 40
    uses, library = "transfer", "foolbox"
    description = ("PGD on a source model (the wrapped base, the data set's reference CNN or a surrogate distilled from the defense), "
                   "verified on the defense: a gradient-masking check")

    def configure(self, norm, params):
        return make_config(norm, params)

    def propose(self, config, model, x, y, *, threat, seed, defense, report):
        return run(config, defense=defense, x=x, y=y, threat=threat, seed=seed, report=report)

    def budget(self, spec, *, randomized=None):
        return budget(spec.kwargs, spec.restarts)  # no EOT: the source is evaluated as it is
