"""NEAT fooling images: CPPN genomes evolved until a source model is >= 90 % sure of a target class.

The attack of Nguyen, Yosinski & Clune (2015, "Deep neural networks are easily fooled"), used by
Yao et al. (section 4.2) as the non-gradient attack that a reconstruction-error reject (their
section 3.2) should catch: a Compositional Pattern Producing Network (CPPN, Stanley 2007) maps the
coordinates of every pixel to its intensity; NEAT (Stanley & Miikkulainen 2002, the ``neat-python``
library) evolves the CPPNs, with fitness = the source model's softmax probability of the target
class. An image counts as a fooling image when that probability reaches the threshold (90 %).

Pieces:

* :func:`render_network` / :func:`render_genomes` -- the CPPN renderer, vectorised with numpy over
  the whole pixel grid: it walks the ``node_evals`` of ``neat.nn.FeedForwardNetwork`` in their
  evaluation order with array operations (the values ``net.activate`` gives per pixel, to within an
  ulp or so of numpy's vectorised exp/tanh/log; about 40-50x faster than calling it per pixel).
* :func:`neat_config` -- neat-python 2.0 config from ``threat_models/neat.toml`` (every key
  explicit, ``initial_connection = full_direct``).
* :func:`evolve_fooling_images` -- one NEAT population per (target class, run); every generation is
  rendered and scored by the source model as one batch.

Randomness: neat-python draws from Python's *global* ``random`` module (its genes import
``random.random``/``gauss``/``choice`` directly, so a private ``random.Random`` cannot be swapped
in). Each population therefore seeds the global generator with a value derived from ``(seed,
target, run)`` (via neat-python's own ``[NEAT] seed`` key) and the caller's global ``random`` state
is saved before and restored after every population, so no state is left behind. Randomized source
defenses draw from a ``torch.Generator`` seeded from ``seed``.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from harness.errors import BenchUserError

#: per pixel: x, y, r = sqrt(x^2 + y^2), bias (Nguyen et al. 2015 / Stanley 2007 CPPN inputs)
CPPN_INPUTS = ("x", "y", "r", "bias")
NEAT_SECTIONS = ("NEAT", "DefaultGenome", "DefaultSpeciesSet", "DefaultStagnation", "DefaultReproduction")
#: keys the harness sets itself; they must not appear in neat.toml
HARNESS_KEYS = {"NEAT": ("pop_size", "fitness_threshold", "seed"), "DefaultGenome": ("num_inputs", "num_outputs")}
RUN_KEYS = ("population", "generations", "threshold", "runs_per_target")


def neat_version() -> str:
    """The installed neat-python version (recorded in result manifests)."""
    import neat

    return str(getattr(neat, "__version__", "unknown"))


# --- vectorised CPPN rendering ----------------------------------------------------------------------

def _clip(z, lo, hi):
    return np.minimum(np.maximum(z, lo), hi)


def _np_inv(z):
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(z == 0.0, 0.0, 1.0 / np.where(z == 0.0, 1.0, z))


# numpy versions of neat-python's built-in activations, with the same clamping (neat/activations.py)
_NP_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-_clip(5.0 * z, -60.0, 60.0))),
    "tanh": lambda z: np.tanh(_clip(2.5 * z, -60.0, 60.0)),
    "sin": lambda z: np.sin(_clip(5.0 * z, -60.0, 60.0)),
    "gauss": lambda z: np.exp(-5.0 * _clip(z, -3.4, 3.4) ** 2),
    "relu": lambda z: np.where(z > 0.0, z, 0.0),
    "elu": lambda z: np.where(z > 0.0, z, np.exp(np.minimum(z, 0.0)) - 1),
    "lelu": lambda z: np.where(z > 0.0, z, 0.005 * z),
    "selu": lambda z: np.where(
        z > 0.0, 1.0507009873554804934193349852946 * z,
        1.0507009873554804934193349852946 * 1.6732632423543772848170429916717 * (np.exp(np.minimum(z, 0.0)) - 1),
    ),
    "softplus": lambda z: 0.2 * np.log(1 + np.exp(_clip(5.0 * z, -60.0, 60.0))),
    "identity": lambda z: z,
    "clamped": lambda z: _clip(z, -1.0, 1.0),
    "inv": _np_inv,
    "log": lambda z: np.log(np.maximum(z, 1e-7)),
    "exp": lambda z: np.exp(_clip(z, -60.0, 60.0)),
    "abs": np.abs,
    "hat": lambda z: np.maximum(0.0, 1 - np.abs(z)),
    "square": lambda z: z ** 2,
    "cube": lambda z: z ** 3,
}


def _seq_sum(terms: list[np.ndarray]) -> np.ndarray:
    # left to right, like Python's sum(): identical rounding to net.activate
    acc = terms[0]
    for t in terms[1:]:
        acc = acc + t
    return acc


def _seq_product(terms: list[np.ndarray]) -> np.ndarray:
    acc = terms[0]
    for t in terms[1:]:
        acc = acc * t
    return acc


def _maxabs(terms: list[np.ndarray]) -> np.ndarray:
    st = np.stack(terms)
    idx = np.argmax(np.abs(st), axis=0)  # first of equal magnitudes, like max(key=abs)
    return np.take_along_axis(st, idx[None], axis=0)[0]


def _median(terms: list[np.ndarray]) -> np.ndarray:
    n = len(terms)
    if n <= 2:
        return _seq_sum(terms) / n
    st = np.sort(np.stack(terms), axis=0)
    if n % 2 == 1:
        return st[n // 2]
    return (st[n // 2 - 1] + st[n // 2]) / 2.0


# numpy versions of neat-python's built-in aggregations (neat/aggregations.py): (function, value when no inputs)
_NP_AGGREGATIONS: dict[str, tuple[Callable[[list[np.ndarray]], np.ndarray], float]] = {
    "sum": (_seq_sum, 0.0),
    "product": (_seq_product, 1.0),
    "max": (lambda t: np.max(np.stack(t), axis=0), 0.0),
    "min": (lambda t: np.min(np.stack(t), axis=0), 0.0),
    "maxabs": (_maxabs, 0.0),
    "median": (_median, 0.0),
    "mean": (lambda t: _seq_sum(t) / len(t), 0.0),
}


def _builtin_names() -> tuple[dict[int, str], dict[int, str]]:
    """neat-python's built-in activation / aggregation function objects -> their names."""
    from neat.activations import ActivationFunctionSet
    from neat.aggregations import AggregationFunctionSet

    acts = {id(f): n for n, f in ActivationFunctionSet().functions.items()}
    aggs = {id(f): n for n, f in AggregationFunctionSet().functions.items()}
    return acts, aggs


