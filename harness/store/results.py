"""Result files: one JSON per (dataset, norm, defense), typed, validated, written atomically, resumable per attack.

This module owns the format: the frozen dataclasses below are the only description of it, and
every result file is read (:func:`read_result`), validated and written (:func:`write_result`,
through :func:`benchcore.io.atomic_write`, the one atomic writer of the project) here.

Layout: ``<results_dir>/<dataset>/<norm>/<defense>.json`` (``<defense>-<key><value>.json`` with
defense options)::

    {
      "schema": 2,                                   # 1: files written before the typed format (same keys; read unchanged)
      "manifest": {                                  # Manifest
        "defense": "cnn", "defense_options": {},     # constructor options (--arch, --option KEY=VALUE)
        "dataset": "fmnist", "norm": "linf", "eps": 0.1, "eps_label": "0.1",
        "suite": "quick",                            # sweeps merged from several suites: "quick+paper"
        "seed": 0, "n": 200, "sample_ids": [...],    # test-set indices, same order as records
        "device": "cpu", "versions": {...}, "commit": "abc123", "command": "bench run ...",
        "data": {...},                               # data-set provenance (files, checksums)
        "checkpoint_sha256": "...", "checkpoint_epochs": 30,
        "randomized": false, "score_draws": 1,       # predict draws per scoring (EOT of the suite for randomized defenses)
        "gradient_policy": "...", "paper": "...",
        "defense_config": {...},                     # what the defense used (Defense.info().extra, e.g. its smoothing radius)
        "attacks": {                                 # AttackEntry per finished attack key, in run order
          "pgd": {"spec": {...AttackSpec...}, "spec_hash": "...", "eps": 0.1, "eps_label": "0.1",
                  "kind": "bounded"|"minimization", "library": "foolbox",
                  "budget": "40 steps x 1 restarts, EOT 1", "wall_time_s": 12.3,
                  "notes": ["transfer source: ..."]}   # optional: what the adapter reported
        },                                           # eps sweeps: one key per eps ("fgm@0.2") with its own eps
        "clean_wall_time_s": 0.4, "created": "2026-11-23T08:00:00Z",
        "budget_check": {...},                       # optional: bench run --check-budget (harness/engine/saturation.py documents it)
        "gradient_check": {...},                     # the gradient-consistency check (harness/engine/gradcheck.py)
        "warnings": ["..."],                         # trust checks at run time (harness/engine/sanity.py)
        "pending_attacks": {"noise": "1/8 shards"}   # optional: bench sweep --merge-partial, attacks still running (pending_attacks())
      },
      "records": [                                   # Record per sample, in sample_ids order
        {"index": 12, "label": 3, "clean_correct": true, "clean_abstained": false,
         "attacks": {"pgd": {"correct": false, "abstained": false, "norm": 0.1,   # Outcome
                             "min_norm": 0.08,       # minimization attacks: smallest verified adversarial distance
                             "by": "square",         # optional: the component that found it (AutoAttack)
                             "recheck_flip": false}},  # randomized defenses: a second independent scoring reverses the verdict
         "certified_l2": 0.31}                       # optional: thesis eq. 2.7 lower bound (defenses that have one)
      ]
    }

``correct`` under an attack means: clean-correct and no verified adversarial example was found
(abstaining counts as an error). ``norm`` is the perturbation norm (in the file's threat-model
norm) of the best verified adversarial example, or ``null`` when none was found; a sample that is
misclassified (or abstained on) before the attack is adversarial at distance 0.

Fooling-image results (``bench neat``, :mod:`harness.experiments.fooling`):
``<out>/<dataset>/neat/results.json`` (:class:`FoolingFile`)::

    {
      "schema": 1,
      "manifest": {"attack": "neat", "source": "cnn", "dataset": "fmnist", "seed": 0, "population": ..., "generations": ...,
                   "threshold": 0.9, "n_images": 30, "n_reached": 30, ...provenance as above...},
      "images": [{"index": 0, "target": 3, "confidence": 0.99, "generations": 12, "reached": true}],   # FoolingImage
      "defenses": {"cnn": {"n": 30, "fooled": 30, "abstained": 0, "other": 0, "fooled_rate": 1.0, ...,  # FoolingScore
                           "records": [{"index": 0, "target": 3, "prediction": 3, "abstained": false, "outcome": "fooled"}]}},
      "skipped": {"eabs": "no checkpoint ..."}
    }

Optional keys that a file does not hold stay absent when it is written back (:data:`ABSENT`);
keys this module does not know (a newer writer's) are kept in ``extra`` and written back after the
known ones, so reading and writing a file never loses anything.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from benchcore.io import atomic_write, atomic_write_json, data_files, dumps_json
from harness.errors import BenchUserError

__all__ = ["ABSENT", "SCHEMA_VERSION", "READABLE_SCHEMAS", "Outcome", "Record", "AttackEntry", "Manifest", "ResultFile",
           "FoolingImage", "FoolingScore", "FoolingFile", "atomic_write", "atomic_write_json", "read_result", "write_result",
           "read_fooling", "write_fooling", "read_any", "pending_attacks", "load_result", "load_results", "result_path", "list_result_sets"]

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)


class _Absent:
    """The value of an optional key a file does not hold (distinct from JSON ``null``)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))


