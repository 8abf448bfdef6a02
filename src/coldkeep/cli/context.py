"""What every command gets: the global options, the output and a lazily loaded config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

from coldkeep.cli.output import Output

if TYPE_CHECKING:  # pydantic models are slow to import: loaded on first use (cli/walfast.py)
    from coldkeep import config as config_mod


@dataclass
class AppContext:
    config_path: str | None = None
    out: Output = field(default_factory=Output)
    _config: config_mod.Config | None = None

    def config(self) -> config_mod.Config:
        if self._config is None:
            from coldkeep import config as config_mod

            self._config = config_mod.load(self.config_path)
        return self._config


pass_app = click.make_pass_decorator(AppContext)
