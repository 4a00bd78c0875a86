"""Gradient-masking sanity checks (Athalye et al. 2018; Carlini et al. 2019 checklist).

Run with every ``bench run`` and recorded as warnings in the result manifest (``bench table`` prints
them). A warning is not a verdict; it says where the evaluation may over-report robustness:

* zero or non-finite attack gradients on clean inputs (gradient attacks are blind there),
* randomness in a defense that declares itself deterministic (EOT would be needed),
* for a randomized defense, how often its own randomness flips the verdict on a clean input (two
  independent scorings disagree): the "All" row takes the worst case over every attack's fresh
  re-scoring, so part of a gap between "All" and the best single attack can be this randomness,
* gradient-free attacks (Square, Boundary, ES-PGD, AutoAttack's Square component) or transfer attacks
  (PGD on a source model: the wrapped base, the data set's reference CNN or a distilled surrogate)
  beating the gradient attacks, combined per group, by more than the Wilson 95% interval of the
  gradient attacks' accuracy (the declared gradient is masked or misleading),
* no attack at all that does without the declared gradient (masking would go unnoticed),
* accuracy that increases with eps within an eps sweep (the attack is not working properly),
* attacks whose doubled budget (:mod:`harness.engine.saturation`, ``bench run --check-budget``) lowers
  accuracy by more than 2 points; when the worst case over all attacks drops by that much, the
  verdict is unreliable ("budget not saturated"); a budget check that left gradient attacks of the
  row undoubled (not started, or stopped between blocks) is named too.

:func:`verdict` turns a result file into a :class:`Verdict` (reliable or not, and why) for
``bench table`` and ``leaderboard.md``; the gradient-consistency check lives in :mod:`harness.engine.gradcheck`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.engine.eot import EOTModel
from harness.store.results import pending_attacks

MARGIN = 0.05  # accuracy points (as a fraction) an eps sweep may rise by before it is flagged
UNDECLARED_RANDOMNESS = "declares itself deterministic but its scores change"
FLIP_WARN = 0.02  # fraction of clean inputs whose verdict two scorings of a randomized defense may disagree on silently


def model_checks(defense, x: torch.Tensor, y: torch.Tensor, *, draws: int, seed: int = 0, max_samples: int = 16) -> list[str]:
    """Gradient checks on ``max_samples`` clean inputs; determinism / randomness checks on all of ``x``."""
    from harness.engine.verify import score

    warnings = list(defense.settings_warnings())
    if defense.randomized and len(x) > 1:
        a, _ = score(defense, x, y, generator=torch.Generator(device=x.device).manual_seed(seed + 1), draws=draws)
        b, _ = score(defense, x, y, generator=torch.Generator(device=x.device).manual_seed(seed + 2), draws=draws)
        flips = int((a != b).sum())
        if flips / len(x) >= FLIP_WARN:
            warnings.append(
                f"randomized defense: two independent scorings ({draws} draw(s) each) of the same {len(x)} clean inputs disagree on "
                f"{flips} ({flips / len(x):.0%}); every attack's verification is a fresh scoring, so the All row's worst case "
                "includes flips from this randomness alone"
            )
    x, y = x[:max_samples], y[:max_samples]
    xg = x.clone().requires_grad_(True)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    scores = EOTModel(defense, draws=draws, generator=gen)(xg)
    torch.nn.functional.cross_entropy(scores, y).backward()
    g = xg.grad
    if g is None:
        return [f"no gradient reaches the input on {len(x)} clean samples: gradient attacks cannot work; check the declared attack gradient"]
    flat = g.flatten(1)
    bad = int((~torch.isfinite(flat)).any(1).sum())
    if bad:
        warnings.append(f"non-finite attack gradients on {bad}/{len(x)} clean samples")
    zero = int((flat.abs().sum(1) == 0).sum())
    if zero:
        warnings.append(f"zero attack gradient on {zero}/{len(x)} clean samples: gradient masking? gradient attacks are blind there")
    if not defense.randomized:
        with torch.no_grad():
            a = defense.predict(x, generator=torch.Generator(device=x.device).manual_seed(seed + 1))
            b = defense.predict(x, generator=torch.Generator(device=x.device).manual_seed(seed + 2))
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            warnings.append(f"defense {UNDECLARED_RANDOMNESS} between calls: it should be randomized=True (EOT)")
    return warnings


def _uses(key: str):
    """The registered Attack of a result-file attack key (``fgm@0.2`` -> fgm), or None for unknown attacks."""
    from harness.attacks import find_attack

    return find_attack(key.split("@")[0])


def group_accuracies(data: dict) -> dict[str, tuple[int, int]]:
    """Per group of attacks (``gradient``, ``gradient-free``, ``transfer``): ``(robust, n)`` -- the
    samples that are clean-correct and survived every attack of the group.

    A find of AutoAttack counts for the group of the component that made it (``by``: its Square is
    gradient-free). Noise does not count as a gradient-free *check* (random draws, not a search) but
    is part of the group's accuracy. Eps-sweep attacks (``fgm@0.2``) are left out.
    """
    recs = data.get("records") or []
    attacks = data["manifest"].get("attacks") or {}
    n = len(recs)
    broken = {u: [False] * n for u in ("gradient", "gradient-free", "transfer")}
    ran = set()
    for key in attacks:
        info = _uses(key)
        if info is None or "@" in key:
            continue
        ran.add(info.uses)
        for i, r in enumerate(recs):
            e = (r.get("attacks") or {}).get(key)
            if e is None:
                continue
            if r["clean_correct"] and not e["correct"]:
                use = info.uses_of(e.get("by"))
                broken[use][i] = True
                ran.add(use)
    clean = [bool(r["clean_correct"]) for r in recs]
    return {u: (sum(c and not b for c, b in zip(clean, broken[u])), n) for u in broken if u in ran}


def masking_checked(data: dict) -> bool:
    """True when an attack that does not use the declared gradient searched for adversarials:
    a gradient-free attack other than random noise, a transfer attack, or AutoAttack standard's Square."""
    for key, entry in (data["manifest"].get("attacks") or {}).items():
        info = _uses(key)
        if info is None or "@" in key:
            continue
        if info.uses == "transfer" or (info.uses == "gradient-free" and info.name != "noise"):
            return True
        if "gradient-free" in info.components.values() and "Square" in str((entry or {}).get("budget", "")):
            return True
    return False


