"""Calibrate a defense's reject (abstain) threshold on the validation split and store it in the model card.

Generative classifiers (ABS, E-ABS and its ablations) score class ``k`` by the negative class loss
``-l_k(x)`` (thesis eq. 2.2 / 2.6). Seed 000 (section 3.2) rejects an input whose *best* class loss
``min_k l_k(x)`` is larger than anything a clean image produces; we set the threshold to a high
quantile (default 0.99: 1 % of clean validation images are rejected) of that loss over clean
validation images, computed with the defense's full inference (``predict``, not the encoder proxy).

``bench calibrate --defense eabs --dataset fmnist`` writes into the checkpoint's model card::

    reject_threshold      the threshold (loaded by ``Defense.load_card``)
    reject_calibration    {quantile, n, seed, draws, defense_config, val_acc_inference, val_rejected, wall_time_s, command}

``val_acc_inference`` is the validation accuracy of the full inference on the same images, the
number to compare with the thesis's clean accuracy (the training card's ``val_acc`` is the
encoder's, a cheap proxy). With ``test_n`` (``--test-n 1000``) the first ``test_n`` test images are
then scored exactly as ``bench run`` scores its clean pass (mean of ``draws`` inferences, the new
threshold applied, abstaining counts as an error) and recorded as ``test_clean_accuracy``
{n, images, draws, acc, abstained, wall_time_s}. The weights are not touched, so result files keep their checkpoint hash;
abstaining counts as an error in every norm-bounded result, so a threshold never raises robustness.
"""

from __future__ import annotations

import time

import torch

from harness.store.checkpoints import find_checkpoint, read_card
from harness.errors import BenchUserError
from harness.store.results import atomic_write_json


def best_class_loss(scores: torch.Tensor) -> torch.Tensor:
    """``min_k l_k(x)`` from scores ``-l_k(x)``: the quantity the reject threshold bounds."""
    return -scores.detach().amax(1)


def calibrate(
    defense: str,
    dataset: str,
    *,
    quantile: float = 0.99,
    n: int = 1000,
    seed: int = 0,
    batch_size: int = 100,
    draws: int = 5,
    device: str = "auto",
    options: dict | None = None,
    progress: bool = True,
    announce=print,
    test_n: int = 0,
) -> dict:
    """Calibrate ``defense``'s reject threshold on ``n`` validation images; write and return the card fields.

    A randomized defense (E-ABS) is scored like the harness verifies it: the mean score of ``draws``
    independent inferences (``bench run``'s EOT 5), and the threshold applies to that mean.
    """
    from harness import datasets
    from harness.engine.models import load_defense
    from harness.store.provenance import command_line, resolve_device
    from harness.engine.runner import sample_ids
    from harness.engine.verify import mean_scores

    if not 0 < quantile <= 1:
        raise BenchUserError(f"--quantile must be in (0, 1], got {quantile}")
    if draws < 1:
        raise BenchUserError(f"--draws must be >= 1, got {draws}")
    dev = resolve_device(device)
    model, card = load_defense(defense, dataset, device=dev, train_if_missing=False, progress=progress, announce=announce, options=options)
    if not model.supports_rejection:
        raise BenchUserError(f"defense {defense!r} has no reject option (only generative classifiers such as abs and eabs abstain)")
    path = find_checkpoint(model.checkpoint_name(), dataset)
    if path is None or "sha256" not in card:
        raise BenchUserError(f"no checkpoint for {defense} on {dataset}; train it first")
    val = datasets.load(dataset, "val")
    ids = sample_ids(len(val.x), n, seed)
    x, y = val.x[ids], val.y[ids]
    gen = torch.Generator(device=dev).manual_seed(seed)
    draws = draws if model.randomized else 1  # as recorded in the card
    model.reject_threshold = None
    losses, correct = [], []
    t0 = time.perf_counter()
    batches = range(0, len(x), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"calibrate {defense}", unit="batch")
    with torch.no_grad():
        for i in batches:
            scores = mean_scores(model, x[i : i + batch_size].to(dev), generator=gen, draws=draws).cpu()
            losses.append(best_class_loss(scores))
            correct.append(scores.argmax(1) == y[i : i + batch_size])
    loss = torch.cat(losses)
    threshold = float(torch.quantile(loss, quantile))
    fields = {
        "reject_threshold": threshold,
        "reject_calibration": {
            "quantile": quantile,
            "n": len(ids),
            "seed": seed,
            "split": "val",
            "draws": draws,
            "options": dict(options or {}),
            # the settings the calibration ran with (e.g. the inference): a later change makes it stale
            "defense_config": {k: v for k, v in model.extra_info().items() if k != "reject_threshold"},
            "val_acc_inference": round(float(torch.cat(correct).float().mean()), 4),
            "val_rejected": round(float((loss > threshold).float().mean()), 4),
            "best_loss_median": round(float(loss.median()), 4),
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "command": command_line(),
        },
    }
    if test_n:
        fields["test_clean_accuracy"] = _test_accuracy(model, threshold, test_n=test_n, seed=seed, batch_size=batch_size, draws=draws, device=dev, progress=progress, name=defense, dataset=dataset)
    stored = read_card(path)
    if stored.get("sha256") != card["sha256"]:
        raise BenchUserError(f"model card of {path} changed while calibrating; run again")
    atomic_write_json(path.with_suffix(".json"), dict(stored, **fields))
    fields["card"] = str(path.with_suffix(".json"))
    return fields


def _test_accuracy(model, threshold: float, *, test_n: int, seed: int, batch_size: int, draws: int, device, progress: bool, name: str, dataset: str) -> dict:
    """Clean accuracy on the first ``test_n`` test images, scored like ``bench run``'s clean pass."""
    from harness import datasets
    from harness.engine.verify import score

    test = datasets.load(dataset, "test")
    if test_n > len(test.x):
        raise BenchUserError(f"--test-n {test_n} exceeds the {len(test.x)} test images of {dataset}")
    model.reject_threshold = threshold
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    ok, abst = [], []
    t0 = time.perf_counter()
    batches = range(0, test_n, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"test accuracy {name}", unit="batch")
    for i in batches:
        j = min(i + batch_size, test_n)
        c, a = score(model, test.x[i:j].to(device), test.y[i:j].to(device), generator=gen, draws=draws)
        ok.append(c.cpu())
        abst.append(a.cpu())
    ok_t, ab_t = torch.cat(ok), torch.cat(abst)
    return {"n": test_n, "images": f"the first {test_n} of the test split", "draws": draws, "acc": round(float(ok_t.float().mean()), 4),
            "abstained": round(float(ab_t.float().mean()), 4), "wall_time_s": round(time.perf_counter() - t0, 1)}
