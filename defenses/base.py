"""The Defense contract and the shared gradient helpers.

Every defense is a :class:`torch.nn.Module` whose :meth:`Defense.predict` returns ``(B, K)`` class
scores. The *forward values* of ``predict`` are the defense's real decision (argmax), including any
inference-time optimisation or randomness. The *backward* of ``predict`` is the defense's declared
attack gradient. Where plain autograd would be wrong or useless (thresholding, inference-time
optimisation), a defense declares its gradient with one of the two helpers below instead of writing
its own ``torch.autograd.Function``:

* :func:`straight_through` -- values of one expression, gradient of another (BPDA, Athalye et al.
  2018; the envelope gradient of thesis eq. 2.9 is ``straight_through(real_scores, surrogate)``
  where the surrogate is the reconstruction loss with ``z*`` held fixed).
* :func:`bpda_identity` -- apply a non-differentiable input transform in the forward pass and the
  identity in the backward pass (binarisation, JPEG, quantisation).

Randomness always comes from the ``torch.Generator`` passed to ``predict``; a defense must never
seed or draw from the global RNG.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import torch

ALL_DATASETS = ("mnist", "fmnist", "svhn", "cifar10", "gtsrb", "supertraffic10")


_TRACKERS: list[Counter] = []


@contextlib.contextmanager
def declared_gradients() -> Iterator[Counter]:
    """Count the gradient helpers (``straight_through``, ``bpda_identity``) a ``predict`` call uses.

    The harness reports a declared surrogate gradient as such (:mod:`harness.engine.gradcheck`): finite
    differences of the real decision are expected to disagree with BPDA / straight-through, so the
    trust check then relies on the attacks that use no gradient.
    """
    seen: Counter = Counter()
    _TRACKERS.append(seen)
    try:
        yield seen
    finally:
        _TRACKERS.remove(seen)


def _note(helper: str) -> None:
    for t in _TRACKERS:
        t[helper] += 1


class _StraightThrough(torch.autograd.Function):
    """Forward: the values of ``real``. Backward: the incoming gradient flows to ``surrogate``."""

    @staticmethod
    def forward(ctx, real: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:  # noqa: D401
        if real.shape != surrogate.shape:
            raise ValueError(f"straight_through: real {tuple(real.shape)} and surrogate {tuple(surrogate.shape)} differ in shape")
        return real.detach().clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, grad


def straight_through(real: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Return a tensor with the values of ``real`` and the gradient of ``surrogate``.

    ``real`` may be computed without a graph (e.g. under ``torch.no_grad``); ``surrogate`` must be
    differentiable w.r.t. the input whose gradient the defense declares.
    """
    _note("straight_through")
    return _StraightThrough.apply(real, surrogate)


