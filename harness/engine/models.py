"""Build, train and load defenses: registry name + dataset -> ready-to-evaluate Defense."""

from __future__ import annotations

import copy
import inspect
import math
import time
from pathlib import Path

import torch

from defenses.base import Defense, TrainingServices
from defenses.registry import get_defense
from harness import datasets
from defenses.training import OPTIONAL_CONFIG_KEYS, TrainProgress, decode_state, encode_state, make_scheduler
from harness.store.checkpoints import (
    find_checkpoint,
    load_checkpoint,
    load_train_state,
    read_card,
    save_checkpoint,
    save_train_state,
    sha256_file,
    stem,
    train_state_path,
    user_dir,
)
from harness.errors import BenchUserError, CheckpointError
from harness.store.provenance import code_commit, command_line, device_name, package_versions


def clean_options(options: dict | None) -> dict:
    """Defense options without the unset (None) ones, e.g. ``{"arch": "resnet18"}``."""
    return {k: v for k, v in (options or {}).items() if v is not None}


def option_flags(options: dict | None) -> str:
    """``{"arch": "resnet18", "steps": 5}`` -> ``" --arch resnet18 --option steps=5"`` (for messages naming a command)."""
    return "".join(f" --arch {v}" if k == "arch" else f" --option {k}={v}" for k, v in clean_options(options).items())


#: options that change how a defense computes, not what: like the device, they are recorded in the
#: manifest (``defense_options``, ``defense_config``) but do not make a separate result file
EXECUTION_OPTIONS = frozenset({"precision"})


def config_changes(recorded: dict, today: dict, prefix: str = "") -> list[str]:
    """How a recorded ``defense_config`` differs from today's: ``["inference.lr 0.4 -> 0.05", ...]``,
    sorted, over the keys both hold (a key a file does not record is not compared), execution
    options skipped (they do not change results), floats equal to 1e-6 relative."""
    out = []
    for k in recorded.keys() & today.keys():
        a, b = recorded[k], today[k]
        if k in EXECUTION_OPTIONS:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{k}.")
        elif a != b and not (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-6)):
            out.append(f"{prefix}{k} {_shown(a)} -> {_shown(b)}")
    return sorted(out)


def _shown(value) -> str:
    """A setting as a change line shows it: floats to 4 significant digits (a recalibrated threshold
    reads ``36.07 -> 35.96``), anything else as its repr."""
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def today_config(name: str, dataset: str, options: dict | None = None) -> dict | None:
    """The ``defense_config`` a run of defense ``name`` with ``options`` would record today: the
    defense built with its default settings and the model card found now (no weights are loaded).
    None when it cannot be built here (an uninstalled plugin, an unknown name)."""
    try:
        d = build_defense(name, dataset, **(options or {}))
        path = find_checkpoint(d.checkpoint_name(), dataset)
        if path is not None:
            d.load_card(read_card(path))
        return d.extra_info()
    except Exception:  # noqa: BLE001 - callers use this to compare, and skip what they cannot build
        return None


def today_checkpoint_sha(name: str, dataset: str, options: dict | None = None) -> str | None:
    """The ``sha256`` of the model card a run of defense ``name`` would load today (what result files
    record as ``checkpoint_sha256``); None when it has none or cannot be built here."""
    try:
        d = build_defense(name, dataset, **(options or {}))
        path = find_checkpoint(d.checkpoint_name(), dataset) if d.trainable else None
        return read_card(path).get("sha256") if path is not None else None
    except Exception:  # noqa: BLE001 - callers use this to compare, and skip what they cannot build
        return None


def variant_key(name: str, options: dict | None) -> str:
    """Result-file key of a defense with options: ``cnn``, ``cnn-resnet18`` (the ``arch`` value appended)
    or ``vsmooth-cnn-radius0.05-steps5`` (other options as key and value, sorted by key; execution
    options such as ``precision`` are left out)."""
    opts = sorted((k, v) for k, v in clean_options(options).items() if k not in EXECUTION_OPTIONS)
    # a family name (``robustbench:Standard``) becomes ``robustbench-Standard``: no ':' in file names
    return "-".join([name.replace(":", "-"), *(str(v) if k == "arch" else f"{k}{v}" for k, v in opts)])


