"""Modules stay small (issue 12, acceptance): no module in ``src/`` over 600 lines unless its
docstring says why, in a paragraph starting with ``Size:``."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
LIMIT = 600


def test_no_long_module_without_a_stated_reason() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines <= LIMIT:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not any(paragraph.startswith("Size:") for paragraph in doc.split("\n\n")):
            offenders.append(f"{path.relative_to(SRC)}: {lines} lines, no 'Size:' paragraph in its docstring")
    assert offenders == []
