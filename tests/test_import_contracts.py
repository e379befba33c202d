"""The import rule of the README's layout, checked by ``make lint`` (import-linter contracts in
pyproject.toml): the contracts hold on this tree, and a forbidden import breaks them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e .[dev])")


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy's packages, ahead of the installed ones
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def copy_tree(tmp_path: Path) -> Path:
    for package in ("workbench", "tracing", "editors"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("weights", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_contracts_hold():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("editors/uce.py", "from workbench.toy import world as _toy", "tracing and editors know nothing of the toy"),
    ("tracing/result.py", "import editors as _editors", "tracing and editors are independent"),
    ("workbench/delta.py", "import tracing as _tracing", "the kernel imports no layer above it"),
    ("workbench/evaluate.py", "from workbench.toy import check as _check", "the evaluation does not import"),
    ("workbench/measure/scorers.py", "from workbench.toy import clip as _clip", "the evaluation does not import"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, contract):
    root = copy_tree(tmp_path)
    path = root / module
    text = path.read_text()
    head, sep, rest = text.partition("\nimport ")  # after the docstring and __future__ import
    path.write_text(f"{head}\n{line}{sep}{rest}")
    done = lint(root)
    assert done.returncode != 0, done.stdout
    assert f"{contract}" in done.stdout and "BROKEN" in done.stdout, done.stdout