class _Doc:
    """Dict <-> frozen dataclass for one JSON object of the format: field order is key order,
    ``ABSENT`` optional fields are left out, unknown keys go to ``extra``."""

    #: field name -> accepted JSON types (bool is checked apart: it is an int to Python)
    TYPES: ClassVar[dict[str, tuple]] = {}
    #: fields that must be present
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    #: nested documents: field name -> (class, "map" | None)
    NESTED: ClassVar[dict[str, type]] = {}

    @classmethod
    def _names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_dict(cls, d: Any, where: str = ""):
        if not isinstance(d, dict):
            raise BenchUserError(f"{where or cls.__name__}: expected a JSON object, got {type(d).__name__}")
        names = cls._names()
        missing = [k for k in cls.REQUIRED if k not in d]
        if missing:
            raise BenchUserError(f"{where or cls.__name__}: missing key(s) {', '.join(missing)}")
        kw = {}
        for k in names:
            v = d.get(k, ABSENT)
            if v is not ABSENT:
                cls._check(k, v, where)
                if k in cls.NESTED:
                    sub = cls.NESTED[k]
                    v = {key: sub.from_dict(val, f"{where}.{k}.{key}") for key, val in v.items()}
            kw[k] = v
        kw["extra"] = {k: v for k, v in d.items() if k not in names}
        return cls(**kw)

    @classmethod
    def _check(cls, key: str, v: Any, where: str) -> None:
        types = cls.TYPES.get(key)
        if types is None:
            return
        is_bool = isinstance(v, bool)
        ok = isinstance(v, types) and (not is_bool or bool in types)
        if ok and isinstance(v, float) and not math.isfinite(v):
            ok = False
        if not ok:
            raise BenchUserError(f"{where or cls.__name__}: {key!r} has a value of the wrong type ({v!r})")

    def to_dict(self) -> dict:
        out = {}
        for k in self._names():
            v = getattr(self, k)
            if v is ABSENT:
                continue
            if k in self.NESTED:
                v = {key: val.to_dict() for key, val in v.items()}
            out[k] = v
        out.update(self.extra)
        return out

    def replace(self, **changes):
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Outcome(_Doc):
    """One sample under one attack (a record's ``attacks[key]``)."""

    correct: bool
    abstained: bool
    norm: float | None
    min_norm: Any = ABSENT  # float | None: minimization attacks only
    by: Any = ABSENT  # str: the component that found the kept adversarial (AutoAttack)
    recheck_flip: Any = ABSENT  # bool: randomized defenses: a second, independent scoring reverses the verdict (harness/engine/verify.py)
    extra: Mapping[str, Any] = field(default_factory=dict)

    TYPES: ClassVar = {"correct": (bool,), "abstained": (bool,), "norm": _OPT_NUM, "min_norm": _OPT_NUM, "by": (str,), "recheck_flip": (bool,)}
    REQUIRED: ClassVar = ("correct", "abstained", "norm")


