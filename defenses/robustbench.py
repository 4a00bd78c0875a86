"""RobustBench model-zoo entries as defenses: ``--defense robustbench:<Name>``, without the package.

RobustBench (Croce et al. 2021, "RobustBench: a standardized adversarial robustness benchmark",
NeurIPS Datasets and Benchmarks) keeps one checkpoint per entry at
``<model_dir>/<dataset>/<threat model>/<Name>.pt`` (threat model ``Linf`` / ``L2``), a torch file
holding a state dict (possibly under ``"state_dict"``) whose keys may carry ``module.`` / ``model.``
prefixes. This module reads that layout under ``$BENCH_CHECKPOINTS/robustbench/`` (else the user
cache ``~/.cache/bench/checkpoints/robustbench/``) with ``torch.load(weights_only=True)`` -- a file
that needs full unpickling (it could run code) is refused -- or from ``<Name>.safetensors`` next to
it, and builds the network from :data:`ENTRIES`, a small table of entries written from RobustBench's
definitions: architecture (our :mod:`defenses.networks.wide_resnet` / :mod:`defenses.networks.preact_resnet`,
whose parameter names match RobustBench's) and the input normalisation the entry expects.

* A missing file is a one-line error naming the exact path to put it at. ``BENCH_DOWNLOAD=1``
  fetches it from the entry's published source (its Google Drive id, as RobustBench does) with the
  ``gdown`` package when that is installed and the network allows; nothing is fetched otherwise.
* Names outside the table use the optional ``robustbench`` package (``pip install
  'robust-bench-harness[robustbench]'``, typically on a CUDA machine): it is imported lazily and only
  then; where the import fails (here: torchvision's CPU wheel is a CUDA build, robustbench also needs
  ``pkg_resources`` and fra31's ``autoattack`` API) the error names the reason in one line.

The defense is the network's logits; its attack gradient is plain autograd (nothing is declared).
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from defenses.base import Defense
from defenses.registry import register_family
from benchcore.errors import BenchUserError, CheckpointError
from benchcore.io import sha256_file
from benchcore.paths import user_checkpoint_dir

#: our norm -> RobustBench's threat-model folder
THREAT_DIRS = {"linf": "Linf", "l2": "L2"}
#: RobustBench's CIFAR-10 statistics (``Wong2020FastNet``, ``Rice2020OverfittingNet``)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
#: prefixes RobustBench strips from checkpoint keys (``torch.nn.DataParallel`` and wrapper modules)
PREFIXES = ("module.", "model.")
DOWNLOAD_ENV = "BENCH_DOWNLOAD"


@dataclass(frozen=True)
class Entry:
    """One RobustBench model-zoo entry: how to build its network and what its leaderboard JSON says.

    ``arch``: ``"wrn"`` (:class:`~defenses.networks.wide_resnet.WideResNet`, ``arch_kwargs`` depth,
    widen_factor, sub_block1) or ``"preact-resnet18"``. ``mean`` / ``std``: the normalisation the
    network applies inside (None: it takes [0, 1] inputs as they are). ``threat_models``: the
    RobustBench leaderboards (our norm names) that list it; its checkpoint lives in the first one's
    folder when evaluated under a norm it is not listed for. ``info``: fields of its
    ``model_info/<dataset>/<threat model>/<Name>.json`` (link, name, authors, venue,
    additional_data) plus ``reported`` per norm, for ``bench export robustbench``.
    """

    name: str
    dataset: str
    threat_models: tuple[str, ...]
    architecture: str
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    gdrive_id: str | None = None
    paper: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def build(self, num_classes: int) -> nn.Module:
        """The untrained network of this entry (normalisation buffers ``mu`` / ``sigma`` included)."""
        from defenses.networks.preact_resnet import PreActResNet18
        from defenses.networks.wide_resnet import WideResNet

        if self.arch == "wrn":
            return WideResNet(num_classes=num_classes, mean=self.mean, std=self.std, **self.arch_kwargs)
        if self.arch == "preact-resnet18":
            return PreActResNet18(num_classes=num_classes, mean=self.mean, std=self.std, **self.arch_kwargs)
        raise ValueError(f"RobustBench entry {self.name}: unknown architecture {self.arch!r} (known: wrn, preact-resnet18)")


#: Entries written from RobustBench's ``robustbench/model_zoo/cifar10.py`` and ``model_info/cifar10/``.
ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry(
            "Standard", "cifar10", ("linf", "l2"), "WideResNet-28-10", "wrn", {"depth": 28, "widen_factor": 10},
            gdrive_id="1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC",
            paper="RobustBench (Croce et al. 2021): standardly trained WRN-28-10 (Zagoruyko & Komodakis 2016), no adversarial training",
            info={"link": "https://github.com/RobustBench/robustbench/", "name": "Standardly trained model", "authors": "", "venue": "N/A",
                  "additional_data": False, "reported": {"linf": "0.0", "l2": "0.0"}},
        ),
        Entry(
            "Carmon2019Unlabeled", "cifar10", ("linf",), "WideResNet-28-10", "wrn", {"depth": 28, "widen_factor": 10, "sub_block1": True},
            gdrive_id="15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ",
            paper="Carmon et al. 2019, Unlabeled Data Improves Adversarial Robustness (NeurIPS): robust self-training, WRN-28-10",
            info={"link": "https://arxiv.org/abs/1905.13736", "name": "Unlabeled Data Improves Adversarial Robustness",
                  "authors": "Yair Carmon, Aditi Raghunathan, Ludwig Schmidt, Percy Liang, John C. Duchi", "venue": "NeurIPS 2019",
                  "additional_data": True, "reported": {"linf": "62.5"}},
        ),
        Entry(
            "Wong2020Fast", "cifar10", ("linf",), "ResNet-18", "preact-resnet18", {}, mean=CIFAR10_MEAN, std=CIFAR10_STD,
            gdrive_id="1Re--_lf3jCEw9bnQqGkjw3J7v2tSZKrv",
            paper="Wong, Rice & Kolter 2020, Fast is better than free: Revisiting adversarial training (ICLR): FGSM training, PreAct ResNet-18",
            info={"link": "https://arxiv.org/abs/2001.03994", "name": "Fast is better than free: Revisiting adversarial training",
                  "authors": "Eric Wong, Leslie Rice, J. Zico Kolter", "venue": "ICLR 2020", "additional_data": False, "reported": {"linf": "46.06"}},
        ),
        Entry(
            "Zhang2019Theoretically", "cifar10", ("linf",), "WideResNet-34-10", "wrn", {"depth": 34, "widen_factor": 10, "sub_block1": True},
            gdrive_id="1hPz9QQwyM7QSuWu-ANG_uXR-29xtL8t_",
            paper="Zhang et al. 2019, Theoretically Principled Trade-off between Robustness and Accuracy (ICML; TRADES), WRN-34-10",
            info={"link": "https://arxiv.org/abs/1901.08573", "name": "Theoretically Principled Trade-off between Robustness and Accuracy",
                  "authors": "Hongyang Zhang, Yaodong Yu, Jiantao Jiao, Eric P. Xing, Laurent El Ghaoui, Michael I. Jordan", "venue": "ICML 2019",
                  "additional_data": False, "reported": {"linf": "56.43"}},
        ),
    )
}


def robustbench_root() -> Path:
    """The RobustBench ``model_dir``: ``$BENCH_CHECKPOINTS/robustbench``, else the user cache's ``robustbench``."""
    base = Path(os.environ["BENCH_CHECKPOINTS"]) if os.environ.get("BENCH_CHECKPOINTS") else user_checkpoint_dir()
    return base / "robustbench"


