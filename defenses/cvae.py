"""The c-VAE decomposition classifier of Yao et al. 2019 ("Image decomposition and classification
through a generative model"), section 3.

**Model** (section 3.1, Fig. 1). One encoder ``z = Enc(x)`` whose latent ``z in R^p`` is split into
``n`` segments ``z_i in R^{p/n}``, one decoder per component, and the generated image

    x^f(z, y) = sum_i y_i Dec_i(z_i)                                                    (section 3.1)

with a binary component vector ``y``. Training minimises eq. (1),
``||x^f(z, y) - x||^2 + C sum_i y_i KL(z_i)`` with the reparameterised ``z ~ Q(z | x)`` and the
true ``y``, by Adam at learning rate 1e-3 (the paper's setting; C = 1 here, the paper gives no value).
On a single-label data set (Fashion-MNIST, MNIST) ``y`` is the one-hot class: a conditional VAE
with a shared encoder and one decoder per class.

**Classification** (section 3.2). Eq. (3): jointly optimise ``z`` and relaxed labels
``y in [0, 1]^n`` (Adam, ``y`` clipped to [0, 1] after every step) on

    F(z, y, x) = ||Sig(x^f(z, y)) - Sig(x)||^2 + c ||y||_1,   Sig(t) = sigmoid(beta t + b)   (eq. 3)

starting from the encoder's mean and ``y = y_init``. Then the logic flow of section 3.2:

1. *noise*: if the reconstruction term of F at the optimum exceeds ``l``, the input is rejected
   (``abstain``);
2. threshold ``y*``: components below ``y_l`` are off, above ``y_u`` on;
3. enumerate every binary completion of the undecided components (at most ``max_undecided`` of
   them, those nearest 0.5; the rest are rounded) into the candidate set Y, refine
   ``z^dagger(y) = argmin_z f(z, y, x)`` with ``f = ||x^f - x||^2`` (eq. 2) for every candidate,
   batched over samples x candidates, and answer ``argmin_y f(z^dagger(y), y, x)``.

On a single-label data set the candidate set holds the one-hot vectors of the components not
switched off (``y*_k >= y_l``; all of them if none is left): the refinement of ``e_k`` only moves
``z_k``, so all K refinements run as one batch (K decoders per sample, like ABS). ``predict``
returns ``-f_k`` of every candidate class and, for the excluded classes, a score below every
candidate's, so the argmax is the logic flow's answer. ``y_u`` plays no role there (a class above it
is a candidate like any other not switched off).

**Attack gradient**: the envelope gradient with ``z*`` (after refinement) and ``y*`` held fixed,
``d score_k / dx = 2 (Dec_k(z_k^dagger) - x)``, declared with :func:`defenses.base.straight_through`.

``beta``, ``b``, ``l``, ``y_l``, ``c`` are chosen on the validation split at the end of training
(:meth:`CVAE.select_hyperparameters`, a small grid; section 3.2 "determined based on a validation
set") and stored in the model card, which :meth:`CVAE.load_card` applies.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from defenses.base import Defense, straight_through
from defenses.networks import ConvSpec, Decoder, Encoder, Layout
from defenses.registry import register
from benchcore.errors import BenchUserError, CheckpointError

_C = ConvSpec
#: per input size: encoder convolutions and per-component decoder (the Table 2.1 MNIST layout for
#: 28 x 28; smaller stride-2 stacks for the 36 x 36 overlays and the 64 x 64 traffic signs)
_NETS = {
    28: ((_C(16, 5, 2, 2), _C(32, 5, 2, 2), _C(64, 5, 2, 2), _C(64, 4, 1, 1)),
         (_C(32, 4, 1, 0), _C(32, 5, 2, 0), _C(16, 5, 2, 0), _C(8, 4, 1, 0), _C(1, 1, 1, 0))),
    36: ((_C(16, 5, 2, 2), _C(32, 5, 2, 2), _C(64, 5, 2, 2), _C(64, 5, 1, 0)),
         (_C(32, 9, 1, 0), _C(32, 4, 2, 1), _C(16, 4, 2, 1), _C(1, 1, 1, 0))),
    64: ((_C(16, 5, 2, 2), _C(32, 5, 2, 2), _C(64, 5, 2, 2), _C(64, 8, 1, 0)),
         (_C(32, 4, 1, 0), _C(32, 4, 2, 1), _C(16, 4, 2, 1), _C(16, 4, 2, 1), _C(8, 4, 2, 1), _C(1, 1, 1, 0))),
}
#: latent size per component (p / n)
SEGMENT = 8


@dataclass(frozen=True)
class DecompositionConfig:
    """Inference of section 3.2 (eq. 3 and the logic flow). Defaults are replaced by the values the
    model card records (chosen on the validation split)."""

    steps: int = 25  # Adam steps on eq. (3) (a CPU budget; the paper gives none)
    lr: float = 0.05
    refine_steps: int = 10  # Adam steps of z^dagger(y) per candidate (eq. 2)
    refine_lr: float = 0.05
    c: float = 1.0  # weight of ||y||_1 in eq. (3)
    beta: float = 5.0  # Sig(t) = sigmoid(beta t + b)
    b: float = -2.5
    y_init: float = 0.5
    y_lower: float = 0.2  # y_l
    y_upper: float = 0.8  # y_u
    noise_threshold: float | None = None  # l: reject when the reconstruction term of F exceeds it
    max_undecided: int = 4  # multi-label: at most 2**max_undecided candidates per input

    def __post_init__(self):
        for k in ("steps", "refine_steps", "max_undecided"):
            v = getattr(self, k)
            if isinstance(v, bool) or int(v) != v or v < 0:
                raise BenchUserError(f"cvae {k} must be an integer >= 0, got {v!r}")
        if not 0.0 <= self.y_lower <= self.y_upper <= 1.0:
            raise BenchUserError(f"cvae needs 0 <= y_lower <= y_upper <= 1, got {self.y_lower}, {self.y_upper}")
        for k in ("lr", "refine_lr"):
            if not getattr(self, k) > 0:
                raise BenchUserError(f"cvae {k} must be > 0, got {getattr(self, k)!r}")


def _kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per segment: ``(N, n, L) -> (N, n)``."""
    return 0.5 * (logvar.exp() + mu * mu - 1 - logvar).sum(-1)