@dataclass(frozen=True)
class Record(_Doc):
    """One sample: its clean outcome and its :class:`Outcome` per attack key."""

    index: int
    label: int
    clean_correct: bool
    clean_abstained: bool
    attacks: Mapping[str, Outcome]
    certified_l2: Any = ABSENT  # float: thesis eq. 2.7 lower bound on the L2 adversarial distance
    extra: Mapping[str, Any] = field(default_factory=dict)

    TYPES: ClassVar = {"index": (int,), "label": (int,), "clean_correct": (bool,), "clean_abstained": (bool,), "attacks": (dict,),
                       "certified_l2": _OPT_NUM}
    REQUIRED: ClassVar = ("index", "label", "clean_correct", "clean_abstained", "attacks")
    NESTED: ClassVar = {"attacks": Outcome}


@dataclass(frozen=True)
class AttackEntry(_Doc):
    """One finished attack key of a manifest: its spec, budget, threat-model eps and wall time."""

    spec: Mapping[str, Any]
    spec_hash: str
    eps: Any = ABSENT  # float: the eps it was verified against (one eps of a sweep: its own)
    eps_label: Any = ABSENT
    kind: str = "bounded"
    library: Any = ABSENT
    budget: str = ""
    wall_time_s: float = 0.0
    notes: Any = ABSENT  # list[str]: what the adapter reported
    extra: Mapping[str, Any] = field(default_factory=dict)

    TYPES: ClassVar = {"spec": (dict,), "spec_hash": (str,), "eps": _NUM, "eps_label": (str,), "kind": (str,), "library": (str,),
                       "budget": (str,), "wall_time_s": _NUM, "notes": (list,)}
    REQUIRED: ClassVar = ("spec", "spec_hash", "kind", "budget", "wall_time_s")


@dataclass(frozen=True)
class Manifest(_Doc):
    """Everything that defines and documents one evaluation (see the module docstring)."""

    defense: str
    defense_options: Any = ABSENT
    dataset: str = ""
    norm: str = ""
    eps: float = 0.0
    eps_label: Any = ABSENT
    suite: str = ""
    seed: int = 0
    n: int = 0
    sample_ids: tuple = ()
    device: Any = ABSENT
    versions: Any = ABSENT
    commit: Any = ABSENT
    command: Any = ABSENT
    data: Any = ABSENT
    checkpoint_sha256: Any = ABSENT
    checkpoint_epochs: Any = ABSENT
    randomized: Any = ABSENT
    score_draws: Any = ABSENT
    gradient_policy: Any = ABSENT
    paper: Any = ABSENT
    defense_config: Any = ABSENT
    attacks: Mapping[str, AttackEntry] = field(default_factory=dict)
    clean_wall_time_s: Any = ABSENT
    created: Any = ABSENT
    budget_check: Any = ABSENT
    gradient_check: Any = ABSENT
    warnings: Any = ABSENT
    pending_attacks: Any = ABSENT
    extra: Mapping[str, Any] = field(default_factory=dict)

    TYPES: ClassVar = {
        "defense": (str,), "defense_options": (dict,), "dataset": (str,), "norm": (str,), "eps": _NUM, "eps_label": (str,), "suite": (str,),
        "seed": (int,), "n": (int,), "sample_ids": (list,), "versions": (dict,), "data": (dict, type(None)), "randomized": (bool,),
        "score_draws": (int,), "defense_config": (dict, type(None)), "attacks": (dict,), "clean_wall_time_s": _OPT_NUM,
        "budget_check": (dict,), "gradient_check": (dict,), "warnings": (list,), "pending_attacks": (dict,),
    }
    REQUIRED: ClassVar = ("defense", "dataset", "norm", "eps", "suite", "seed", "n", "sample_ids", "attacks")
    NESTED: ClassVar = {"attacks": AttackEntry}


