"""The README documents every command (issue 17): each command path of the click tree
(``repo key add``, ``pg backups``, …) has an example ``coldkeep <path>`` in a code block or an
inline code span of README.md.  The tree is read at test time, so a command added later fails
here until the README shows it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click

from coldkeep.cli.app import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def command_paths(command: click.Command, ctx: click.Context, path: tuple[str, ...] = ()) -> Iterator[str]:
    """Every runnable command under ``command`` as ``"repo key add"`` (groups: their leaves;
    hidden commands are left out, they are not meant to be typed)."""
    if not isinstance(command, click.Group):
        yield " ".join(path)
        return
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        assert sub is not None, f"{' '.join((*path, name))}: listed but not loadable"
        if not sub.hidden:
            yield from command_paths(sub, click.Context(sub, info_name=name, parent=ctx), (*path, name))


def code_text(markdown: str) -> str:
    """The README's fenced code blocks and inline code spans, one per line."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", prose)
    return "\n".join(blocks + spans)


def documented(path: str, code: str) -> bool:
    """``coldkeep <path>`` appears as a whole command path (``pg backup`` is not ``pg backups``)."""
    words = r"\s+".join(map(re.escape, path.split()))
    return re.search(rf"(?<![\w-])coldkeep\s+{words}(?![\w-])", code) is not None


def test_the_tree_is_walked() -> None:
    paths = set(command_paths(cli, click.Context(cli, info_name="coldkeep")))
    assert {"backup", "repo key add", "pg wal-fetch", "conversations compact"} <= paths


def test_documented_matches_whole_command_paths_only() -> None:
    assert documented("pg backup", "coldkeep pg backup --label x")
    assert not documented("pg backup", "coldkeep pg backups")
    assert not documented("repo key add", "coldkeep repo key list")
    assert documented("pg wal-push", "archive_command = coldkeep pg wal-push %p")
    code = code_text("x `coldkeep repo stats --json` y\n```bash\ncoldkeep doctor\n```\n`coldkeep pg x`")
    assert code.split("\n") == ["coldkeep doctor", "", "coldkeep repo stats --json", "coldkeep pg x"]


def test_every_command_has_an_example_in_the_readme() -> None:
    code = code_text(README.read_text(encoding="utf-8"))
    paths = command_paths(cli, click.Context(cli, info_name="coldkeep"))
    missing = [p for p in paths if not documented(p, code)]
    assert missing == [], (
        f"README.md shows no `coldkeep <command>` example for: {', '.join(missing)} "
        "(add one line each, e.g. to the Quick tour, and classify it in "
        "tests/integration/test_readme_tour.py)"
    )
