"""Click parameter types shared by the commands."""

from __future__ import annotations

import math
from typing import Any

import click


class FiniteRange(click.FloatRange):
    """:class:`click.FloatRange` without ``nan`` and ``inf`` (``nan`` passes every bound
    comparison: ``repo prune --max-unused nan`` was accepted and repacked nothing)."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if isinstance(number, float) and not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number