def checkpoint_path(name: str, dataset: str, threat_dir: str) -> Path:
    """``<root>/<dataset>/<Linf|L2>/<name>.pt`` -- where ``robustbench.utils.load_model`` keeps it too."""
    return robustbench_root() / dataset / threat_dir / f"{name}.pt"


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without leading ``module.`` / ``model.`` (any order, repeated), as RobustBench loads them."""
    out = {}
    for key, value in state.items():
        k = key
        while k.startswith(PREFIXES):
            k = k.split(".", 1)[1]
        if k in out:
            raise CheckpointError(f"checkpoint keys {key!r} and another one are the same after removing the prefixes {', '.join(PREFIXES)}")
        out[k] = value
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a RobustBench checkpoint (``.pt`` read weights-only, or ``.safetensors``), prefixes stripped.

    A ``.pt`` file that holds more than tensors and containers (a pickled module, numpy objects, ...)
    is refused: unpickling it could run arbitrary code.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({exc})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            what = f"it holds a pickled {found.group(1)}" if found else "torch.load(weights_only=True) refused it"
            raise CheckpointError(
                f"checkpoint {path} is a full pickle, not weights only ({what}); bench does not unpickle it because that can run code: "
                f"re-save its state dict with torch.save(model.state_dict(), path) or as safetensors, from a trusted environment"
            ) from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"checkpoint {path} is not a readable torch file ({first[:200]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("last"), dict):  # RobustBench's Andriushchenko / Kireev files
        obj = obj["last"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict (name -> tensor)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path}: entries {', '.join(map(str, bad[:3]))} are not tensors; expected a state dict")
    return strip_prefixes(obj)


def download(entry: Entry, path: Path) -> None:
    """Fetch ``entry``'s checkpoint from its published source (Google Drive, via ``gdown``) to ``path``.

    Only with ``BENCH_DOWNLOAD=1``. There is no published checksum to verify it against; the sha256
    of what was fetched goes into every result file.
    """
    if not entry.gdrive_id:
        raise CheckpointError(f"RobustBench entry {entry.name} has no published download; put its checkpoint at {path}")
    try:
        import gdown  # optional: RobustBench's own downloader
    except ImportError:
        raise CheckpointError(
            f"{DOWNLOAD_ENV}=1: downloading {entry.name} (Google Drive id {entry.gdrive_id}) needs the gdown package (pip install gdown); "
            f"or fetch it yourself and put it at {path}"
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        got = gdown.download(id=entry.gdrive_id, output=str(tmp), quiet=False)
    except Exception as exc:  # network errors come in many types
        got = None
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = "gdown returned no file"
    if not got or not tmp.is_file():
        if tmp.exists():
            tmp.unlink()
        raise CheckpointError(f"{DOWNLOAD_ENV}=1: download of {entry.name} (Google Drive id {entry.gdrive_id}) failed ({reason}); fetch it yourself and put it at {path}")
    os.replace(tmp, path)


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], path: Path, entry: Entry) -> str:
    """Load ``state`` strictly into ``net``; returns where the normalisation came from.

    RobustBench's own loader accepts some files without the ``mu`` / ``sigma`` buffers (e.g.
    Wong2020Fast: the network class sets them); the table's values are used then.
    """
    own = net.state_dict()
    norm_keys = {"mu", "sigma"} & set(own)
    source = "none (the network takes [0, 1] inputs)"
    if norm_keys:
        if norm_keys <= set(state):
            source = "checkpoint"
        elif not norm_keys & set(state):
            state = dict(state, **{k: own[k] for k in norm_keys})
            source = "RobustBench entry table (not in the checkpoint)"
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).strip().splitlines()[:2])
        raise CheckpointError(f"checkpoint {path} does not fit RobustBench entry {entry.name} ({entry.architecture}): {first[:300]}") from None
    return source


class RobustBenchDefense(Defense):
    """A RobustBench model-zoo network as a defense: scores are its logits, gradients plain autograd.

    Concrete classes (one per entry, built by :func:`resolve`) set ``entry`` and ``name``
    (``robustbench:<Name>``). Weights come from RobustBench's checkpoint layout through
    :meth:`load_external_weights`; ``bench train`` cannot train them.
    """

    name: ClassVar[str] = "robustbench"
    paper: ClassVar[str] = "Croce et al. 2021, RobustBench"
    gradient_policy: ClassVar[str] = "exact autograd gradient of the network's logits (plain autograd, nothing declared)"
    datasets: ClassVar[tuple[str, ...]] = ("cifar10",)
    trainable: ClassVar[bool] = False
    entry: ClassVar[Entry]

    def __init__(self, *, num_classes: int, input_shape: tuple[int, int, int], dataset: str):
        super().__init__(num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        if self.input_shape != (3, 32, 32):
            raise BenchUserError(f"{self.name} is a network for 3x32x32 images, {dataset} has {'x'.join(map(str, self.input_shape))}")
        self.net = self.entry.build(num_classes)
        self._loaded: dict[str, Any] = {}

    def predict(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.net(x)

    def checkpoint_module(self) -> nn.Module:
        return self.net

    def load_external_weights(self, *, norm: str | None) -> dict:
        """Find, read (weights only) and strictly load the entry's checkpoint; return its card.

        ``norm``: the evaluation's threat model; the file is looked up in that leaderboard's folder
        when the entry is listed there, else in the folder of the first leaderboard that lists it.
        """
        e = self.entry
        listed = norm if norm in e.threat_models else e.threat_models[0]
        pt = checkpoint_path(e.name, self.dataset, THREAT_DIRS[listed])
        path = pt if pt.is_file() else pt.with_suffix(".safetensors")
        if not path.is_file():
            if os.environ.get(DOWNLOAD_ENV) == "1":
                download(e, pt)
                path = pt
            else:
                raise CheckpointError(
                    f"no checkpoint for RobustBench entry {e.name}: put its .pt file (RobustBench's own, or a weights-only state dict; "
                    f"or a .safetensors next to it) at {pt} -- or set {DOWNLOAD_ENV}=1 to fetch it from its published source"
                )
        source = _load_into(self.net, read_state_dict(path), path, e)
        self._loaded = {"checkpoint_threat_model": THREAT_DIRS[listed], "normalization_from": source}
        return {"path": str(path), "sha256": sha256_file(path), "robustbench_entry": e.name, "architecture": e.architecture, "format": path.suffix.lstrip(".")}

    def extra_info(self) -> dict[str, Any]:
        e = self.entry
        norm = {"mean": list(e.mean), "std": list(e.std)} if e.mean is not None else None
        return {"robustbench_entry": e.name, "architecture": e.architecture, "normalization": norm, **self._loaded}


class RobustBenchPackageDefense(RobustBenchDefense):
    """An entry outside :data:`ENTRIES`, built and loaded by the optional ``robustbench`` package."""

    def __init__(self, *, num_classes: int, input_shape: tuple[int, int, int], dataset: str):
        Defense.__init__(self, num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        self.net = nn.Identity()  # replaced by load_external_weights
        self._loaded = {}

    def load_external_weights(self, *, norm: str | None) -> dict:
        utils = _import_robustbench()
        e = self.entry
        threat = THREAT_DIRS[norm or "linf"]
        pt = checkpoint_path(e.name, self.dataset, threat)
        if not pt.is_file():
            if os.environ.get(DOWNLOAD_ENV) != "1":
                raise CheckpointError(f"no checkpoint for RobustBench entry {e.name}: put it at {pt} or set {DOWNLOAD_ENV}=1 to let robustbench fetch it")
        else:
            read_state_dict(pt)  # refuse a full pickle before robustbench unpickles it
        self.net = utils.load_model(e.name, model_dir=str(robustbench_root()), dataset=self.dataset, threat_model=threat)
        self._loaded = {"checkpoint_threat_model": threat, "loaded_by": "robustbench.utils.load_model"}
        return {"path": str(pt), "sha256": sha256_file(pt), "robustbench_entry": e.name, "format": "pt"}


def _import_robustbench():
    """``robustbench.utils``, or a one-line BenchUserError saying why it cannot be imported."""
    try:
        import robustbench.utils as utils  # optional extra [robustbench]
    except Exception as exc:  # ImportError, or torchvision's RuntimeError on CPU torch
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:240]
        raise BenchUserError(
            f"the optional robustbench package cannot be imported here ({reason}); it needs a torchvision that imports (the CPU torch's "
            f"matching wheel is a CUDA build), pkg_resources (setuptools < 82) and fra31's autoattack API; install the [robustbench] extra "
            f"on such a machine"
        ) from None
    return utils


_CLASSES: dict[str, type] = {}


def resolve(name: str) -> type:
    """The defense class of ``robustbench:<name>`` (:data:`ENTRIES` first, else the optional package)."""
    if not name:
        raise BenchUserError(f"robustbench: give an entry name, e.g. robustbench:Standard (bench's table: {', '.join(ENTRIES)})")
    entry = ENTRIES.get(name)
    cached = _CLASSES.get(name)
    if entry is not None:
        if cached is None or getattr(cached, "entry", None) is not entry:
            attrs = {"name": f"robustbench:{name}", "entry": entry, "paper": entry.paper, "datasets": (entry.dataset,), "__doc__": f"RobustBench entry {name} ({entry.architecture})."}
            cached = _CLASSES[name] = type(f"RobustBench_{name}", (RobustBenchDefense,), attrs)
        return cached
    utils = None
    try:
        utils = _import_robustbench()
    except BenchUserError as exc:
        raise BenchUserError(f"robustbench:{name} is not in bench's table of RobustBench entries ({', '.join(ENTRIES)}), and {exc}") from None
    known = {str(k) for d in utils.all_models.values() for tm in d.values() for k in tm} if hasattr(utils, "all_models") else set()
    if known and name not in known:
        raise BenchUserError(f"robustbench:{name} is not a RobustBench model-zoo entry")
    if cached is None:
        entry = Entry(name, "cifar10", ("linf", "l2"), "see RobustBench", "package", paper=f"RobustBench model zoo entry {name}")
        cached = _CLASSES[name] = type(f"RobustBench_{name}", (RobustBenchPackageDefense,), {"name": f"robustbench:{name}", "entry": entry, "paper": entry.paper})
    return cached


register_family("robustbench", resolve, description=f"a RobustBench model-zoo entry from $BENCH_CHECKPOINTS/robustbench/<dataset>/<Linf|L2>/<Name>.pt (bench's table: {', '.join(ENTRIES)}; others need the optional robustbench package)")
