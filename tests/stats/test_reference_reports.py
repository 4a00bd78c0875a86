"""The reference reports (docs/reproduction.md, docs/smoothing.md) are driven by their TOML files:
their modules name no defense, attack or data set, and another TOML file makes another report."""

import ast
from pathlib import Path

import pytest

import harness.report.reproduction as reproduction
import harness.report.smoothing_report as smoothing_report
from defenses.registry import list_defenses
from harness.attacks import list_attacks
from harness.datasets import list_datasets
from tests.stats.make_results import bools, fake_result, write_result


@pytest.mark.parametrize("module", [reproduction, smoothing_report], ids=lambda m: m.__name__)
def test_module_names_no_defense_attack_or_dataset(module):
    names = set(list_defenses()) | set(list_attacks()) | {d.name for d in list_datasets()}
    strings = {n.value for n in ast.walk(ast.parse(Path(module.__file__).read_text(encoding="utf-8"))) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not strings & names, f"{module.__name__} hard-codes {sorted(strings & names)}: move them into its TOML reference file"


def test_another_reference_file_makes_another_reproduction(tmp_path):
    ref = tmp_path / "ref.toml"
    ref.write_text('''source = "a made-up paper, Table 9"
defenses = ["abs", "cnn"]

[report]
title = "Reproduction of Table 9"
dataset = "fmnist"
intro = """
One line of introduction.
"""

[l2]
eps = 1.5
clean = [80.0, 90.0]
ddn = [40.0, 10.0]
all = [40.0, 10.0]
''', encoding="utf-8")
    n = 100
    write_result(tmp_path / "r", fake_result("cnn", "fmnist", "l2", bools(90, n), {"ddn": bools(12, n)}))
    write_result(tmp_path / "r", fake_result("abs", "fmnist", "l2", bools(80, n), {"ddn": bools(41, n)}))
    text = reproduction.render_reproduction(tmp_path / "r", ref)
    assert text.startswith("# Reproduction of Table 9\n") and "Thesis numbers: a made-up paper, Table 9." in text
    assert "One line of introduction.\n\n## L2 (eps = 1.5)" in text and "## L∞" not in text
    head = next(line for line in text.splitlines() if line.startswith("|    "))
    assert head.index("ABS") < head.index("CNN")  # the file's column order
    assert "| DDN " in text and "12.0 (" in text and "/ 10.0 / +2.0" in text
    assert "alpha 0.01" in text  # the default significance level when the file sets none


def test_another_reference_file_makes_another_smoothing_report(tmp_path):
    ref = tmp_path / "ref.toml"
    ref.write_text('''source = "another paper"
[at_eps]
eps = "0.3"
abs = [81.0, 40.0]
[as_eps_grows]
eps = ["0.1", "0.3"]
abs = [60.0, 40.0]
[report]
title = "Binarisation on {dataset}"
dataset = "fmnist"
norm = "l2"
pairs = [["cnn", "binary-cnn"]]
attack = "pgd"
clean = "Clean"
all = "All"
treated = "Binarised?"
treated_values = ["no", "yes"]
at_eps_heading = "At {norm} eps {eps}"
as_eps_grows_heading = "Growing eps"
reference_heading = "Their numbers ({source})"
reference_note = "Compare the shape."
intro = "Intro."
[report.labels]
binary-cnn = "Binary CNN"
''', encoding="utf-8")
    for d, clean, pgd in (("cnn", 36, 4), ("binary-cnn", 30, 20)):
        write_result(tmp_path / "r" / "e1", fake_result(d, "fmnist", "l2", bools(clean, 40), {"pgd": bools(pgd, 40)}, eps=1.0))
    text = smoothing_report.render_smoothing(tmp_path / "r", ref)
    assert text.startswith("# Binarisation on fmnist\n") and "Intro.\n\n## At L2 eps 1\n" in text
    head = next(line for line in text.splitlines() if line.startswith("| Model") and "Binarised?" in line)
    assert [c.strip() for c in head.strip("|").split("|")] == ["Model", "Binarised?", "Clean", "PGD", "p clean", "p PGD"]
    row = next(line for line in text.splitlines() if line.startswith("| Binary CNN "))
    assert "| yes " in row and "50.0%" in row  # 20/40 under PGD
    assert "## Growing eps" in text and "## Their numbers (another paper)" in text and "| PGD eps 0.3" in text