@dataclass(frozen=True)
class ResultFile:
    """A whole result file: ``schema``, :class:`Manifest` and one :class:`Record` per sample id."""

    manifest: Manifest
    records: tuple[Record, ...]
    schema: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, d: Any, where: str = "result file") -> "ResultFile":
        """Validate a loaded JSON object (schema 1 or 2)."""
        if not isinstance(d, dict) or d.get("schema") not in READABLE_SCHEMAS or "records" not in d or "manifest" not in d:
            raise BenchUserError(f"{where} has an unknown format (expected schema {' or '.join(map(str, READABLE_SCHEMAS))}); rerun with --fresh")
        manifest = Manifest.from_dict(d["manifest"], f"{where}: manifest")
        if not isinstance(d["records"], list):
            raise BenchUserError(f"{where}: records must be a list")
        records = tuple(Record.from_dict(r, f"{where}: record {i}") for i, r in enumerate(d["records"]))
        out = cls(manifest, records, int(d["schema"]))
        out.validate(where)
        return out

    def validate(self, where: str = "result file") -> None:
        """Cross-checks: one record per sample id, in order; ``n`` = number of samples; outcomes only for recorded attacks."""
        m = self.manifest
        if m.n != len(m.sample_ids):
            raise BenchUserError(f"{where}: manifest n={m.n} but {len(m.sample_ids)} sample ids")
        if self.records and [r.index for r in self.records] != list(m.sample_ids):
            raise BenchUserError(f"{where}: the records' sample indices differ from the manifest's sample_ids; rerun with --fresh")
        for r in self.records:
            unknown = set(r.attacks) - set(m.attacks)
            if unknown:
                raise BenchUserError(f"{where}: record {r.index} has outcomes of attacks the manifest does not hold ({', '.join(sorted(unknown))})")

    def to_dict(self) -> dict:
        """The JSON object, written with ``schema`` = :data:`SCHEMA_VERSION`."""
        return {"schema": SCHEMA_VERSION, "manifest": self.manifest.to_dict(), "records": [r.to_dict() for r in self.records]}

    @property
    def data(self) -> dict:
        """The dict view (what :func:`load_result` returns) with the file's own schema number."""
        return dict(self.to_dict(), schema=self.schema)


FOOLING_SCHEMA_VERSION = 1
FOOLING_OUTCOMES = ("fooled", "abstained", "other")


@dataclass(frozen=True)
class FoolingImage(_Doc):
    """One evolved image: its target class, the source model's confidence, generations, whether it reached the threshold."""

    index: int
    target: int
    confidence: float
    generations: int
    reached: bool
    extra: Mapping[str, Any] = field(default_factory=dict)

    TYPES: ClassVar = {"index": (int,), "target": (int,), "confidence": _NUM, "generations": (int,), "reached": (bool,)}
    REQUIRED: ClassVar = ("index", "target", "confidence", "generations", "reached")


@dataclass(frozen=True)
class FoolingScore(_Doc):
    """One defense on the fooling images: counts, rates and per-image outcomes (fooled / abstained / other)."""

    n: int
    fooled: int
    abstained: int
    other: int
    records: tuple = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # rates, wall time, checkpoint hash, paper

    TYPES: ClassVar = {"n": (int,), "fooled": (int,), "abstained": (int,), "other": (int,), "records": (list,)}
    REQUIRED: ClassVar = ("n", "fooled", "abstained", "other", "records")