class _BPDAIdentity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            out = fn(x)
        if out.shape != x.shape:
            raise ValueError("bpda_identity: the transform must preserve the input shape")
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def bpda_identity(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply ``fn`` to ``x`` in the forward pass; pass gradients through unchanged (BPDA identity)."""
    _note("bpda_identity")
    return _BPDAIdentity.apply(x, fn)


@dataclass(frozen=True)
class DefenseInfo:
    """Metadata recorded in every result file."""

    name: str
    paper: str
    gradient_policy: str
    randomized: bool
    datasets: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingServices:
    """What the harness lends a defense's ``fit`` (:meth:`Defense.use_training_services`).

    Defenses sit below the harness and never import it; a recipe that needs the harness's attacks
    or checkpoint store (adversarial training fine-tunes a trained checkpoint and attacks the model
    in every step) gets them here, handed over before ``fit``.
    """

    #: ``run_attack(model, x, y, threat, spec, *, seed) -> list[Tensor]``: the harness's attack
    #: adapters (one unverified candidate batch per restart; :func:`harness.attacks.run_attack`)
    run_attack: Callable[..., list[torch.Tensor]]
    #: ``find_checkpoint(checkpoint_name, dataset) -> Path | None`` on the harness's search path
    find_checkpoint: Callable[[str, str], Any]
    #: ``load_checkpoint(module, path) -> card``: strict load of a checkpoint into ``module``
    load_checkpoint: Callable[[torch.nn.Module, Any], dict]


_CONTRACT_ARGS = ("self", "num_classes", "input_shape", "dataset")


class Defense(torch.nn.Module):
    """Base class of every defense (built-in or plugin).

    Subclasses set the class attributes below, build their modules in ``__init__(*, num_classes,
    input_shape, dataset)`` and implement :meth:`predict`. Trainable defenses also implement
    :meth:`fit`; the harness saves/loads their ``state_dict`` as safetensors.

    Every hook is an instance method (wrappers answer for their base, see :class:`defenses.wrapper.WrapperDefense`),
    except :meth:`option_names`, which the harness asks before it builds an instance. Optional
    capabilities are declared here with a default that means "not supported", never probed with
    ``hasattr``: :meth:`certified_radius` (None), :attr:`supports_rejection` /
    :attr:`reject_threshold` (False / None), :meth:`init_checkpoint_name` (None),
    :meth:`load_external_weights` (None), :meth:`wrapped_base` (None).
    """

    #: registry name, e.g. ``"cnn"``
    name: ClassVar[str] = ""
    #: citation of the method
    paper: ClassVar[str] = ""
    #: one sentence: what the backward of ``predict`` is (goes into every result file)
    gradient_policy: ClassVar[str] = "exact autograd gradient of the scores"
    #: True when ``predict`` draws random numbers (the harness then uses EOT and repeated scoring)
    randomized: ClassVar[bool] = False
    #: datasets the defense supports
    datasets: ClassVar[tuple[str, ...]] = ALL_DATASETS
    #: False for defenses without learned weights (no checkpoint needed)
    trainable: ClassVar[bool] = True
    #: True when the defense can refuse to classify above a calibrated threshold (``bench calibrate``
    #: sets :attr:`reject_threshold` and :meth:`abstain` uses it); False: no reject option
    supports_rejection: ClassVar[bool] = False
    #: the calibrated reject threshold (loaded from the model card by :meth:`load_card`); None = never reject.
    #: Only meaningful when :attr:`supports_rejection`.
    reject_threshold: float | None = None

    def __init__(self, *, num_classes: int, input_shape: tuple[int, int, int], dataset: str):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.dataset = dataset

    # -- the contract -------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Class scores ``(B, K)`` for inputs ``x`` ``(B, C, H, W)`` in [0, 1]."""
        raise NotImplementedError

    def predict_draws(self, x: torch.Tensor, *, draws: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scores ``(draws, B, K)`` of ``draws`` independent evaluations of ``predict``.

        The default stacks the draws into one batch (one large tensor operation). Defenses may
        override it to share work across draws; ``predict`` must equal ``predict_draws(draws=1)[0]``.
        """
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        if draws == 1 or not self.randomized:
            s = self.predict(x, generator=generator)
            return s.unsqueeze(0).expand(draws, *s.shape)
        stacked = x.repeat(draws, *([1] * (x.dim() - 1)))
        return self.predict(stacked, generator=generator).view(draws, x.shape[0], -1)

    def abstain(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Boolean ``(B,)``: True where the defense refuses to classify. Default: never."""
        return torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)

    def fit(self, train, val, *, config: dict, device: torch.device, generator: torch.Generator, progress: bool = True) -> dict:
        """Train in place on ``train`` (a :class:`harness.datasets.Split`); return metrics incl. ``val_acc``."""
        raise NotImplementedError(f"defense {self.name!r} has no training recipe")

    def default_train_config(self, dataset: str) -> dict:
        """The training recipe for ``dataset`` (JSON-serialisable; recorded in the model card)."""
        return {}

    def checkpoint_name(self) -> str:
        """Name of the checkpoint this defense loads (wrappers reuse their base's checkpoint)."""
        return self.name

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The keyword options the constructor takes besides the contract's (``bench run --option KEY=VALUE``).

        Default: the named parameters of ``__init__`` after ``num_classes``, ``input_shape`` and
        ``dataset``, in order. A class method: the harness validates options before it builds the
        defense. Wrappers return their base's options plus their own.
        """
        params = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in params if p.name not in _CONTRACT_ARGS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

    # -- optional capabilities (declared defaults: not supported) ------------------------------
    def certified_radius(self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """A per-sample L2 robustness bound ``(B,)`` (nonnegative; 0 where the prediction is wrong),
        recorded as ``certified_l2`` in L2 evaluations. Default: None (the defense has no bound)."""
        return None

    def init_checkpoint_name(self) -> str | None:
        """The checkpoint ``fit`` starts from (fine-tuning), or None when training starts from scratch.

        The harness refuses ``bench train --resume`` for fine-tuned defenses (each run starts from
        this checkpoint again)."""
        return None

    def load_external_weights(self, *, norm: str | None) -> dict | None:
        """Load weights kept outside bench's checkpoint store and return their card (``sha256``, ``path``, ...).

        Default: None -- the harness loads :meth:`checkpoint_name` from its store into
        :meth:`checkpoint_module`. ``norm`` is the evaluation's threat model (None when the caller
        has none), since such stores may keep one file per threat model."""
        return None

    def wrapped_base(self) -> Defense | None:
        """The defense this one wraps (input transform, smoothing ...), or None. Attacks that
        transfer from the undefended model use it (:mod:`harness.attacks.transfer`)."""
        return None

    def use_training_services(self, services: TrainingServices) -> None:
        """Receive the harness's attacks and checkpoint store before ``fit``. Default: not needed."""

    def load_card(self, card: dict) -> None:
        """Apply settings stored in the checkpoint's model card (e.g. a calibrated threshold). Default: none."""

    def settings_warnings(self) -> list[str]:
        """Readable warnings about the settings the defense runs with (e.g. a card value calibrated
        for other settings); ``bench run`` records them among the result's warnings. Default: none."""
        return []

    def set_threat(self, norm: str, eps: float) -> None:
        """The evaluation's threat model (norm and eps), told to the defense before any prediction.

        Default: ignored. Defenses whose inference depends on the threat model (variational
        smoothing optimises its noise mean inside the attack's ball) adopt it here unless the user
        fixed their own setting through a defense option; what they use is recorded by ``extra_info``.
        """

    def use_smoke_test_budget(self) -> None:
        """Shrink inference-time budgets (optimisation steps, candidates) for fast contract tests."""

    def checkpoint_module(self) -> torch.nn.Module:
        """The module whose state dict is the checkpoint (wrappers return their base)."""
        return self

    def info(self) -> DefenseInfo:
        """Metadata for the result manifest."""
        return DefenseInfo(self.name, self.paper, self.gradient_policy, self.randomized, tuple(self.datasets), self.extra_info())

    def extra_info(self) -> dict[str, Any]:
        """Defense-specific metadata (inference steps, EOT draws, ...)."""
        return {}

    # -- conveniences ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # lets torch/foolbox call the module
        return self.predict(x)

    @torch.no_grad()
    def classify(self, x: torch.Tensor, *, generator: torch.Generator | None = None, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted labels and abstain flags, in batches, without gradients."""
        preds, abst = [], []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            s = self.predict(xb, generator=generator)
            preds.append(s.argmax(1))
            abst.append(self.abstain(xb, s))
        return torch.cat(preds), torch.cat(abst)