def build_defense(name: str, dataset: str, **options):
    """Instantiate defense ``name`` for ``dataset`` (untrained); ``options`` (e.g. ``arch``) go to its constructor."""
    cls = get_defense(name)
    info = datasets.get_info(dataset)
    datasets.require_single_label(dataset, f"defense {name!r}")
    if dataset not in cls.datasets:
        raise BenchUserError(f"defense {name!r} does not support dataset {dataset!r} (supports: {', '.join(cls.datasets)})")
    options = clean_options(options)
    if options:
        accepted = list(cls.option_names())
        unknown = [k for k in options if k not in accepted]
        if unknown:
            has = f"its options: {', '.join(accepted)}" if accepted else "it has no options"
            raise BenchUserError(f"defense {name!r} does not take option(s) {', '.join(unknown)} ({has}); drop it")
    return cls(num_classes=info.num_classes, input_shape=info.shape, dataset=dataset, **options)


#: runs of at most this many training batches start without the 2-batch timing probe
PROBE_MIN_BATCHES = 20


def _probe_seconds_per_epoch(model, train, config, device) -> float:
    """Time 2 training batches on a throw-away copy and extrapolate one epoch."""
    probe = copy.deepcopy(model)
    bs = int(config.get("batch_size", 512))
    sub = type("S", (), {})()
    sub.x, sub.y = train.x[: 2 * bs], train.y[: 2 * bs]
    cfg = {k: v for k, v in config.items() if k not in ("warmup_epochs", "anneal_epochs")}  # a 1-epoch probe has no room for them
    cfg["epochs"] = 1
    t0 = time.perf_counter()
    probe.fit(sub, None, config=cfg, device=device, generator=torch.Generator().manual_seed(0), progress=False)
    per_batch = (time.perf_counter() - t0) / max(1, -(-len(sub.x) // bs))
    return per_batch * -(-len(train.x) // bs)


def train_defense(
    name: str,
    dataset: str,
    *,
    device: torch.device,
    epochs: int | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    announce=print,
    options: dict | None = None,
    config_overrides: dict | None = None,
    resume: bool = False,
) -> Path:
    """Train ``name`` on ``dataset``'s train split (val split for monitoring), save checkpoint + card.

    ``options`` go to the defense's constructor (e.g. ``{"arch": "resnet18"}``) and into the card;
    ``config_overrides`` replace keys of the recipe (tests, experiments; recorded in the card's config).
    ``resume``: start from the existing checkpoint (found like ``bench run`` finds it) and train
    ``epochs`` *more* epochs; the card's ``epochs`` and ``history`` continue the old card's, and
    ``resumed_from`` names the weights it started from. Defenses with a resumable ``fit`` (ABS,
    E-ABS) write a checkpoint with their training state at the end of every epoch and resume bit
    for bit: optimisers, schedule and random generators continue where they stopped, so 1 + 1
    resumed epochs equal 2 epochs in one go; ``epochs=None`` then finishes the epochs the stopped
    run had planned. Other defenses (and checkpoints without a training state) resume with a
    fresh optimiser and schedule and new shuffles.
    """
    options = clean_options(options)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # ``seed`` decides everything: weight initialisation (torch's global RNG, confined to this
        # block) as well as the shuffles and noise ``fit`` draws from its generator
        torch.manual_seed(seed)
        return _train(name, dataset, model=build_defense(name, dataset, **options), device=device, epochs=epochs, out_dir=out_dir,
                      seed=seed, progress=progress, announce=announce, options=options, config_overrides=config_overrides, resume=resume)


def _run_attack(model, x, y, threat, spec, *, seed):
    """:func:`harness.attacks.run_attack`, imported when a defense attacks during training (it imports foolbox)."""
    from harness.attacks import run_attack

    return run_attack(model, x, y, threat, spec, seed=seed)


#: what the harness lends a defense's ``fit`` (adversarial training: PGD and the checkpoint it fine-tunes)
TRAINING_SERVICES = TrainingServices(run_attack=_run_attack, find_checkpoint=find_checkpoint, load_checkpoint=load_checkpoint)


def _resumable(model) -> bool:
    """Whether ``model.fit`` takes ``resume`` / ``on_epoch_end`` (:class:`defenses.training.TrainProgress`)."""
    params = inspect.signature(model.fit).parameters
    return "resume" in params and "on_epoch_end" in params


def _find_train_state(start: Path, name: str, dataset: str, announce) -> tuple[dict, dict] | None:
    """The training state to resume from, next to checkpoint ``start``, or None.

    Used when the card names it (same sha256), or when it is newer than the card: a training
    stopped between writing the state file and the weights / card pair of the same epoch."""
    state_path = train_state_path(start)
    if not state_path.is_file():
        return None
    tensors, meta = load_train_state(state_path)
    if meta.get("defense") != name or meta.get("dataset") != dataset:
        announce(f"ignoring {state_path}: it belongs to {meta.get('defense')} on {meta.get('dataset')}")
        return None
    card = read_card(start)
    ref = card.get("train_state") or {}
    if ref.get("sha256") == sha256_file(state_path) or int(meta.get("epoch", 0)) > int(card.get("epochs") or 0):
        return tensors, meta
    announce(f"ignoring {state_path}: it is not the training state of {start.name} (older run)")
    return None


def _train(name, dataset, *, model, device, epochs, out_dir, seed, progress, announce, options, config_overrides, resume) -> Path:
    """:func:`train_defense` inside its seeded RNG block.

    A defense whose ``fit`` is resumable (ABS / E-ABS) gets a checkpoint at the end of every epoch:
    the training state file first (weights, optimisers, schedule, generator states; one atomic
    write), then the weights / card pair (:mod:`harness.store.checkpoints`). ``resume`` continues from that
    state bit for bit; without a state (old checkpoints, other defenses) it starts a fresh optimiser.
    """
    if not model.trainable:
        raise BenchUserError(f"defense {name!r} has no weights to train")
    exact = _resumable(model)
    previous: dict = {}
    state: tuple[dict, dict] | None = None
    done = 0
    module = model.checkpoint_module()
    model.use_training_services(TRAINING_SERVICES)
    if resume:
        # the checkpoint being written (--out) first: `bench train --resume --out DIR` continues DIR's
        own = Path(out_dir) / f"{stem(model.checkpoint_name(), dataset)}.safetensors" if out_dir is not None else None
        start = own if own is not None and own.is_file() else find_checkpoint(model.checkpoint_name(), dataset)
        if start is None:
            raise BenchUserError(f"--resume: no checkpoint for {model.checkpoint_name()} on {dataset} to resume from; train without --resume")
        state = _find_train_state(start, name, dataset, announce) if exact else None
        if state is None and model.init_checkpoint_name() is not None:
            raise BenchUserError(f"--resume: {name} fine-tunes {model.init_checkpoint_name()}, and {start} has no training state to continue exactly "
                                 "(a fine-tuning resumes only bit for bit); train it without --resume")
        if state is not None:
            tensors, meta = state
            try:
                module.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}, strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"training state {train_state_path(start)} does not fit the model ({str(exc).strip().splitlines()[0]})") from None
            previous = dict(meta["card"], sha256=read_card(start).get("sha256"))
            done = int(meta["epoch"])
            announce(f"resuming from {train_state_path(start)} after epoch {done} (optimiser, schedule and random state restored)")
        else:
            previous = load_checkpoint(module, start)
            if previous.get("defense", name) != name:
                raise BenchUserError(f"--resume: {start} was trained as {previous.get('defense')!r}, not {name!r}")
            done = int(previous.get("epochs") or 0)
            announce(f"resuming from {start} ({previous.get('epochs')} epochs; no training state: fresh optimiser and schedule)")
            seed = seed + done  # new shuffles, still reproducible
    if epochs is not None and epochs < 1:
        raise BenchUserError(f"--epochs must be >= 1, got {epochs}")
    unknown = set(config_overrides or {}) - set(model.default_train_config(dataset)) - OPTIONAL_CONFIG_KEYS
    if unknown:
        raise BenchUserError(f"unknown training-config key(s) {', '.join(sorted(unknown))} for {name}; known: {', '.join(sorted(set(model.default_train_config(dataset)) | OPTIONAL_CONFIG_KEYS))}")
    if state is not None:
        meta = state[1]
        config = dict(meta["config"], **(config_overrides or {}))
        planned = int(meta.get("planned_epochs") or 0)
        more = int(epochs) if epochs is not None else (planned - done if planned > done else int(model.default_train_config(dataset).get("epochs", 1)))
        config["epochs"] = done + more  # fit counts epochs from the start of the training
        seed = int(previous.get("seed", seed))
    else:
        config = dict(model.default_train_config(dataset), **(config_overrides or {}))
        if epochs is not None:
            config = dict(config, epochs=int(epochs))
    try:  # a bad schedule is a user error now, not a traceback after the data has loaded
        make_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=float(config.get("lr", 1e-3))), config, int(config.get("epochs", 1)))
    except (TypeError, ValueError) as exc:
        raise BenchUserError(f"training config: {exc}") from None
    train = datasets.load(dataset, "train")
    val = datasets.load(dataset, "val")
    model.to(device)
    recipe = ", ".join(f"{k}={v}" for k, v in config.items())
    remaining = config.get("epochs", 1) - (done if state is not None else 0)
    batches = remaining * -(-len(train.x) // max(1, int(config.get("batch_size", 512))))
    if "epochs" in config and batches > PROBE_MIN_BATCHES:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the probe leaves the RNG as it was
            estimate = f"estimated {_probe_seconds_per_epoch(model, train, config, device) * remaining / 60:.1f} min"
    else:  # the 2-batch probe would cost a good part of the run itself
        estimate = f"a short run ({batches} batches), not probed for an estimate"
    announce(f"training {name} on {dataset} ({len(train.x)} train / {len(val.x)} val images) with {recipe}; {estimate} on {device_name(device)}")
    gen = torch.Generator()
    if state is not None:  # continue every random stream where it stopped
        tensors = state[0]
        gen.set_state(tensors["rng/generator"])
        torch.set_rng_state(tensors["rng/torch"])
        if device.type == "cuda" and "rng/cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng/cuda"], device)
    else:
        torch.manual_seed(seed)  # any global-RNG use inside fit (e.g. dropout) is seeded too
        gen.manual_seed(seed)
    out = Path(out_dir) if out_dir else user_dir()
    path = out / f"{stem(model.checkpoint_name(), dataset)}.safetensors"
    state_path = train_state_path(path)
    t0 = time.perf_counter()

    # epochs the weights had before this training's own epoch count began: a resume without a training
    # state (fresh optimiser) starts counting at 0 on top of the old card's epochs; an exact resume
    # inherits the offset its state recorded (older states: the card's epochs minus the state's)
    if state is None:
        offset, history_before, fit_history = (done, list(previous.get("history", [])), []) if previous else (0, [], [])
    else:
        meta = state[1]
        offset = int(meta.get("epoch_offset", int(meta["card"].get("epochs") or done) - done))
        card_history = list(meta["card"].get("history", []))
        history_before = meta.get("history_before", card_history[:offset])
        fit_history = meta.get("fit_history", [dict(h, epoch=h["epoch"] - offset) if "epoch" in h else h for h in card_history[offset:]])

    def make_card(metrics: dict, wall: float) -> dict:
        card = {
            "defense": name,
            "dataset": dataset,
            "options": options,
            "defense_config": model.extra_info(),
            "command": command_line(),
            "config": config,
            "epochs": metrics.get("epochs", config.get("epochs")),
            "seed": seed,
            "wall_time_s": round(wall, 1),
            "val_acc": metrics.get("val_acc"),
            "history": metrics.get("history", []),
            "data_checksum": train.checksum,
            "data_provenance": datasets.provenance(train),
            "train_size": len(train.x),
            "code_commit": code_commit(),
            "device": device_name(device),
            "versions": package_versions(),
        }
        # further metrics of the defense's fit (e.g. val_pgd_acc, the checkpoint fine-tuning started from)
        card.update({k: v for k, v in metrics.items() if k not in card and k != "train_wall_time_s"})
        if previous:
            card["wall_time_s"] = round(float(previous.get("wall_time_s") or 0) + wall, 1)
            card["resumed_from"] = {"sha256": previous.get("sha256"), "epochs": done, "command": previous.get("command"), "resumed_from": previous.get("resumed_from")}
        # fit counts its own epochs from 0; the weights may have had ``offset`` epochs before it began
        card["epochs"] = offset + int(card["epochs"] or 0)
        card["history"] = list(history_before) + [dict(h, epoch=offset + h["epoch"]) if "epoch" in h else h for h in card["history"]]
        return card

    written: dict = {}

    def on_epoch_end(p: TrainProgress) -> None:
        last = p.history[-1] if p.history else {}
        card = make_card({**p.extra, "epochs": p.epoch, "val_acc": last.get("val_acc", last.get("val_acc_encoder")), "history": p.history}, time.perf_counter() - t0)
        card["planned_epochs"] = int(config["epochs"])
        tensors = {f"model/{k}": v for k, v in module.state_dict().items()}
        optimizers = {k: encode_state(sd, tensors, f"optimizer/{k}") for k, sd in p.optimizers.items()}
        scheduler = encode_state(p.scheduler, tensors, "scheduler")
        tensors["rng/generator"] = gen.get_state()
        tensors["rng/torch"] = torch.get_rng_state()
        if device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
        meta = {"format": 1, "defense": name, "dataset": dataset, "epoch": p.epoch, "planned_epochs": int(config["epochs"]),
                "config": config, "optimizers": optimizers, "scheduler": scheduler, "card": card,
                "epoch_offset": offset, "history_before": history_before, "fit_history": p.history, "fit_extra": p.extra}
        sha = save_train_state(state_path, tensors, meta)
        written["train_state"] = {"file": state_path.name, "sha256": sha, "epoch": p.epoch}
        save_checkpoint(module, path, dict(card, train_state=written["train_state"]))

    if exact:
        resume_from = None
        if state is not None:
            meta, tensors = state[1], state[0]
            resume_from = TrainProgress(done, fit_history, {k: decode_state(v, tensors) for k, v in meta["optimizers"].items()}, decode_state(meta["scheduler"], tensors), dict(meta.get("fit_extra") or {}))
        metrics = model.fit(train, val, config=config, device=device, generator=gen, progress=progress, resume=resume_from, on_epoch_end=on_epoch_end)
    else:
        metrics = model.fit(train, val, config=config, device=device, generator=gen, progress=progress)
    wall = time.perf_counter() - t0
    card = make_card(metrics, wall)
    if written:
        card["train_state"] = written["train_state"]
    save_checkpoint(module, path, card)
    announce(f"saved {path} (val accuracy {metrics.get('val_acc', float('nan')):.4f}, {wall / 60:.1f} min)")
    return path