@dataclass(frozen=True)
class FoolingFile(_Doc):
    """A ``bench neat`` result file (see the module docstring)."""

    schema: int
    manifest: Mapping[str, Any]
    images: tuple
    defenses: Mapping[str, FoolingScore]
    skipped: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    TYPES: ClassVar = {"schema": (int,), "manifest": (dict,), "images": (list,), "defenses": (dict,), "skipped": (dict,)}
    REQUIRED: ClassVar = ("schema", "manifest", "images", "defenses")
    NESTED: ClassVar = {"defenses": FoolingScore}

    @classmethod
    def from_dict(cls, d: Any, where: str = "fooling result file") -> "FoolingFile":
        if not isinstance(d, dict) or d.get("schema") != FOOLING_SCHEMA_VERSION:
            raise BenchUserError(f"{where} has an unknown format (expected schema {FOOLING_SCHEMA_VERSION}); rerun bench neat")
        out = super().from_dict(d, where)
        missing = [k for k in ("attack", "source", "dataset", "seed", "n_images") if k not in out.manifest]
        if missing:
            raise BenchUserError(f"{where}: manifest misses {', '.join(missing)}")
        images = [FoolingImage.from_dict(im, f"{where}: image {i}") for i, im in enumerate(out.images)]
        if len(images) != out.manifest["n_images"]:
            raise BenchUserError(f"{where}: manifest n_images={out.manifest['n_images']} but {len(images)} images")
        for name, s in out.defenses.items():
            if s.fooled + s.abstained + s.other != s.n or len(s.records) != s.n:
                raise BenchUserError(f"{where}: {name}: fooled + abstained + other != n or one record per image missing")
            if any(r.get("outcome") not in FOOLING_OUTCOMES for r in s.records):
                raise BenchUserError(f"{where}: {name}: an outcome other than {', '.join(FOOLING_OUTCOMES)}")
        return out


def read_fooling(path: str | os.PathLike) -> FoolingFile:
    """Read and validate a ``bench neat`` result file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BenchUserError(f"fooling result file {path} is not valid JSON ({exc})") from None
    return FoolingFile.from_dict(data, f"fooling result file {path}")


def write_fooling(path: str | os.PathLike, data: dict) -> Path:
    """Validate and write a ``bench neat`` result file atomically."""
    return atomic_write(path, dumps_json(FoolingFile.from_dict(data, f"fooling result for {path}").to_dict()))


def read_any(path: str | os.PathLike) -> "ResultFile | FoolingFile":
    """Any result file bench writes: an evaluation (:class:`ResultFile`) or fooling images (:class:`FoolingFile`)."""
    path = Path(path)
    if path.parent.name == "neat":
        return read_fooling(path)
    return read_result(path)


def pending_attacks(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The attacks a partially merged sweep file (``bench sweep --merge-partial``) still waits for,
    ``{key: "k/S shards"}``, less any a later ``bench run`` has added to the file since."""
    pending = manifest.get("pending_attacks")
    if not isinstance(pending, dict):
        return {}
    done = manifest.get("attacks") or {}
    return {str(k): str(v) for k, v in pending.items() if k not in done}


def result_path(results_dir: str | os.PathLike, dataset: str, norm: str, defense: str) -> Path:
    """Where the result file of one (dataset, norm, defense) lives."""
    return Path(results_dir) / dataset / norm / f"{defense}.json"


def read_result(path: str | os.PathLike) -> ResultFile:
    """Read and validate one result file (schema 1 or 2)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise BenchUserError(f"result file {path} is not valid JSON ({exc}); delete it or rerun with --fresh") from None
    return ResultFile.from_dict(data, f"result file {path}")


def write_result(path: str | os.PathLike, result: "ResultFile | dict") -> Path:
    """Validate ``result`` (a :class:`ResultFile` or its dict) and write it atomically as schema :data:`SCHEMA_VERSION`."""
    if not isinstance(result, ResultFile):
        result = ResultFile.from_dict(dict(result, schema=SCHEMA_VERSION), f"result for {path}")
    else:
        result.validate(f"result for {path}")
    return atomic_write(path, dumps_json(result.to_dict()))


def load_result(path: str | os.PathLike) -> dict:
    """Read and validate one result file; its dict view (the form the reporting modules index)."""
    return read_result(path).data


def load_results(results_dir: str | os.PathLike, dataset: str, norm: str) -> dict[str, dict]:
    """All result files of one (dataset, norm), keyed by defense name, sorted by name."""
    return {p.stem: load_result(p) for p in data_files(Path(results_dir) / dataset / norm, "*.json")}


def list_result_sets(results_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """Every (dataset, norm) pair that has at least one result file, sorted (norm folders only:
    ``results/<dataset>/neat/`` and other result kinds are skipped)."""
    pairs = {(p.parent.parent.name, p.parent.name) for p in data_files(results_dir, "*/*/*.json") if p.parent.name in ("linf", "l2")}
    return sorted(pairs)