def cppn_inputs(height: int, width: int) -> np.ndarray:
    """The CPPN inputs of every pixel, ``(4, height * width)`` float64 in row-major pixel order.

    Rows: ``x`` (column coordinate, -1 at the left edge .. 1 at the right), ``y`` (row coordinate,
    -1 at the top .. 1 at the bottom), ``r = sqrt(x^2 + y^2)`` and a constant bias of 1
    (Nguyen et al. 2015, section 2.2; Stanley 2007).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    xs = np.linspace(-1.0, 1.0, width) if width > 1 else np.zeros(1)
    ys = np.linspace(-1.0, 1.0, height) if height > 1 else np.zeros(1)
    y, x = np.meshgrid(ys, xs, indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    return np.stack([x, y, np.sqrt(x * x + y * y), np.ones_like(x)])


def evaluate_network(net, inputs: np.ndarray) -> np.ndarray:
    """Outputs ``(num_outputs, P)`` of a ``neat.nn.FeedForwardNetwork`` on ``P`` input vectors at once.

    ``inputs`` is ``(num_inputs, P)``. Walks ``net.node_evals`` (the network's evaluation order) with
    array operations in the same order and with the same clamping as neat-python's built-in
    activations and aggregations, so the result equals ``net.activate`` applied to every column up
    to rounding in the last bit (numpy's SIMD exp/tanh/log vs. Python's ``math``). Outputs that
    ``activate`` never computes (no path to them) are 0, as there.
    """
    inputs = np.asarray(inputs, dtype=np.float64)
    if inputs.ndim != 2 or inputs.shape[0] != len(net.input_nodes):
        raise ValueError(f"inputs must be (num_inputs={len(net.input_nodes)}, P), got {inputs.shape}")
    acts, aggs = _builtin_names()
    n = inputs.shape[1]
    values: dict[int, np.ndarray] = {k: inputs[i] for i, k in enumerate(net.input_nodes)}
    for node, act_func, agg_func, bias, response, links in net.node_evals:
        act_name, agg_name = acts.get(id(act_func)), aggs.get(id(agg_func))
        if act_name is None or agg_name is None:
            bad = getattr(act_func if act_name is None else agg_func, "__name__", "?")
            raise ValueError(
                f"CPPN node {node} uses {bad}, which has no vectorised form; list only neat-python's built-in "
                f"functions in threat_models/neat.toml ({', '.join(_NP_ACTIVATIONS)} / {', '.join(_NP_AGGREGATIONS)})"
            )
        agg, empty = _NP_AGGREGATIONS[agg_name]
        terms = [values[i] * w for i, w in links]
        s = agg(terms) if terms else np.full(n, empty)
        values[node] = _NP_ACTIVATIONS[act_name](bias + response * s)
    return np.stack([values[k] if k in values else np.zeros(n) for k in net.output_nodes])


def render_network(net, *, height: int, width: int) -> np.ndarray:
    """The CPPN image ``(num_outputs, height, width)`` float32 in [0, 1] of one network.

    Each output is one channel (1 for grayscale, 3 for RGB); its values are clamped to [0, 1]
    (the sigmoid and gauss activations already lie there; NaN, only possible with unbounded
    activations, becomes 0).
    """
    out = evaluate_network(net, cppn_inputs(height, width))
    out = np.nan_to_num(np.clip(out, 0.0, 1.0), nan=0.0)
    return out.reshape(len(net.output_nodes), height, width).astype(np.float32)


def render_genomes(genomes: Sequence, config, *, height: int, width: int) -> torch.Tensor:
    """Render a list of genomes to a batch ``(N, C, height, width)`` float32 tensor in [0, 1]."""
    import neat

    imgs = [render_network(neat.nn.FeedForwardNetwork.create(g, config), height=height, width=width) for g in genomes]
    return torch.from_numpy(np.stack(imgs))


# --- configuration ----------------------------------------------------------------------------------

def load_neat_settings(path: str | os.PathLike | None = None) -> dict:
    """The NEAT settings: ``threat_models/neat.toml`` (shipped) or the TOML file ``path``."""
    try:
        if path is None:
            text = resources.files("threat_models").joinpath("neat.toml").read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        settings = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BenchUserError(f"cannot read NEAT settings {path or 'threat_models/neat.toml'}: {exc}; fix or restore the file") from None
    missing = [s for s in ("run", *NEAT_SECTIONS) if not isinstance(settings.get(s), dict)]
    if missing:
        raise BenchUserError(f"NEAT settings {path or 'threat_models/neat.toml'} lack the section(s) {', '.join('[' + s + ']' for s in missing)}; add them (see the shipped threat_models/neat.toml)")
    unknown = [k for k in settings["run"] if k not in RUN_KEYS]
    if unknown:
        raise BenchUserError(f"unknown key(s) {', '.join(unknown)} in [run] of the NEAT settings; known: {', '.join(RUN_KEYS)}")
    return settings


def _ini_value(v: Any) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    if isinstance(v, (int, float, str)):
        return str(v)
    raise BenchUserError(f"NEAT setting value {v!r} has type {type(v).__name__}; use a number, string, boolean or array")


def neat_config_text(settings: Mapping, *, num_outputs: int, pop_size: int, fitness_threshold: float, seed: int) -> str:
    """The neat-python INI config: the sections of ``settings`` plus the keys the harness sets."""
    forced = {
        "NEAT": {"pop_size": pop_size, "fitness_threshold": fitness_threshold, "seed": seed},
        "DefaultGenome": {"num_inputs": len(CPPN_INPUTS), "num_outputs": num_outputs},
    }
    lines = []
    for section in NEAT_SECTIONS:
        body = dict(settings.get(section) or {})
        clash = [k for k in HARNESS_KEYS.get(section, ()) if k in body]
        if clash:
            raise BenchUserError(f"[{section}] {', '.join(clash)} must not be set in the NEAT settings: the harness sets them (use population/threshold/seed arguments)")
        body.update(forced.get(section, {}))
        lines.append(f"[{section}]")
        lines += [f"{k} = {_ini_value(v)}" for k, v in body.items()]
        lines.append("")
    return "\n".join(lines)


def neat_config(settings: Mapping, *, num_outputs: int, pop_size: int, fitness_threshold: float, seed: int):
    """A fresh ``neat.Config`` (DefaultGenome, DefaultReproduction, DefaultSpeciesSet, DefaultStagnation).

    A fresh one per population: neat-python keeps the node indexer and innovation tracker on it.
    """
    import neat

    text = neat_config_text(settings, num_outputs=num_outputs, pop_size=pop_size, fitness_threshold=fitness_threshold, seed=seed)
    with tempfile.TemporaryDirectory(prefix="bench-neat-") as d:
        path = Path(d) / "neat.ini"
        path.write_text(text, encoding="utf-8")
        try:
            config = neat.Config(neat.DefaultGenome, neat.DefaultReproduction, neat.DefaultSpeciesSet, neat.DefaultStagnation, str(path))
        except (RuntimeError, NameError, ValueError, TypeError, AssertionError) as exc:
            raise BenchUserError(f"neat-python rejects the NEAT settings ({type(exc).__name__}: {exc}); fix threat_models/neat.toml") from None
    # neat-python checks unknown keys in every section but [DefaultGenome]: catch typos there too
    known = {p.name for p in getattr(config.genome_config, "_params", ())}
    unknown = [k for k in settings.get("DefaultGenome", {}) if known and k not in known]
    if unknown:
        raise BenchUserError(f"unknown key(s) {', '.join(unknown)} in [DefaultGenome] of the NEAT settings; check the spelling against neat-python {neat_version()}'s config documentation")
    return config


# --- evolution --------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class FoolingSet:
    """Evolved CPPN images, one per (target class, run), in target order (Nguyen et al. 2015).

    ``confidences`` is the source model's softmax probability of the target class on the image,
    ``generations`` the generations evaluated until the threshold was reached (or the budget ran
    out), ``reached`` whether ``confidences >= threshold`` (Yao et al. section 4.2: only those count
    as successful attacks and are used for testing).
    """

    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    targets: torch.Tensor  # (N,) int64
    confidences: torch.Tensor  # (N,) float64
    generations: torch.Tensor  # (N,) int64
    reached: torch.Tensor  # (N,) bool
    threshold: float

    def __post_init__(self):
        n = self.images.shape[0]
        if self.images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(self.images.shape)}")
        for name in ("targets", "confidences", "generations", "reached"):
            t = getattr(self, name)
            if t.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])


def derive_seed(seed: int, target: int, run: int) -> int:
    """The NEAT seed of population (target, run): a stable 31-bit hash of ``(seed, target, run)``."""
    digest = hashlib.sha256(f"bench-neat:{seed}:{target}:{run}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def evolve_fooling_images(
    source_defense,
    *,
    num_classes: int,
    shape: tuple[int, int, int],
    threshold: float = 0.9,
    population: int = 50,
    generations: int = 50,
    seed: int = 0,
    progress: bool = True,
    targets: Sequence[int] | None = None,
    runs_per_target: int = 1,
    settings: Mapping | None = None,
    device: torch.device | None = None,
    batch_size: int = 256,
) -> FoolingSet:
    """Evolve one CPPN fooling image per (target class, run) against ``source_defense``.

    Yao et al. section 4.2 / Nguyen et al. 2015: per target, a NEAT population of ``population``
    CPPN genomes evolves with fitness = softmax(``source_defense.predict(image)``)[target]; each
    generation is rendered and scored as one batch (``torch.no_grad``). A population stops when its
    best image reaches ``threshold`` or after ``generations`` generations; the best image ever seen
    is kept. ``targets`` defaults to every class; ``settings`` to :func:`load_neat_settings` (its
    ``[run]`` section is ignored here: the keyword arguments rule). The global ``random`` state of the
    caller is restored afterwards (see the module docstring).
    """
    import neat

    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape}")
    c, h, w = (int(s) for s in shape)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}; the paper uses 0.9")
    if population < 2:
        raise ValueError(f"population must be >= 2, got {population}")
    if generations < 1:
        raise ValueError(f"generations must be >= 1, got {generations}")
    if runs_per_target < 1:
        raise ValueError(f"runs_per_target must be >= 1, got {runs_per_target}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    targets = list(range(num_classes)) if targets is None else [int(t) for t in targets]
    bad = [t for t in targets if not 0 <= t < num_classes]
    if bad or not targets:
        raise ValueError(f"targets must be class indices in 0..{num_classes - 1}, got {targets}")
    settings = load_neat_settings() if settings is None else settings
    device = _device_of(source_defense) if device is None else device
    gen = torch.Generator(device=device).manual_seed(int(seed))

    @torch.no_grad()
    def confidences(images: torch.Tensor, target: int) -> np.ndarray:
        out = []
        for i in range(0, images.shape[0], batch_size):
            scores = source_defense.predict(images[i : i + batch_size].to(device), generator=gen)
            if scores.dim() != 2 or scores.shape[1] != num_classes:
                raise ValueError(f"source model returned scores of shape {tuple(scores.shape)}, expected (B, {num_classes})")
            out.append(torch.softmax(scores.double(), dim=1)[:, target].cpu())
        return torch.cat(out).numpy()

    from tqdm.auto import tqdm

    images, tgts, confs, gens, reached = [], [], [], [], []
    jobs = [(t, r) for t in targets for r in range(runs_per_target)]
    bar = tqdm(total=len(jobs), desc="NEAT fooling images", unit="pop", disable=not progress, dynamic_ncols=True)
    for target, run in jobs:
        nseed = derive_seed(seed, target, run)
        config = neat_config(settings, num_outputs=c, pop_size=population, fitness_threshold=threshold, seed=nseed)
        best = {"conf": -math.inf, "image": None, "gens": 0, "reached_at": None}

        def fitness(genomes, config, target=target, best=best):
            batch = render_genomes([g for _, g in genomes], config, height=h, width=w)
            p = confidences(batch, target)
            best["gens"] += 1
            for (_, g), v in zip(genomes, p):
                g.fitness = float(v)
            i = int(np.argmax(p))
            if p[i] > best["conf"]:
                best["conf"], best["image"] = float(p[i]), batch[i].clone()
            if best["reached_at"] is None and best["conf"] >= threshold:
                best["reached_at"] = best["gens"]
            bar.set_postfix(target=target, gen=best["gens"], best=f"{best['conf']:.3f}")

        state = random.getstate()
        try:
            pop = neat.Population(config)  # seeds the global random from config.seed
            pop.run(fitness, generations)
        finally:
            random.setstate(state)
        images.append(best["image"])
        tgts.append(target)
        confs.append(best["conf"])
        gens.append(best["reached_at"] or best["gens"])
        reached.append(best["conf"] >= threshold)
        bar.update(1)
    bar.close()
    return FoolingSet(
        images=torch.stack(images),
        targets=torch.tensor(tgts, dtype=torch.int64),
        confidences=torch.tensor(confs, dtype=torch.float64),
        generations=torch.tensor(gens, dtype=torch.int64),
        reached=torch.tensor(reached, dtype=torch.bool),
        threshold=float(threshold),
    )
