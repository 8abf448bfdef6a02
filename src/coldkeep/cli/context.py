"""What every command gets: the global options, the output and a lazily loaded config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from coldkeep.cli.output import Output

if TYPE_CHECKING:  # pydantic models are slow to import: loaded on first use (cli/walfast.py)
    from coldkeep import config as config_mod
    from coldkeep.repository.setup import RepositorySectionLike


@dataclass
class AppContext:
    config_path: str | None = None
    out: Output = field(default_factory=Output)
    _config: config_mod.Config | None = None
    #: the run being recorded (``coldkeep.ops.runs.Run``; cli/recorded.py), if any
    run: Any = None

    def config(self) -> config_mod.Config:
        if self._config is None:
            from coldkeep import config as config_mod
            from coldkeep.cli import validated

            self._config, text = config_mod.load_with_text(self.config_path)
            validated.remember(text)
        return self._config

    def repository_section(self) -> RepositorySectionLike:
        """``[repository]``, as :meth:`config` gives it, without importing the configuration
        models when this file's text was fully validated before (:mod:`coldkeep.cli.validated`)."""
        if self._config is None:
            from coldkeep.cli import validated

            section = validated.repository_section(self.config_path)
            if section is not None:
                return section
        return self.config().repository


pass_app = click.make_pass_decorator(AppContext)