@register
class CVAE(Defense):
    """Yao et al. 2019 c-VAE: component decoders gated by relaxed labels, classification by eq. (3) + section 3.2."""

    name = "cvae"
    paper = "Yao, Regan, Yang, Ren 2019: Image decomposition and classification through a generative model (c-VAE, section 3)"
    gradient_policy = "envelope gradient with the optimised z* and y* held fixed, d score_k / dx = 2 (Dec_k(z_k*) - x)"
    datasets = ("mnist", "fmnist")

    def __init__(self, *, num_classes, input_shape, dataset, steps: int | None = None, refine_steps: int | None = None, multilabel: bool = False):
        """``num_classes`` is the number of components ``n`` (the classes of a single-label data set).

        ``multilabel``: ``dataset`` is a multi-label component data set (``bench decompose``, which
        knows the data set, says so); such a model decomposes and refuses ``predict``. Not a user
        option (:meth:`option_names`): ``bench run`` / ``train`` take single-label data only."""
        super().__init__(num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        self.multilabel = bool(multilabel)
        size = self.input_shape[1]
        if size not in _NETS or self.input_shape[1] != self.input_shape[2]:
            raise BenchUserError(f"cvae has networks for square inputs of size {', '.join(map(str, _NETS))}, not {self.input_shape}")
        enc, dec = _NETS[size]
        n = self.num_classes
        self.encoder = Encoder(self.input_shape, Layout(latent=n * SEGMENT, encoder=enc, decoder=dec, discriminator=()))
        self.decoders = nn.ModuleList(Decoder(Layout(latent=SEGMENT, encoder=enc, decoder=dec, discriminator=()), self.input_shape) for _ in range(n))
        overrides = {k: v for k, v in {"steps": steps, "refine_steps": refine_steps}.items() if v is not None}
        self.config = replace(DecompositionConfig(), **overrides)
        self._overrides = overrides
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, reconstruction term of eq. 3) of the last predict

    # -- model ---------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder mean and log-variance, split into segments: ``(N, n, L)`` each."""
        mu, lv = self.encoder(x)
        return mu.view(len(x), self.num_classes, SEGMENT), lv.view(len(x), self.num_classes, SEGMENT)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """All component images ``Dec_i(z_i)``: ``(N, n, L) -> (N, n, C, H, W)``."""
        return torch.stack([d(z[:, i]) for i, d in enumerate(self.decoders)], 1)

    @staticmethod
    def compose(parts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x^f = sum_i y_i Dec_i(z_i)`` for parts ``(N, n, C, H, W)`` and labels ``(N, n)``."""
        return (parts * y[:, :, None, None, None]).sum(1)

    def _sig(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.config.beta * t + self.config.b)

    # -- eq. (3) ---------------------------------------------------------------------------------
    def joint_optimise(self, x: torch.Tensor, *, trace: bool = False) -> dict:
        """Eq. (3): Adam on ``(z, y)``; returns ``z`` ``(B, n, L)``, ``y`` ``(B, n)``, ``recon`` (the
        reconstruction term of F at the end, ``(B,)``) and, with ``trace``, ``y_trace`` ``(steps + 1, B, n)``."""
        cfg = self.config
        x = x.detach()
        with torch.no_grad():
            mu, _ = self.encode(x)
        z = mu.clone().requires_grad_(True)
        y = torch.full((len(x), self.num_classes), float(cfg.y_init), device=x.device, requires_grad=True)
        opt = torch.optim.Adam([z, y], lr=cfg.lr)
        target = self._sig(x)
        ys = [y.detach().clone()] if trace else None
        with torch.enable_grad():
            for _ in range(cfg.steps):
                xf = self.compose(self.decode(z), y)
                loss = (self._sig(xf) - target).flatten(1).pow(2).sum(1) + cfg.c * y.abs().sum(1)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
                with torch.no_grad():
                    y.clamp_(0.0, 1.0)
                if trace:
                    ys.append(y.detach().clone())
        with torch.no_grad():
            xf = self.compose(self.decode(z), y)
            recon = (self._sig(xf) - target).flatten(1).pow(2).sum(1)
        out = {"z": z.detach(), "y": y.detach(), "recon": recon}
        if trace:
            out["y_trace"] = torch.stack(ys)
        return out

    def compose_present(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x^f(z, y)`` for binary ``y``, running each decoder only on the rows where its component is on
        (equal to ``compose(decode(z), y)``; a candidate with 2 of 10 components costs 2 decoder passes)."""
        xf = torch.zeros(len(z), *self.input_shape, device=z.device, dtype=z.dtype)
        for i, d in enumerate(self.decoders):
            rows = torch.nonzero(y[:, i] > 0).flatten()
            if len(rows):
                xf = xf.index_add(0, rows, d(z[rows, i]) * y[rows, i, None, None, None])
        return xf

    def _refine(self, x: torch.Tensor, z0: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z^dagger(y) = argmin_z ||x^f(z, y) - x||^2`` (eq. 2) by Adam from ``z0``, for rows ``(x, z0, y)``
        with binary candidate labels ``y``; returns ``(f, z)`` at the end."""
        cfg = self.config
        z = z0.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=cfg.refine_lr)
        with torch.enable_grad():
            for _ in range(cfg.refine_steps):
                f = (self.compose_present(z, y) - x).flatten(1).pow(2).sum(1)
                if not f.requires_grad:  # only all-zero candidates: nothing to refine
                    break
                opt.zero_grad(set_to_none=True)
                f.sum().backward()
                opt.step()
        with torch.no_grad():
            f = (self.compose_present(z, y) - x).flatten(1).pow(2).sum(1)
        return f, z.detach()

    # -- logic flow, multi-label -----------------------------------------------------------------
    @staticmethod
    def candidate_sets(y: torch.Tensor, y_lower: float, y_upper: float, max_undecided: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Section 3.2: threshold ``y`` ``(B, n)`` at ``y_lower`` / ``y_upper`` and enumerate every
        binary completion of the undecided components.

        Returns candidates ``(R, n)`` float and their sample index ``(R,)``. At most
        ``max_undecided`` components per sample are enumerated (those nearest 0.5); the other
        undecided ones are rounded at 0.5.
        """
        rows, owner = [], []
        for i, yi in enumerate(y.detach().cpu()):
            base = (yi > 0.5).float()
            base[yi < y_lower] = 0.0
            base[yi > y_upper] = 1.0
            undecided = torch.nonzero((yi >= y_lower) & (yi <= y_upper)).flatten()
            if len(undecided) > max_undecided:
                undecided = undecided[(yi[undecided] - 0.5).abs().argsort()[:max_undecided]]
            for bits in itertools.product((0.0, 1.0), repeat=len(undecided)):
                c = base.clone()
                c[undecided] = torch.tensor(bits)
                rows.append(c)
                owner.append(i)
        return torch.stack(rows).to(y.device), torch.tensor(owner, device=y.device)

    def decompose(self, x: torch.Tensor, *, trace: bool = False) -> dict:
        """The full section 3.2 classification of multi-label inputs: eq. (3), noise test, thresholds,
        enumeration and refinement. Returns ``labels`` ``(B, n)`` {0, 1}, ``noise`` ``(B,)`` bool,
        ``y_star`` ``(B, n)``, ``f`` ``(B,)``, ``parts`` ``(B, n, C, H, W)`` (the component images at
        the chosen ``z^dagger``), ``x_f`` ``(B, C, H, W)`` and, with ``trace``, ``y_trace``."""
        cfg = self.config
        x = x.detach()
        j = self.joint_optimise(x, trace=trace)
        cand, owner = self.candidate_sets(j["y"], cfg.y_lower, cfg.y_upper, cfg.max_undecided)
        f, z = self._refine(x[owner], j["z"][owner], cand)
        best = torch.full((len(x),), float("inf"), device=x.device)
        best = best.scatter_reduce(0, owner, f, reduce="amin")
        pick = torch.nonzero(f == best[owner]).flatten()
        chosen = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        chosen[owner[pick].flip(0)] = pick.flip(0)  # first minimiser per sample
        with torch.no_grad():
            parts = self.decode(z[chosen])
        labels = cand[chosen]
        noise = j["recon"] > cfg.noise_threshold if cfg.noise_threshold is not None else torch.zeros(len(x), dtype=torch.bool, device=x.device)
        out = {"labels": labels.long(), "noise": noise, "y_star": j["y"], "recon_star": j["recon"], "f": best,
               "parts": parts, "x_f": self.compose(parts, labels), "candidates": torch.bincount(owner, minlength=len(x))}
        if trace:
            out["y_trace"] = j["y_trace"]
        return out

    # -- single-label K-class classifier ---------------------------------------------------------
    def infer(self, x: torch.Tensor) -> dict:
        """Single-label logic flow: eq. (3), then one-hot candidates of the classes not switched off,
        each refined (one batch over samples x K). Returns ``f`` ``(B, K)``, ``candidate`` ``(B, K)`` bool,
        ``parts`` ``(B, K, C, H, W)`` at ``z^dagger``, ``noise`` ``(B,)``, ``y`` ``(B, K)``, ``recon`` ``(B,)``."""
        cfg = self.config
        x = x.detach()
        j = self.joint_optimise(x)
        cand = j["y"] >= cfg.y_lower
        cand = torch.where(cand.any(1, keepdim=True), cand, torch.ones_like(cand))
        z = j["z"].clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=cfg.refine_lr)
        with torch.enable_grad():  # the refinement of e_k moves z_k only: all K at once
            for _ in range(cfg.refine_steps):
                f = (self.decode(z) - x[:, None]).flatten(2).pow(2).sum(-1)
                opt.zero_grad(set_to_none=True)
                f.sum().backward()
                opt.step()
        with torch.no_grad():
            parts = self.decode(z)
            f = (parts - x[:, None]).flatten(2).pow(2).sum(-1)
        noise = j["recon"] > cfg.noise_threshold if cfg.noise_threshold is not None else torch.zeros(len(x), dtype=torch.bool, device=x.device)
        return {"f": f, "candidate": cand, "parts": parts, "noise": noise, "y": j["y"], "recon": j["recon"]}

    @staticmethod
    def decision_scores(f: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """Scores whose argmax is the logic flow's answer: ``-f_k`` for candidates; excluded classes
        score ``-max(f_k, max_candidates f + 1)``, below every candidate."""
        fmax = torch.where(candidate, f, torch.full_like(f, -float("inf"))).amax(1, keepdim=True)
        return -torch.where(candidate, f, torch.maximum(f, fmax + 1.0))

    def predict(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.multilabel:
            raise BenchUserError(f"cvae on {self.dataset} is multi-label: use decompose(), not predict()")
        out = self.infer(x)
        real = self.decision_scores(out["f"], out["candidate"])
        # envelope gradient: same values, gradient of -||x - Dec_k(z_k*)||^2 with z*, y* fixed
        surrogate = -(x[:, None] - out["parts"]).flatten(2).pow(2).sum(-1)
        surrogate = surrogate + (real - surrogate).detach()
        self._last = (x.detach().clone(), out["recon"])
        return straight_through(real, surrogate)

    def abstain(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Section 3.2 step 1: reject as noise when the reconstruction term of eq. (3) at the optimum exceeds ``l``."""
        if self.config.noise_threshold is None:
            return super().abstain(x, scores)
        if self._last is not None and self._last[0].shape == x.shape and torch.equal(self._last[0], x.detach()):
            recon = self._last[1]  # the predict that produced ``scores``
        else:
            with torch.no_grad():
                recon = self.infer(x)["recon"]
        return recon > self.config.noise_threshold

    # -- harness hooks ---------------------------------------------------------------------------
    def use_smoke_test_budget(self) -> None:
        self.config = replace(self.config, steps=3, refine_steps=2)

    def extra_info(self) -> dict:
        return {"inference": asdict(self.config), "segment": SEGMENT, "components": self.num_classes}

    def load_card(self, card: dict) -> None:
        """Apply the inference hyperparameters chosen on the validation split (card key ``inference``);
        ``--option`` overrides still win."""
        chosen = card.get("inference")
        if chosen is None:
            return
        if not isinstance(chosen, dict):
            raise CheckpointError(f"model card of cvae: 'inference' must be a table, got {type(chosen).__name__}")
        known = set(DecompositionConfig.__dataclass_fields__)
        unknown = set(chosen) - known
        if unknown:
            raise CheckpointError(f"model card of cvae: unknown inference key(s) {', '.join(sorted(unknown))}")
        self.config = replace(DecompositionConfig(**chosen), **self._overrides)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The inference overrides ``steps`` and ``refine_steps`` (``multilabel`` is the caller's, not the user's)."""
        return ("steps", "refine_steps")

    def default_train_config(self, dataset: str) -> dict:
        """Eq. (1) with Adam lr 1e-3 (the paper's); C = 1, batch 128; a CPU budget of epochs; the
        validation grid of :meth:`select_hyperparameters` on ``select_n`` images."""
        return {"optimizer": "adam", "lr": 1e-3, "batch_size": 128, "epochs": 3, "kl_weight": 1.0, "select_n": 200}

    # -- training, eq. (1) -------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator, kl_weight: float) -> torch.Tensor:
        """Eq. (1) on a batch: ``||x^f(z, y) - x||^2 + C sum_i y_i KL(z_i)``, ``z ~ Q(z | x)`` (mean over the batch).

        Only the decoders of present components run (each on the samples that contain it).
        """
        mu, lv = self.encode(x)
        z = mu + (0.5 * lv).exp() * torch.randn(mu.shape, generator=generator).to(mu.device)
        xf = torch.zeros_like(x)
        for i, d in enumerate(self.decoders):
            rows = torch.nonzero(y[:, i] > 0).flatten()
            if len(rows):
                xf = xf.index_add(0, rows, d(z[rows, i]) * y[rows, i, None, None, None])
        rec = (xf - x).flatten(1).pow(2).sum(1)
        return (rec + kl_weight * (y * _kl(mu, lv)).sum(1)).mean()

    def fit(self, train, val, *, config, device, generator, progress=True) -> dict:
        """Eq. (1) by Adam, then :meth:`select_hyperparameters` on the validation split (recorded in the card)."""
        epochs, bs = int(config["epochs"]), int(config["batch_size"])
        self.to(device)
        opt = torch.optim.Adam(self.parameters(), lr=float(config["lr"]))
        x_all, y_all = train.x, self.targets(train.y)
        steps = math.ceil(len(x_all) / bs)
        t0 = time.perf_counter()
        history = []
        bar = tqdm(total=epochs * steps, desc="train cvae", unit="batch", disable=not progress, dynamic_ncols=True)
        for epoch in range(epochs):
            self.train(True)
            perm = torch.randperm(len(x_all), generator=generator)
            tot = 0.0
            for s in range(steps):
                idx = perm[s * bs : (s + 1) * bs]
                loss = self.loss(x_all[idx].to(device), y_all[idx].to(device), generator=generator, kl_weight=float(config["kl_weight"]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += loss.item()
                bar.update(1)
            history.append({"epoch": epoch + 1, "train_loss": tot / steps})
            bar.set_postfix(loss=f"{tot / steps:.2f}")
        bar.close()
        self.train(False)
        metrics = {"epochs": epochs, "history": history, "train_wall_time_s": time.perf_counter() - t0}
        n_sel = int(config.get("select_n", 200))
        if val is not None and len(val.x) and n_sel > 0 and not self.multilabel:
            sel = self.select_hyperparameters(val.x[:n_sel].to(device), val.y[:n_sel].to(device), progress=progress)
            metrics.update(sel)
        return metrics

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """Component vectors ``(N, n)`` float: one-hot of single-label classes, multi-hot labels as they are."""
        if y.dim() == 2:
            return y.float()
        return torch.nn.functional.one_hot(y.long(), self.num_classes).float()

    # -- validation choice of beta, b, c, l, y_l (section 3.2) ---------------------------------------
    #: the grid: (beta, b) pairs of Sig, L1 weights c, lower thresholds y_l; l = a quantile of the clean loss
    GRID_SIG = ((1.0, 0.0), (5.0, -2.5), (10.0, -5.0))
    GRID_C = (0.1, 1.0)
    GRID_Y_LOWER = (0.05, 0.2, 0.4)
    REJECT_QUANTILE = 0.99

    @torch.no_grad()
    def select_hyperparameters(self, x: torch.Tensor, y: torch.Tensor, *, progress: bool = False) -> dict:
        """Grid search on validation images (section 3.2: "All hyper-parameters ... are determined
        based on a validation set"): for every (beta, b) of :data:`GRID_SIG` and c of :data:`GRID_C`
        one inference; every y_l of :data:`GRID_Y_LOWER` is scored from the same run (in the
        single-label flow y_l only masks candidates). The setting with the best accuracy wins (ties:
        first in grid order); ``l`` is the ``REJECT_QUANTILE`` quantile of the clean reconstruction
        term under it (1 % of clean validation images rejected). y_u has no effect on single-label
        data and keeps its default. Returns ``{"inference": chosen config, "selection": table}``."""
        was = self.config
        rows = []
        best = None
        for (beta, b), c in tqdm(list(itertools.product(self.GRID_SIG, self.GRID_C)), desc="select cvae", disable=not progress):
            self.config = replace(was, beta=beta, b=b, c=c, noise_threshold=None)
            out = [self.infer(x[i : i + 100]) for i in range(0, len(x), 100)]
            f = torch.cat([o["f"] for o in out])
            yy = torch.cat([o["y"] for o in out])
            recon = torch.cat([o["recon"] for o in out])
            for yl in self.GRID_Y_LOWER:
                cand = yy >= yl
                cand = torch.where(cand.any(1, keepdim=True), cand, torch.ones_like(cand))
                acc = (self.decision_scores(f, cand).argmax(1) == y).float().mean().item()
                rows.append({"beta": beta, "b": b, "c": c, "y_lower": yl, "val_acc": round(acc, 4)})
                if best is None or acc > best[0]:
                    best = (acc, dict(beta=beta, b=b, c=c, y_lower=yl), recon)
        acc, chosen, recon = best
        l = float(torch.quantile(recon.double(), self.REJECT_QUANTILE))
        self.config = replace(was, **chosen, noise_threshold=l)
        return {"inference": asdict(self.config), "val_acc": acc, "val_acc_kind": f"full inference on val[:{len(x)}] (before the noise threshold)",
                "selection": {"n": len(x), "reject_quantile": self.REJECT_QUANTILE, "grid": rows}}

    #: multi-label threshold pairs (y_l, y_u) tried after (beta, b) and c are chosen
    GRID_THRESHOLDS = ((0.2, 0.8), (0.1, 0.9), (0.35, 0.65))

    @torch.no_grad()
    def select_decomposition(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 50, progress: bool = False,
                             components: torch.Tensor | None = None) -> dict:
        """Validation choice for multi-label data (section 3.2), by exact-set accuracy of
        :meth:`decompose` on ``x`` with component vectors ``y``: first (beta, b) x c over
        :data:`GRID_SIG` x :data:`GRID_C` at the default (y_l, y_u), then (y_l, y_u) over
        :data:`GRID_THRESHOLDS` (two stages to fit a CPU budget); ``l`` is the
        :data:`REJECT_QUANTILE` quantile of the clean reconstruction term. Returns
        ``{"inference": chosen config, "val_exact": accuracy, "selection": table}``. ``components``
        (bool ``(n,)``) restricts the exact-set comparison to those components (e.g. leaving out one
        present in every training image, which carries no information: the ``ts`` circle)."""
        was = replace(self.config, noise_threshold=None)
        keep = torch.ones(self.num_classes, dtype=torch.bool) if components is None else components.bool()
        rows = []

        def run(cfg):
            self.config = cfg
            outs = [self.decompose(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
            labels = torch.cat([o["labels"] for o in outs])
            acc = (labels == y.long())[:, keep].all(1).float().mean().item()
            return acc, torch.cat([o["recon_star"] for o in outs])

        best = None
        for (beta, b), c in tqdm(list(itertools.product(self.GRID_SIG, self.GRID_C)), desc="select sig/c", disable=not progress):
            cfg = replace(was, beta=beta, b=b, c=c)
            acc, recon = run(cfg)
            rows.append({"beta": beta, "b": b, "c": c, "y_lower": cfg.y_lower, "y_upper": cfg.y_upper, "val_exact": round(acc, 4)})
            if best is None or acc > best[0]:
                best = (acc, cfg, recon)
        for yl, yu in self.GRID_THRESHOLDS:
            cfg = replace(best[1], y_lower=yl, y_upper=yu)
            if (yl, yu) == (best[1].y_lower, best[1].y_upper):
                continue
            acc, recon = run(cfg)
            rows.append({"beta": cfg.beta, "b": cfg.b, "c": cfg.c, "y_lower": yl, "y_upper": yu, "val_exact": round(acc, 4)})
            if acc > best[0]:
                best = (acc, cfg, recon)
        acc, cfg, recon = best
        self.config = replace(cfg, noise_threshold=float(torch.quantile(recon.double(), self.REJECT_QUANTILE)))
        return {"inference": asdict(self.config), "val_exact": acc,
                "selection": {"n": len(x), "reject_quantile": self.REJECT_QUANTILE, "components_scored": keep.tolist(), "grid": rows}}
