"""Test hooks act only with ``COLDKEEP_TESTING=1`` and say so; every ``COLDKEEP_*`` variable is
documented in one table of docs/design.md.

The test session itself runs with the switch on (tests/conftest.py), so the "switch off" cases
remove it explicitly: in-process with monkeypatch, or in the environment of a child process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coldkeep import clock, testhooks
from coldkeep.repository.repository import PACK_TARGET, pack_target
from coldkeep.storage import open_backend
from coldkeep.storage.wrappers import FaultBackend, RetryBackend

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
FROZEN = "2001-02-03T04:05:06+00:00"


def child(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with exactly the test hooks (and switch) in ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("COLDKEEP_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": str(SRC), **env},
        timeout=60,
        check=False,
    )


def hook_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: test hook ")]


@pytest.fixture
def switch_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(testhooks.SWITCH, raising=False)


def test_the_test_session_runs_with_the_switch_on() -> None:
    assert os.environ.get(testhooks.SWITCH) == "1"  # set by tests/conftest.py for every child too


# --- switch off: every hook does nothing -------------------------------------------------------


def test_now_does_not_move_the_clock_without_the_switch(
    switch_off: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLDKEEP_NOW", FROZEN)
    assert clock.now().year >= 2025


def test_faults_do_not_wrap_the_backend_without_the_switch(
    switch_off: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COLDKEEP_FAULTS", "flip:any:1+")
    backend = open_backend(f"file://{tmp_path}")
    assert isinstance(backend, RetryBackend) and not isinstance(backend.inner, FaultBackend)
    backend.put("k", b"value")
    assert backend.get("k") == b"value"
    assert FaultBackend.from_env(backend.inner) is backend.inner


def test_pack_target_is_the_default_without_the_switch(
    switch_off: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLDKEEP_PACK_TARGET", "4096")
    assert pack_target() == PACK_TARGET


def test_conversation_knobs_are_ignored_without_the_switch(
    switch_off: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coldkeep.conversations import archive

    monkeypatch.setenv("COLDKEEP_CONV_EARLY_DIV", "2")
    monkeypatch.setenv("COLDKEEP_CONV_COMMITTERS", "7")
    assert archive.hook_int("COLDKEEP_CONV_EARLY_DIV", archive.EARLY_DIVISOR) == archive.EARLY_DIVISOR
    assert archive.hook_int("COLDKEEP_CONV_COMMITTERS", archive.COMMITTERS) == archive.COMMITTERS


@pytest.mark.parametrize("name", sorted(testhooks.HOOKS))
def test_no_hook_has_a_value_without_the_switch(name: str) -> None:
    assert testhooks.value(name, {name: "1"}) is None
    assert testhooks.value(name, {name: "1", testhooks.SWITCH: "yes"}) is None  # exactly "1"
    assert testhooks.value(name, {name: "1", testhooks.SWITCH: "1"}) == "1"


def test_kill_point_and_faults_in_a_child_without_the_switch(tmp_path: Path) -> None:
    counts = tmp_path / "counts.json"
    code = (
        "from coldkeep.conversations.files import kill_point\n"
        "from coldkeep.storage import open_backend\n"
        f"b = open_backend('file://{tmp_path}/repo')\n"
        "b.put('k', b'value'); assert b.get('k') == b'value'\n"
        "kill_point('after-file'); print('alive')\n"
    )
    hooks = {"COLDKEEP_CONV_KILL_AT": "after-file", "COLDKEEP_FAULTS": "count,kill:get:1",
             "COLDKEEP_FAULTS_COUNTS": str(counts), "COLDKEEP_NOW": FROZEN}  # fmt: skip
    done = child(code, hooks)
    assert done.returncode == 0 and done.stdout == "alive\n", done.stderr
    assert not counts.exists()
    assert done.stderr == ""  # nothing acted, nothing to say


# --- switch on: hooks act and warn once per process --------------------------------------------


def test_pack_target_and_conversation_knobs_act_with_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    from coldkeep.conversations import archive

    monkeypatch.setenv(testhooks.SWITCH, "1")
    monkeypatch.setenv("COLDKEEP_PACK_TARGET", "4096")
    monkeypatch.setenv("COLDKEEP_CONV_EARLY_DIV", "2")
    monkeypatch.setenv("COLDKEEP_CONV_COMMITTERS", "0")  # not a positive number: the default
    assert pack_target() == 4096
    assert archive.hook_int("COLDKEEP_CONV_EARLY_DIV", archive.EARLY_DIVISOR) == 2
    assert archive.hook_int("COLDKEEP_CONV_COMMITTERS", archive.COMMITTERS) == archive.COMMITTERS


def test_now_acts_and_warns_once_with_the_switch() -> None:
    done = child(
        "from coldkeep import clock\nprint(clock.now().isoformat()); print(clock.now().isoformat())",
        {"COLDKEEP_NOW": FROZEN, testhooks.SWITCH: "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [FROZEN, FROZEN]
    warnings = hook_warnings(done.stderr)
    assert len(warnings) == 1 and "COLDKEEP_NOW=" + FROZEN in warnings[0], done.stderr


def test_kill_point_acts_and_warns_with_the_switch() -> None:
    done = child(
        "from coldkeep.conversations.files import kill_point\nkill_point('after-file'); print('alive')",
        {"COLDKEEP_CONV_KILL_AT": "after-file", testhooks.SWITCH: "1"},
    )
    assert done.returncode == -9 and done.stdout == ""
    assert len(hook_warnings(done.stderr)) == 1 and "COLDKEEP_CONV_KILL_AT" in done.stderr


def test_faults_act_and_warn_once_through_the_cli(tmp_path: Path) -> None:
    from tests.helpers import COLDKEEP, one_line_error, write_config

    config = write_config(tmp_path / "coldkeep.toml", f"file://{tmp_path}/repo")
    env = {"COLDKEEP_CACHE_DIR": str(tmp_path / "cache"), testhooks.SWITCH: "1"}
    base = {k: v for k, v in os.environ.items() if not k.startswith("COLDKEEP_")}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([COLDKEEP, "--config", str(config), *args], capture_output=True, text=True,
                              env={**base, **env, **extra}, timeout=120, check=False)  # fmt: skip

    assert run("repo", "init").returncode == 0
    counts = tmp_path / "counts.json"
    done = run("snapshots", COLDKEEP_FAULTS="count", COLDKEEP_FAULTS_COUNTS=str(counts))
    assert done.returncode == 0, done.stderr
    assert json.loads(counts.read_text())["any"] >= 2  # several calls counted ...
    warnings = hook_warnings(done.stderr)
    assert [w.split("=")[0] for w in warnings] == [
        "warning: test hook COLDKEEP_FAULTS",
        "warning: test hook COLDKEEP_FAULTS_COUNTS",
    ], done.stderr  # ... one warning per hook, not per call
    failed = run("snapshots", COLDKEEP_FAULTS="fail:any:1+")
    assert failed.returncode != 0
    assert "injected failure" in one_line_error(failed)
    assert len(hook_warnings(failed.stderr)) == 1


# --- the table ----------------------------------------------------------------------------------

_NAME = re.compile(r"\bCOLDKEEP_[A-Z][A-Z_]*[A-Z]\b")
_KINDS = ("production", "test-only", "test suite", "benchmarks")


def _design_table() -> dict[str, str]:
    """``name -> kind`` from the environment-variable table of docs/design.md."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    rows: dict[str, str] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `COLDKEEP_") and len(cells) == 3 and cells[2] in _KINDS:
            for name in re.findall(r"`(COLDKEEP_[A-Z_]+)`", cells[0]):
                rows[name] = cells[2]
    return rows


def _used(*parts: str) -> set[str]:
    files = [
        p
        for part in parts
        for p in (ROOT / part).rglob("*")
        # not pip's generated metadata (src/coldkeep.egg-info/PKG-INFO holds the README's text)
        if p.is_file()
        and p.suffix in (".py", ".sh", "")
        and not any(q.endswith(".egg-info") for q in p.parts)
    ]
    return {m for path in files for m in _NAME.findall(path.read_text(encoding="utf-8", errors="replace"))}


def test_every_coldkeep_variable_is_in_the_design_table() -> None:
    table = _design_table()
    in_code = _used("src")
    assert in_code <= set(table), sorted(in_code - set(table))
    assert {n for n in in_code if table[n] != "production"} == set(testhooks.HOOKS) | {testhooks.SWITCH}
    assert {n for n, kind in table.items() if kind == "test-only"} == set(testhooks.HOOKS) | {
        testhooks.SWITCH
    }
    around = _used("tests", "bench", ".ci", "scripts") - in_code
    assert around <= set(table), sorted(around - set(table))
