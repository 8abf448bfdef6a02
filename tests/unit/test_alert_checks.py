"""Every alert rule has a Python evaluation (``coldkeep status`` shows which alerts would fire), and
it agrees with Prometheus: on each rule's promtool case (tests/unit/test_alert_rules.py: the
series that make promtool fire it, and the healthy ones) the Python check fires for exactly the
label sets promtool fires for, and stays silent on the healthy series."""

from __future__ import annotations

import re
from typing import Any

import pytest
from tests.unit.test_alert_rules import CASES, CONFIG

from coldkeep.config import parse_text
from coldkeep.ops.alerts import Rule, all_rules, rules_document
from coldkeep.ops.samples import Samples, predict_linear

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: PromQL's look-back: a series whose newest sample is older than this is absent
LOOKBACK_S = 300


def seconds(text: str) -> float:
    return sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", text))


def expand(values: str, interval: float) -> list[tuple[float, float]]:
    """promtool's expanding notation (``0+300x320``, ``100x120 300x20``) into (time, value)."""
    points: list[tuple[float, float]] = []
    for part in values.split():
        m = re.fullmatch(r"(-?[\d.e]+)(?:([+-][\d.e]+))?x(\d+)", part)
        assert m, part
        start, step, count = float(m.group(1)), float(m.group(2) or 0), int(m.group(3))
        for i in range(count + 1):
            points.append((len(points) * interval, start + step * i))
    return points


def series_name(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition("{")
    return name, dict(re.findall(r'(\w+)="([^"]*)"', rest))


def samples_at(series: list[tuple[str, str]], at: float, interval: float) -> Samples:
    m = Samples(at)
    for text, values in series:
        name, labels = series_name(text)
        points = [(t, v) for t, v in expand(values, interval) if t <= at]
        if points and at - points[-1][0] <= LOOKBACK_S:
            m.add(name, labels, points[-1][1])
            m.add_history(name, labels, points)
    return m


def _rules() -> dict[str, Rule]:
    return {rule.alert: rule for rule in all_rules(parse_text(CONFIG))}


def _sorted(labels: list[dict[str, str]]) -> list[list[tuple[str, str]]]:
    return sorted(sorted(lab.items()) for lab in labels)


def test_every_rule_in_the_rules_file_has_a_status_evaluation() -> None:
    doc = rules_document(parse_text(CONFIG))
    in_file = [rule["alert"] for group in doc["groups"] for rule in group["rules"]]
    rules = _rules()
    assert in_file == list(rules)
    assert [name for name, rule in rules.items() if rule.check is None] == []
    assert set(rules) == {key.split("#")[0] for key in CASES}  # "Alert#variant": another case of Alert


@pytest.mark.parametrize("alert", sorted(CASES))
def test_python_check_agrees_with_promtool_case(alert: str) -> None:
    case: dict[str, Any] = CASES[alert]
    rule = _rules()[alert.split("#")[0]]
    assert rule.check is not None
    interval, at = seconds(case.get("interval", "1m")), seconds(case["at"])
    fired = rule.check(samples_at(case["bad"], at, interval))
    assert _sorted(fired) == _sorted(case["labels"])
    assert rule.check(samples_at(case["good"], at, interval)) == []


def test_predict_linear_matches_promql() -> None:
    # 5 bytes every 300 s, the last sample at now: in 14 days 14 * 86400 / 300 * 5 more
    points = [(float(t), t / 60.0) for t in range(0, 3001, 300)]
    assert predict_linear(points, 3000.0, 14 * 86400) == pytest.approx(50 + 14 * 86400 / 60)
    assert predict_linear(points[:1], 0.0, 10) is None


def test_a_drill_of_any_scenario_counts_for_the_drill_rules() -> None:
    rule = _rules()["ColdkeepDrillStale"]
    assert rule.check is not None and 'type=~"drill|drill_.+"' in rule.expr
    m = Samples(40 * 86400.0)
    m.add("coldkeep_job_last_success_timestamp_seconds", {"type": "drill_database"}, 0.0)
    assert rule.check(m) == [{"type": "drill_database"}]


def test_drill_rto_rule_follows_the_configured_objective() -> None:
    config = parse_text(CONFIG + '\n[drill]\nrto_objective = "30m"\n')
    rule = {r.alert: r for r in all_rules(config)}["ColdkeepDrillRtoOverObjective"]
    assert rule.expr == "coldkeep_drill_rto_seconds > 1800"
    at = Samples(0.0)
    at.add("coldkeep_drill_rto_seconds", {}, 2000.0)  # over 30 min, under the default hour
    assert rule.check is not None and rule.check(at) == [{}]
