"""docs/reproduction.md generation: cell-by-cell comparison with the typed thesis table."""

from pathlib import Path

from harness.reproduction import render_reproduction, write_reproduction
from tests.stats.make_results import bools, fake_result, write_result

THESIS = Path(__file__).resolve().parents[2] / "docs" / "thesis_fmnist.toml"


def _write(tmp_path):
    n = 100
    write_result(tmp_path, fake_result("cnn", "fmnist", "linf", bools(91, n), {"pgd": bools(10, n), "deepfool": bools(26, n), "noise": bools(90, n)}))
    write_result(tmp_path, fake_result("adv-linf", "fmnist", "linf", bools(89, n), {"pgd": bools(57, n), "deepfool": bools(65, n), "noise": bools(89, n)}))


def test_cells_show_ours_thesis_and_difference(tmp_path):
    _write(tmp_path)
    text = render_reproduction(tmp_path, THESIS)
    assert "91.0 (" in text and "/ 91.0 / +0.0" in text  # cnn clean: ours 91.0, thesis 91.0
    assert "10.0 (" in text and "/ 9.4 / +0.6" in text  # cnn PGD
    assert "— / 81.6 / not run" in text  # ABS missing
    assert "Ordering by All L∞" in text and "same" in text
    assert "pairs agree with the thesis" in text
    assert "not run" in text.split("## L2")[1]  # no L2 results at all


def test_write_is_deterministic(tmp_path):
    _write(tmp_path)
    out = tmp_path / "docs" / "reproduction.md"
    assert write_reproduction(tmp_path, THESIS, out) is True
    assert write_reproduction(tmp_path, THESIS, out) is False
