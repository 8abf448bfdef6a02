"""Metric samples as Python sees them: what ``status`` evaluates the alert rules on.

Each alert rule (:mod:`coldkeep.ops.alerts`) carries, next to its PromQL, a Python predicate over
a :class:`Samples`: the current value of every series (the same families the exporter serves)
plus, for the rules that look back (``avg_over_time``, ``predict_linear``), each series' history
— in ``status`` taken from the run records, in the rule tests from promtool's input series.  The
helpers here are the few PromQL operations the rules use, with PromQL's semantics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.core import Metric

Labels = dict[str, str]
#: (time, value) pairs, oldest first
Points = list[tuple[float, float]]
Where = Callable[[Labels], bool]


def _key(labels: Labels) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


@dataclass
class Samples:
    """The current value of each series at ``now`` and, optionally, its history."""

    now: float
    current: dict[str, list[tuple[Labels, float]]] = field(default_factory=dict)
    history: dict[tuple[str, tuple[tuple[str, str], ...]], Points] = field(default_factory=dict)

    @classmethod
    def from_families(cls, families: Iterable[Metric], now: float) -> Samples:
        """The samples of prometheus_client families (counters under their ``_total`` name)."""
        out = cls(now)
        for family in families:
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue
                out.add(s.name, dict(s.labels), float(s.value))
        return out

    def add(self, name: str, labels: Labels, value: float) -> None:
        self.current.setdefault(name, []).append((dict(labels), value))

    def add_history(self, name: str, labels: Labels, points: Points) -> None:
        self.history[(name, _key(labels))] = sorted(points)

    def select(self, name: str, where: Where | None = None) -> list[tuple[Labels, float]]:
        """``name{…}``: every current series of ``name`` whose labels ``where`` accepts."""
        return [(dict(lab), v) for lab, v in self.current.get(name, []) if where is None or where(lab)]

    def value(self, name: str) -> float | None:
        """The value of the label-less series ``name`` (``None``: absent)."""
        found = self.select(name, lambda lab: not lab)
        return found[0][1] if found else None

    def window(self, name: str, labels: Labels, seconds: float) -> Points:
        """``name{labels}[seconds]``: the points in ``(now - seconds, now]`` (the history's, else
        the current value alone)."""
        points = self.history.get((name, _key(labels)))
        if points is None:
            points = [(self.now, v) for lab, v in self.select(name) if lab == labels]
        return [(t, v) for t, v in points if self.now - seconds < t <= self.now]


# ------------------------------------------------------------------------------------------------
# the PromQL the rules use


def is_(label: str, *values: str) -> Where:
    """``{label=~"v1|v2"}``."""
    return lambda lab: lab.get(label, "") in values


def older_than(m: Samples, name: str, seconds: float, where: Where | None = None) -> list[Labels]:
    """``time() - name{…} > seconds``."""
    return [lab for lab, v in m.select(name, where) if m.now - v > seconds]


def compare(m: Samples, name: str, test: Callable[[float], bool], where: Where | None = None) -> list[Labels]:
    """``name{…} <op> threshold`` (``test`` is the comparison)."""
    return [lab for lab, v in m.select(name, where) if test(v)]


def absent(m: Samples, name: str, labels: Labels) -> list[Labels]:
    """``absent(name{labels})``: ``[labels]`` when no series has them, else ``[]``."""
    present = m.select(name, lambda lab: all(lab.get(k) == v for k, v in labels.items()))
    return [] if present else [dict(labels)]


def ratio_over(m: Samples, num: str, den: str, threshold: float) -> list[Labels]:
    """``num / den > threshold`` (one-to-one on identical labels; a zero denominator never fires)."""
    dens = {_key(lab): v for lab, v in m.select(den)}
    return [lab for lab, v in m.select(num) if dens.get(_key(lab)) and v / dens[_key(lab)] > threshold]


def avg_over_time(points: Points) -> float | None:
    return sum(v for _t, v in points) / len(points) if points else None


def predict_linear(points: Points, now: float, ahead: float) -> float | None:
    """PromQL's ``predict_linear``: the least-squares line through ``points`` (times relative to
    ``now``), evaluated ``ahead`` seconds after ``now``; ``None`` with fewer than two points."""
    if len(points) < 2:
        return None
    n = float(len(points))
    xs = [t - now for t, _v in points]
    ys = [v for _t, v in points]
    sx, sy = sum(xs), sum(ys)
    sxx = sum(x * x for x in xs)
    sxy = sum(x * y for x, y in zip(xs, ys, strict=True))
    cov, var = sxy - sx * sy / n, sxx - sx * sx / n
    slope = cov / var if var else 0.0
    intercept = sy / n - slope * sx / n
    return intercept + slope * ahead