def beaten_by(data: dict) -> list[tuple[str, float, float, float]]:
    """Groups that beat the gradient attacks: ``(group, its accuracy, gradient accuracy, Wilson lower
    bound of the gradient accuracy)`` for every group whose accuracy lies below that bound."""
    from harness.stats import wilson_interval

    acc = group_accuracies(data)
    if "gradient" not in acc or not acc["gradient"][1]:
        return []
    kg, n = acc["gradient"]
    lo, _ = wilson_interval(kg, n)
    out = []
    for group in ("gradient-free", "transfer"):
        if group in acc and acc[group][0] / n < lo:
            out.append((group, acc[group][0] / n, kg / n, lo))
    return out


# A phrase each warning of :func:`outcome_checks` carries: a recorded warning with one is a snapshot of
# an outcome check, which :func:`verdict` recomputes from the file (a budget check resumed since, a
# re-merge or a new wording leave the snapshot stale) rather than showing both.
OUTCOME_MARKERS = (
    "beat the gradient attacks (", ": budget not saturated: ", "the worst case over all attacks drops by ",
    "budget check incomplete (", "no gradient-free or transfer attack ran (", ": verdict unstable: ",
    ": the attack is not working properly",
)


def is_outcome_check(warning: str) -> bool:
    """Whether ``warning`` came from :func:`outcome_checks` (see :data:`OUTCOME_MARKERS`)."""
    return any(m in warning for m in OUTCOME_MARKERS)


