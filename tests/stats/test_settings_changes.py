"""`bench reproduction` flags result rows whose defense settings differ from today's defense."""

from __future__ import annotations

import copy

from harness.engine.models import build_defense
from harness.report.reproduction import settings_changes
from harness.store.checkpoints import find_checkpoint, read_card


def _today(defense: str, **options):
    """The defense as the report rebuilds it: default settings plus the model card found here, if any."""
    d = build_defense(defense, "fmnist", **options)
    path = find_checkpoint(defense, "fmnist")
    if path is not None:
        d.load_card(read_card(path))
    return d


def _manifest(defense: str, **options) -> dict:
    return {"dataset": "fmnist", "defense_options": options, "defense_config": copy.deepcopy(_today(defense, **options).extra_info())}


def test_same_settings_are_not_flagged(bench_env):
    assert settings_changes("eabs", "fmnist", _manifest("eabs")) == []
    assert settings_changes("eabs", "fmnist", _manifest("eabs", steps=7)) == []  # a variant compares with the same options


def test_changed_inference_and_threshold_are_flagged_but_execution_options_are_not(bench_env):
    m = _manifest("eabs")
    m["defense_config"]["inference"]["lr"] = 0.123
    m["defense_config"]["reject_threshold"] = 40.0
    m["defense_config"]["inference"]["precision"] = "bf16"  # an execution option: same results
    today = _today("eabs")
    assert settings_changes("eabs", "fmnist", m) == [f"inference.lr 0.123 -> {today.inference.lr:.4g}", f"reject_threshold 40 -> {today.reject_threshold:.4g}"]


def test_keys_a_file_does_not_record_and_unbuildable_defenses_are_skipped(bench_env):
    m = _manifest("eabs")
    del m["defense_config"]["inference"]["lr_logvar"]  # recorded before the setting existed
    assert settings_changes("eabs", "fmnist", m) == []
    assert settings_changes("no-such-defense", "fmnist", m) == []
    assert settings_changes("eabs", "fmnist", {"dataset": "fmnist"}) == []


def test_change_lines_show_floats_to_four_digits_and_other_values_as_written():
    from harness.engine.models import config_changes

    recorded = {"reject_threshold": 36.06825637817383, "arch": "old", "inference": {"steps": 50}}
    today = {"reject_threshold": 35.95612335205078, "arch": "new", "inference": {"steps": 100}}
    assert config_changes(recorded, today) == ["arch 'old' -> 'new'", "inference.steps 50 -> 100", "reject_threshold 36.07 -> 35.96"]
