"""``coldkeep config check|show``."""

from __future__ import annotations

import click
from rich.console import Console
from rich.syntax import Syntax

from coldkeep import config as config_mod
from coldkeep.cli.context import AppContext, pass_app
from coldkeep.errors import ConfigError


@click.group()
def config() -> None:
    """Check or show the configuration."""


@config.command("check")
@pass_app
def check(app: AppContext) -> None:
    """Validate the config file and the paths that the sections in use need (exit 2 on a problem)."""
    try:
        cfg = app.config()
    except ConfigError as exc:
        if exc.hint == ConfigError.hint:  # "run `coldkeep config check`…": this is that command
            exc.hint = "fix the key named (or the line, for broken TOML), then run this again"
        raise
    problems = config_mod.check_paths(cfg)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{cfg.source}: {problems[0]}{more}", hint="create the path or fix the key")
    in_use = [name for name, section in cfg.services() if section.in_use]
    app.out.emit(
        {"ok": True, "source": cfg.source, "sections_in_use": in_use},
        lambda c: c.print(
            f"[green]ok[/green] {cfg.source} (in use: {', '.join(in_use) or 'repository only'})"
        ),
    )


@config.command("show")
@pass_app
def show(app: AppContext) -> None:
    """Print the effective configuration (defaults filled in, secrets redacted)."""
    cfg = app.config()
    data = config_mod.redacted(cfg)

    def human(console: Console) -> None:
        console.print(f"# effective configuration from {cfg.source}")
        console.print(Syntax(_to_toml(data), "toml", theme="ansi_dark", background_color="default"))

    app.out.emit(data, human)


def _to_toml(data: dict[str, object], prefix: str = "") -> str:
    """Minimal TOML writer for display (tables, scalars, lists of scalars)."""
    import json

    scalars: list[tuple[str, object]] = []
    tables: list[tuple[str, object]] = []
    for key, value in data.items():
        (tables if isinstance(value, dict) else scalars).append((key, value))
    lines = []
    if prefix and scalars:
        lines.append(f"[{prefix}]")
    for key, value in scalars:
        lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    if scalars:
        lines.append("")
    for key, value in tables:
        assert isinstance(value, dict)
        lines.append(_to_toml(value, f"{prefix}.{key}" if prefix else key))
    return "\n".join(lines)