def load_defense(
    name: str,
    dataset: str,
    *,
    device: torch.device,
    train_if_missing: bool = True,
    progress: bool = True,
    announce=print,
    options: dict | None = None,
    norm: str | None = None,
    checkpoint: str | Path | None = None,
):
    """A ready defense in eval mode plus its checkpoint card (``{}`` for weight-free defenses).

    ``checkpoint`` loads that file instead of the one the search path finds (e.g. an independent
    judge trained with another seed); it must exist.

    A missing checkpoint is trained for the defense that owns it: the wrapped base of a wrapper
    (``checkpoint_module()`` is a Defense), else the checkpoint's name, with the same ``options``.
    A defense whose weights live outside bench's checkpoint store (RobustBench's layout, see
    :mod:`defenses.robustbench`) overrides :meth:`Defense.load_external_weights`: it loads them itself
    and returns the card (``sha256``, ``path``, ...); ``norm`` is the evaluation's threat model
    (None when the caller has none), since such stores keep one file per threat model.
    """
    options = clean_options(options)
    model = build_defense(name, dataset, **options)
    card: dict = {}
    external = model.load_external_weights(norm=norm)
    if external is not None:
        card = external
    elif model.trainable:
        ckpt_name = model.checkpoint_name()
        path = Path(checkpoint) if checkpoint is not None else find_checkpoint(ckpt_name, dataset)
        if checkpoint is not None and not path.is_file():
            raise BenchUserError(f"checkpoint {path} not found")
        if path is None:
            owner = model.checkpoint_module()
            owner_name = owner.name if isinstance(owner, Defense) and owner.name else ckpt_name
            if not train_if_missing:
                raise BenchUserError(f"no checkpoint for {ckpt_name} on {dataset}; run `bench train --defense {owner_name} --dataset {dataset}{option_flags(options)}`")
            announce(f"no checkpoint for {ckpt_name} on {dataset}: training it first")
            path = train_defense(owner_name, dataset, device=device, progress=progress, announce=announce, options=options)
        card = load_checkpoint(model.checkpoint_module(), path)
        card["path"] = str(path)
        model.load_card(card)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, card
