"""Test hooks: environment variables that bend coldkeep on purpose, honoured in tests only.

Some variables exist so that tests can break things deterministically: ``COLDKEEP_FAULTS`` fails,
flips, truncates or kills storage calls, ``COLDKEEP_NOW`` moves the clock (and with it every expiry
and archive cut-off), ``COLDKEEP_CONV_KILL_AT`` SIGKILLs the process at a named stage.  In an
installed coldkeep a stray one would silently damage data or delete it early, so every hook is read
through :func:`value`, which promises:

* ``None`` unless the testing switch ``COLDKEEP_TESTING=1`` is set in the same environment (then
  the hook does nothing at all, whatever its value);
* with the switch on and the hook set (non-blank), its value, and the first time a given hook acts
  in this process one ``warning:`` line on stderr naming it.

The table of every ``COLDKEEP_*`` variable (production settings and test hooks) is in
``docs/design.md`` ("Environment variables").
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from typing import Final

__all__ = ["HOOKS", "SWITCH", "enabled", "value"]

#: the testing switch: test hooks act only when this is exactly ``1``
SWITCH: Final = "COLDKEEP_TESTING"

#: every test hook, with what it does (the docs table says the same)
HOOKS: Final[Mapping[str, str]] = {
    "COLDKEEP_FAULTS": "inject storage faults (fail, flip, truncate, full, kill)",
    "COLDKEEP_FAULTS_COUNTS": "write the storage call counts of COLDKEEP_FAULTS to a file",
    "COLDKEEP_NOW": "freeze the clock (moves expiry and archive cut-offs)",
    "COLDKEEP_CONV_KILL_AT": "SIGKILL the process at a named conversations stage",
    "COLDKEEP_CKPT_KILL_AT": "SIGKILL the process at a named checkpoints stage",
    "COLDKEEP_TIERS_KILL_AT": "SIGKILL the process at a named tiers backup stage",
    "COLDKEEP_PREFETCH_KILL_AT": "SIGKILL the WAL prefetcher (or pg restore's WAL staging) at a named stage",
    "COLDKEEP_PACK_TARGET": "pack size in bytes instead of 16 MiB",
    "COLDKEEP_CONV_EARLY_DIV": "size of the first conversation batches (batch rows / N)",
    "COLDKEEP_CONV_COMMITTERS": "number of conversation commit threads",
}

_warned: set[str] = set()
_lock = threading.Lock()


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``COLDKEEP_TESTING=1`` is set in ``environ`` (default: this process's environment)."""
    env = os.environ if environ is None else environ
    return env.get(SWITCH, "").strip() == "1"


def value(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The test hook ``name``'s value when testing is switched on and the hook is set, else ``None``.

    Warns once per process per hook (on stderr) when it returns a value.  ``name`` must be one of
    :data:`HOOKS` (a programming error otherwise).
    """
    if name not in HOOKS:
        raise KeyError(f"{name} is not a declared test hook")
    env = os.environ if environ is None else environ
    raw = env.get(name, "")
    if not raw.strip() or not enabled(env):
        return None
    _warn_once(name, raw)
    return raw


def _warn_once(name: str, raw: str) -> None:
    with _lock:
        if name in _warned:
            return
        _warned.add(name)
    shown = raw if len(raw) <= 60 else raw[:57] + "..."
    sys.stderr.write(
        f"warning: test hook {name}={shown} is active ({SWITCH}=1): {HOOKS[name]}; "
        "never set these outside tests\n"
    )
    sys.stderr.flush()


_kill_lock = threading.Lock()
_kill_counts: dict[tuple[str, str], int] = {}


def kill_point(name: str, stage: str) -> None:
    """SIGKILL this process the n-th time it reaches ``stage`` when the test hook ``name``
    (``stage:n,…``; ``n`` defaults to 1) names it and testing is switched on; a no-op otherwise.
    Crash tests use it to land a kill exactly between two critical steps of a service."""
    spec = value(name)
    if not spec:
        return
    for item in spec.split(","):
        wanted, _, nth = item.partition(":")
        if wanted != stage:
            continue
        with _kill_lock:
            _kill_counts[(name, stage)] = _kill_counts.get((name, stage), 0) + 1
            hit = _kill_counts[(name, stage)] == int(nth or "1")
        if hit:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
