"""The manifest's ``commit`` names the code that produced a result: ``+dirty`` for modified code, not for a
modified result file or report beside it (a sweep merges while other result files are modified)."""

import shutil
import subprocess

import pytest

from harness.store.provenance import _code_commit_of

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root, *args):
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture()
def repo(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("X = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_text("{}\n")
    (tmp_path / "leaderboard.md").write_text("# board\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "init")
    return tmp_path


def test_a_clean_tree_gives_the_bare_sha(repo):
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert _code_commit_of(repo) == sha


def test_modified_results_and_reports_do_not_make_the_code_dirty(repo):
    (repo / "results" / "r.json").write_text('{"n": 2}\n')
    (repo / "leaderboard.md").write_text("# board 2\n")
    assert not _code_commit_of(repo).endswith("+dirty")


@pytest.mark.parametrize("path", ["pkg/mod.py", "pyproject.toml"])
def test_modified_code_or_install_pins_make_it_dirty(repo, path):
    target = repo / path
    if not target.exists():
        target.write_text("[project]\n")
        _git(repo, "add", path)
        _git(repo, "commit", "-q", "-m", "pins")
    target.write_text(target.read_text() + "# changed\n")
    assert _code_commit_of(repo).endswith("+dirty")


def test_outside_a_git_checkout_it_says_unknown(tmp_path):
    assert _code_commit_of(tmp_path) == "unknown"
