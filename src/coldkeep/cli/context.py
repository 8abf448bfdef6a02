"""What every command gets: the global options, the output and a lazily loaded config."""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from coldkeep import config as config_mod
from coldkeep.cli.output import Output


@dataclass
class AppContext:
    config_path: str | None = None
    out: Output = field(default_factory=Output)
    _config: config_mod.Config | None = None

    def config(self) -> config_mod.Config:
        if self._config is None:
            self._config = config_mod.load(self.config_path)
        return self._config


pass_app = click.make_pass_decorator(AppContext)