def outcome_checks(data: dict, *, margin: float = MARGIN) -> list[str]:
    """Checks on the per-sample outcomes of a result file (each carries one of :data:`OUTCOME_MARKERS`)."""
    recs, attacks = data["records"], data["manifest"].get("attacks", {})
    if not recs:
        return []
    warnings = []
    for group, a, ag, lo in beaten_by(data):
        what = "gradient-free attacks (Square, Boundary, ES-PGD, noise, AutoAttack's Square)" if group == "gradient-free" else "transfer attacks from a source model"
        warnings.append(f"{what} ({a:.1%}) beat the gradient attacks ({ag:.1%}, Wilson 95% lower bound {lo:.1%}): the declared gradient is masked or misleading; the result is unreliable")
    from harness.engine.saturation import attack_drop, headline_drop, progress, unchecked, unsaturated

    check = data["manifest"].get("budget_check") or {}
    for key, e in unsaturated(data):
        drop, so_far = attack_drop(e, check.get("n")), progress(e)
        # an unfinished check already past the threshold: its further blocks can only break more
        warnings.append(f"{key}: budget not saturated: {e.get('budget_doubled')} breaks samples that {e.get('budget')} left robust: accuracy "
                        f"{float(e['acc']):.1%} -> {'at most ' if so_far or e.get('narrowed_from') else ''}{float(e['acc']) - drop:.1%} counting both on the first {check.get('n')} samples"
                        + (f" (check unfinished: {so_far})" if so_far else ""))
    drop = headline_drop(data)
    if drop is not None and drop > float(check.get("threshold", 0.02)):
        going = ", ".join(k for k, e in (check.get("attacks") or {}).items() if isinstance(e, dict) and progress(e))
        so_far = f" so far ({going} unfinished; their further blocks can only break more)" if going else ""
        warnings.append(f"the worst case over all attacks drops by {'at least ' if going else ''}{drop * 100:.1f} points on the first {check.get('n')} samples "
                        f"with the doubled budgets{so_far}: the row over-reports robustness; attack harder")
    left = unchecked(data)
    if left:
        warnings.append(f"budget check incomplete ({'; '.join(left)}): its verdict on the worst case covers only the attacks it finished")
    if attacks and not masking_checked(data):
        warnings.append("no gradient-free or transfer attack ran (only the declared gradient was used): masked gradients would go unnoticed")
    from harness.stats import ALL, recheck_summary

    for row in recheck_summary(data):  # randomized defenses: verdicts a second, independent scoring reverses
        if row["unstable"]:
            what = "the worst case over all attacks" if row["attack"] == ALL else row["attack"]
            warnings.append(f"{what}: verdict unstable: a second, independent scoring of the same candidates breaks {row['robust_flipped']} of its "
                            f"{row['robust']} robust samples ({row['acc']:.1%} -> {row['acc_both']:.1%} if a sample must survive both scorings, "
                            f"{row['checked']} of {row['attacked']} attacked samples checked)")
    acc = {k: sum(r["attacks"][k]["correct"] for r in recs if k in r["attacks"]) / len(recs) for k in attacks}
    base = {k: k.split("@")[0] for k in acc}
    sweeps: dict[str, list[tuple[float, float]]] = {}
    for k, a in acc.items():
        if "@" in k and "eps" in attacks[k]:
            sweeps.setdefault(base[k], []).append((float(attacks[k]["eps"]), a))
    for name, pts in sweeps.items():
        pts.sort()
        for (e0, a0), (e1, a1) in zip(pts, pts[1:]):
            if a1 > a0 + margin:
                warnings.append(f"{name}: accuracy rises from {a0:.1%} at eps {e0:g} to {a1:.1%} at eps {e1:g}: the attack is not working properly")
    return warnings


@dataclass(frozen=True)
class Verdict:
    """Whether a result can be trusted, judged from its result file alone (a pure function of it).

    ``reliable`` is False when the gradient-consistency check failed (:mod:`harness.engine.gradcheck`), when
    gradient-free or transfer attacks beat the gradient attacks by more than the Wilson interval,
    when a defense that declares itself deterministic is not, when the file is a partial sweep
    merge whose other attacks are still pending (``bench sweep --merge-partial``), or when the budget
    check its sweep plan asks for (``budget_check_planned``) has work left. ``reasons``: short tags for tables;
    ``warnings``: every warning of the file: the defense's own recorded at run time, then the outcome
    checks of the file as it is now (recorded snapshots of those are replaced, not repeated).
    """

    reliable: bool
    reasons: tuple[str, ...]
    warnings: tuple[str, ...]
    checked: bool  # an attack that does not use the declared gradient ran

    @property
    def label(self) -> str:
        if not self.reliable:
            return "unreliable: " + "; ".join(self.reasons)
        return "reliable" if self.checked else "unchecked (no gradient-free/transfer attack)"


def verdict(data: dict) -> Verdict:
    """The :class:`Verdict` of one loaded result file."""
    man = data["manifest"]
    reasons = []
    check = man.get("gradient_check") or {}
    if check.get("verdict") == "inconsistent":
        reasons.append("gradient check failed")
    for group, *_ in beaten_by(data):
        reasons.append("Square/gradient-free beat gradient attacks" if group == "gradient-free" else "transfer beat gradient attacks")
    from harness.engine.saturation import headline_drop

    drop = headline_drop(data)
    if drop is not None and drop > float((man.get("budget_check") or {}).get("threshold", 0.02)):
        reasons.append("budget not saturated")
    recorded = [w for w in man.get("warnings") or [] if isinstance(w, str)]
    if any(UNDECLARED_RANDOMNESS in w for w in recorded):
        reasons.append("undeclared randomness")
    pending = pending_attacks(man)
    if pending:  # a partially merged sweep: the attacks still to come can only lower "All"
        reasons.append(f"incomplete: {', '.join(pending)} pending")
    planned = man.get("budget_check_planned")
    if isinstance(planned, dict) and planned.get("n"):  # a sweep plan's check that has not finished: it can only lower "All"
        from harness.engine.saturation import pending as check_left

        left = check_left(data, int(planned["n"]), planned.get("attacks"))
        if left:
            reasons.append(f"budget check pending: {', '.join(left)}")
    model = [w for w in recorded if not is_outcome_check(w)]  # the defense's own, from run time
    fresh = [w for w in outcome_checks(data) if w not in model]  # the outcome checks of the file as it is now
    return Verdict(not reasons, tuple(reasons), tuple(model + fresh), masking_checked(data))
