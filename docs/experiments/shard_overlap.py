"""Issue-14 probe: which samples does one attack break that the others of the same row did not?

Reads the finished sweep shards of one attack (``--attack``, e.g. ``autoattack``) under
``results/.shards/<dataset>/<norm>/<defense>/<suite>/`` and, for the same shards, every other
attack's shard files. It then counts over the clean-correct samples of those shards: robust
under the attack, robust under all the others together, robust under both, and the samples each
side alone breaks. This works before the attack's row is merged: ``bench table`` shows the All cell
only once every shard has landed. Shard files that measured another checkpoint than the one a run
would load today (a sweep's stale shards, waiting to be rerun) are left out and counted as ``stale``.

    python docs/experiments/shard_overlap.py --defense eabs --norm linf --attack autoattack
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _load(path: Path, sha: str | None) -> dict | None:
    """A shard file's JSON (read as the sweep reads them), or None when it measured another checkpoint."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if sha is None or data["manifest"].get("checkpoint_sha256") == sha else None


def overlap(base: Path, attack: str, sha: str | None = None) -> dict:
    """Counts over the shards of ``attack`` under ``base`` (see the module docstring); with ``sha``,
    only shard files whose ``checkpoint_sha256`` is ``sha``."""
    files = sorted((base / attack).glob("shard-*.json"))
    loaded = [(f, _load(f, sha)) for f in files]
    shards = [(f, d) for f, d in loaded if d is not None]
    if not shards:
        raise SystemExit(f"no finished shards of {attack!r} for this checkpoint under {base}")
    tot = {"shards": len(shards), "stale": len(files) - len(shards), "samples": 0, "clean_correct": 0, "robust_attack": 0, "robust_others": 0, "robust_all": 0, "only_attack_breaks": 0, "only_others_break": 0, "others": set()}
    for f, data in shards:
        recs = data["records"]
        others: dict[int, list[bool]] = {}
        for g in base.glob(f"*/{f.name}"):
            if g.parent.name == attack or (other := _load(g, sha)) is None:
                continue
            theirs = other["records"]
            if [r["index"] for r in theirs] != [r["index"] for r in recs]:
                raise SystemExit(f"{g} holds other samples than {f}: not shards of the same sweep")
            for i, r in enumerate(theirs):
                for k, v in r["attacks"].items():
                    tot["others"].add(k)
                    others.setdefault(i, []).append(bool(v["correct"]))
        for i, r in enumerate(recs):
            tot["samples"] += 1
            if not r["clean_correct"]:
                continue
            a, o = bool(r["attacks"][attack]["correct"]), all(others.get(i, []))
            tot["clean_correct"] += 1
            tot["robust_attack"] += a
            tot["robust_others"] += o
            tot["robust_all"] += a and o
            tot["only_attack_breaks"] += o and not a
            tot["only_others_break"] += a and not o
    tot["others"] = sorted(tot["others"])
    return tot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results-dir", default="results")
    p.add_argument("--dataset", default="fmnist")
    p.add_argument("--norm", default="linf")
    p.add_argument("--defense", default="eabs")
    p.add_argument("--suite", default="paper-generative")
    p.add_argument("--attack", default="autoattack")
    p.add_argument("--any-checkpoint", action="store_true", help="count shards of every checkpoint, not only today's")
    a = p.parse_args()
    from harness.engine.models import today_checkpoint_sha

    sha = None if a.any_checkpoint else today_checkpoint_sha(a.defense, a.dataset)
    base = Path(a.results_dir) / ".shards" / a.dataset / a.norm / a.defense / a.suite
    print(json.dumps(overlap(base, a.attack, sha), indent=1))


if __name__ == "__main__":
    main()
