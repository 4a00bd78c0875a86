"""The README's test command (the one CI runs, .ci/run) prints pytest's summary line ("N passed"):
``-q`` in the README plus ``-q`` in pyproject's addopts would make ``-qq``, which hides it."""

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_command() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^Run the tests:\n\n {4}(python -m pytest [^\n]+)$", text, re.M)
    assert m, "README: 'Run the tests:' followed by an indented `python -m pytest ...` line"
    return shlex.split(m.group(1))


def test_ci_runs_the_readme_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1].strip() == shlex.join(_readme_command())


def test_readme_command_prints_the_summary_line():
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    cmd = _readme_command()
    assert (cmd + shlex.split(opts.get("addopts", ""))).count("-q") <= 1
    # the same command on one small test file (its last argument, "tests", replaced)
    assert cmd[-1] == "tests"
    run = [sys.executable, *cmd[1:-1], "tests/contract/test_gradient_helpers.py", "-p", "no:cacheprovider"]
    r = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^\d+ passed", r.stdout.strip().splitlines()[-1]), r.stdout
