"""Typed result files (harness/store/results.py): every committed file loads unchanged, round-trips
losslessly, new files are written as schema 2, malformed files are refused with a one-line error,
and the spec hashes the committed files record are the ones today's suites produce (so resuming works)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from harness.errors import BenchUserError
from harness.store.results import ABSENT, READABLE_SCHEMAS, SCHEMA_VERSION, FoolingFile, ResultFile, load_result, read_any, read_result, write_fooling, write_result
from threat_models import AttackSpec, ThreatModel, list_suites, load_suite

ROOT = Path(__file__).resolve().parents[2]
RESULT_FILES = sorted(p for p in (ROOT / "results").rglob("*.json") if p.parent.name in ("linf", "l2"))


def test_there_are_committed_result_files():
    assert len(RESULT_FILES) >= 20


#: evaluation and fooling-image files (synthesis and decomposition outputs have their own modules' formats)
ALL_JSON = sorted(p for p in (ROOT / "results").rglob("*.json") if p.parent.name in ("linf", "l2", "neat"))


@pytest.mark.parametrize("path", ALL_JSON, ids=lambda p: str(p.relative_to(ROOT / "results")))
def test_every_json_file_under_results_loads_through_the_typed_loader(path):
    typed = read_any(path)
    assert typed.to_dict() == dict(json.loads(path.read_text(encoding="utf-8")), schema=typed.to_dict()["schema"])


def test_fooling_file_round_trip_and_validation(tmp_path):
    src = next(p for p in ALL_JSON if p.parent.name == "neat")
    typed = read_any(src)
    assert isinstance(typed, FoolingFile) and typed.manifest["attack"] == "neat" and len(typed.images) == typed.manifest["n_images"]
    data = json.loads(src.read_text())
    out = write_fooling(tmp_path / "neat" / "results.json", data)
    assert json.loads(out.read_text()) == data
    name = next(iter(data["defenses"]))
    data["defenses"][name]["fooled"] += 1
    with pytest.raises(BenchUserError, match="fooled \\+ abstained \\+ other != n"):
        write_fooling(tmp_path / "neat" / "bad.json", data)


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: str(p.relative_to(ROOT / "results")))
def test_committed_file_loads_through_the_typed_loader_unchanged(path):
    raw = json.loads(path.read_text(encoding="utf-8"))
    typed = read_result(path)
    assert typed.schema == raw["schema"] and raw["schema"] in READABLE_SCHEMAS  # old files stay schema 1, rewritten ones are 2
    assert typed.data == raw  # nothing lost, nothing added (dict equality; key order is canonical)
    assert load_result(path) == raw
    m = typed.manifest
    assert len(typed.records) == m.n == len(m.sample_ids)
    for key, entry in m.attacks.items():
        assert entry.kind in ("bounded", "minimization") and entry.budget and entry.spec["name"] == key.split("@")[0]
    # the typed view holds the values, not strings
    r = typed.records[0]
    assert isinstance(r.clean_correct, bool) and all(isinstance(o.correct, bool) for o in r.attacks.values())


def test_write_gives_schema_2_and_reads_back_equal(tmp_path):
    src = next(p for p in RESULT_FILES if "certified_l2" in p.read_text())  # a file with every optional record key
    typed = read_result(src)
    out = write_result(tmp_path / "x.json", typed)
    again = read_result(out)
    assert again.schema == SCHEMA_VERSION == 2
    assert again.manifest == typed.manifest and again.records == typed.records
    assert json.loads(out.read_text())["schema"] == 2
    # an optional key a file does not hold stays absent; JSON null stays null
    assert typed.records[0].certified_l2 is not ABSENT
    no_cert = next(p for p in RESULT_FILES if "certified_l2" not in p.read_text())
    assert read_result(no_cert).records[0].certified_l2 is ABSENT and "certified_l2" not in read_result(no_cert).records[0].to_dict()


def test_unknown_keys_are_kept(tmp_path):
    data = json.loads(RESULT_FILES[0].read_text())
    data["manifest"]["from_a_newer_writer"] = {"x": 1}
    data["records"][0]["attacks"][next(iter(data["records"][0]["attacks"]))]["extra_field"] = 3
    p = tmp_path / "y.json"
    write_result(p, data)
    back = load_result(p)
    assert back["manifest"]["from_a_newer_writer"] == {"x": 1} and list(back["manifest"])[-1] == "from_a_newer_writer"
    assert back == dict(data, schema=2)


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.pop("records"), "unknown format"),
    (lambda d: d.update(schema=7), "unknown format"),
    (lambda d: d["manifest"].pop("sample_ids"), "missing key(s) sample_ids"),
    (lambda d: d["manifest"].update(n=3), "manifest n=3"),
    (lambda d: d["records"].reverse(), "sample indices differ"),
    (lambda d: d["records"][0].update(clean_correct="yes"), "'clean_correct' has a value of the wrong type"),
    (lambda d: d["records"][0]["attacks"].update(bogus={"correct": False, "abstained": False, "norm": 0.0}), "does not hold (bogus)"),
    (lambda d: d["records"][1]["attacks"][next(iter(d["records"][1]["attacks"]))].pop("norm"), "missing key(s) norm"),
])
def test_malformed_files_are_refused_with_one_line(tmp_path, damage, message):
    data = json.loads(RESULT_FILES[0].read_text())
    damage(data)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    with pytest.raises(BenchUserError) as exc:
        read_result(p)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_committed_spec_hashes_are_what_todays_suites_produce():
    """Resuming a committed file must find its finished attacks: the recorded hash of every attack key
    equals the hash of the spec the suite loader builds today (eps sweeps: hash plus eps)."""
    from harness.engine.runner import attack_jobs

    checked = 0
    for path in RESULT_FILES:
        m = read_result(path).manifest
        for key, e in m.attacks.items():
            s = e.spec
            spec = AttackSpec(s["name"], tuple(s["params"].items()), s["restarts"], s["eot"], s["seed"], s["label"])
            h = spec.spec_hash() if "@" not in key else hashlib.sha256(f"{spec.spec_hash()}@{e.eps!r}".encode()).hexdigest()[:12]
            assert h == e.spec_hash, (path, key)
        suites = m.suite.split("+")
        if not all(s in list_suites() for s in suites):
            continue
        for s in suites:
            suite = load_suite(s, norm=m.norm, dataset=m.dataset, randomized=m.randomized)
            for job in attack_jobs(suite.entries, ThreatModel(norm=m.norm, eps=m.eps), randomized=suite.randomized):
                if job.key in m.attacks:
                    assert job.hash == m.attacks[job.key].spec_hash, (path, job.key)
                    checked += 1
    assert checked >= 100
