"""Every code block of the README runs as written (a newcomer's first hour must not start with a broken
snippet), and the quickstart's edit does what the README says it does."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL = [code for lang, code in BLOCKS if lang == "sh"]
pytestmark = pytest.mark.slow


def test_the_readme_has_the_blocks_this_file_runs():
    assert {lang for lang, _ in BLOCKS} <= {"python", "sh"}, "a block in a language this test does not run"
    assert len(PYTHON) >= 4 and len(SHELL) >= 3


@pytest.mark.parametrize("code", PYTHON, ids=[c.splitlines()[-1][:40] for c in PYTHON])
def test_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    report = namespace.get("report")
    if report is not None:  # the quickstart: the artist and its alias erased, the held-out artists kept
        assert all(r.after <= 0.2 * r.before for r in report.group("edited") + report.group("alias")), \
            report.markdown()
        assert all(abs(r.change) <= 0.15 for r in report.group("holdout")), report.markdown()


def _run_shell(code: str, cwd: Path) -> list[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TQDM_DISABLE": "1"}
    ran = []
    for line in code.strip().splitlines():
        if line.startswith("make "):  # the set-up commands: they must name real targets (CI runs them itself)
            target = shlex.split(line.split("#")[0])[1]
            done = subprocess.run(["make", "-n", "-f", str(ROOT / "Makefile"), target], cwd=ROOT,
                                  capture_output=True, text=True)
            assert done.returncode == 0, (line, done.stderr)
            continue
        if line.startswith("MODEL="):  # a real checkpoint is not here: the random tiny model stands in
            env["MODEL"] = "tiny"
            continue
        done = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
        ran.append(line)
    return ran


@pytest.mark.parametrize("code", SHELL, ids=[c.splitlines()[0][:40] for c in SHELL])
def test_shell_block_runs(code, tmp_path):
    _run_shell(code, tmp_path)
    evaluation = tmp_path / "jf.json"
    if evaluation.exists():  # the CLI recipe: the same edit as the quickstart, from the command line
        rates = {(r["group"], r["concept"]): r for r in json.loads(evaluation.read_text())["rates"]}
        assert rates[("edited", "jonas flet")]["after"] <= 0.2, rates
        assert abs(rates[("holdout", "lukas merro")]["after"] - rates[("holdout", "lukas merro")]["before"]) <= 0.15
