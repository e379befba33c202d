"""Progress bars: silenced by --quiet, progress=False or TQDM_DISABLE; plain lines (no carriage returns) off a
terminal."""

from __future__ import annotations

import io

import pytest

from workbench import progress
from workbench.app.cli import main


def _run_bar(monkeypatch, **kw) -> str:
    stream = io.StringIO()  # not a terminal
    monkeypatch.setattr("sys.stderr", stream)
    for _ in progress.bar(range(5), desc="work", mininterval=0, **kw):
        pass
    return stream.getvalue()


def test_off_a_terminal_bars_print_whole_lines(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    out = _run_bar(monkeypatch)
    assert "\r" not in out and "work" in out and "5/5" in out
    assert all(line.strip() for line in out.splitlines())


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_tqdm_disable_silences_every_bar(monkeypatch, value):
    monkeypatch.setenv("TQDM_DISABLE", value)
    assert _run_bar(monkeypatch) == ""


def test_progress_false_and_set_quiet_silence(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert _run_bar(monkeypatch, progress=False) == ""
    progress.set_quiet(True)
    try:
        assert _run_bar(monkeypatch) == ""
    finally:
        progress.set_quiet(False)
    assert _run_bar(monkeypatch) != ""


def test_cli_quiet_prints_no_bar_and_the_default_does(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    args = ["generate", "--model", "tiny", "--prompt", "a cat", "-n", "2", "--steps", "3", "--batch-size", "1"]
    assert main([*args, "--out", str(tmp_path / "a.png"), "--quiet"]) == 0
    assert "sampling" not in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b.png")]) == 0
    err = capsys.readouterr().err
    assert "sampling" in err and "6/6" in err and "\r" not in err
    assert progress._QUIET is False
