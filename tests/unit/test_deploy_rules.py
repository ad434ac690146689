"""The shipped dashboard and alert rules name only metrics the service exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import Metric

from tests.helpers import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "taskexec.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
#: Names of a family as a scrape shows them, by type (prometheus_client strips `_total`).
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
    "info": ("_info",),
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def _names(families: Iterable[Metric]) -> set[str]:
    names = set()
    for family in families:
        if family.name.startswith("taskexec_"):
            names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return names


def exported() -> set[str]:
    """Every series name the API's /metrics and the workers' (sweeper's, deliverer's) can carry."""
    from api.gauges import BuildInfo, WorkersUp
    from api.metrics import LedgerCollector
    from workers.deliverer_metrics import DelivererMetrics
    from workers.metrics import WorkerMetrics

    registry = CollectorRegistry()
    WorkerMetrics(registry)
    DelivererMetrics(registry)
    api = [
        *REGISTRY.collect(),  # api.metrics' counters and histogram, registered at import
        *LedgerCollector(None).describe(),  # type: ignore[arg-type] - describe reads nothing
        *WorkersUp(None).describe(),  # type: ignore[arg-type]
        *BuildInfo().collect(),
    ]
    return _names(api) | _names(registry.collect())


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, label_replace
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables ($__rate_interval, ...)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    # A name not followed by "(" (a function); the lookbehind keeps 1e3 and 5m out.
    found = re.findall(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {name for name in found if name.lower() not in KEYWORDS}


def _dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item)


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [("dashboard", e) for e in _dashboard_exprs(dashboard)]
    return found + [(rule["alert"], rule["expr"]) for rule in _alert_rules()]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (le, definition) (rate(taskexec_queue_wait_seconds_bucket{a="b"}[5m]))',
            {"taskexec_queue_wait_seconds_bucket"},
        ),
        (
            "max by (executor) (x_depth) > 0 unless on (executor) max(y_workers) > 0",
            {"x_depth", "y_workers"},
        ),
        ("histogram_quantile(0.95, rate(a_bucket[$__rate_interval])) > 1e3", {"a_bucket"}),
        ('label_replace(up, "dst", "$1", "src", "(.*)") offset 5m', {"up"}),
        ("count(count by (version) (b_info)) == bool 1", {"b_info"}),
    ],
)
def test_expressions_are_parsed_for_metric_names(expr, names):
    assert metric_names(expr) == names


def test_every_expression_names_only_exported_metrics():
    names = exported()
    # The families the tests below rely on are collected at all (counter and histogram suffixes).
    assert {"taskexec_tasks_submitted_total", "taskexec_queue_wait_seconds_bucket"} <= names
    assert {"taskexec_workers_up", "taskexec_build_info", "taskexec_lease_rescues_total"} <= names
    expressions = _expressions()
    assert len(expressions) >= 20
    unknown = {
        (where, name)
        for where, expr in expressions
        for name in metric_names(expr)
        if name not in names
    }
    assert not unknown, f"metrics the service does not export: {sorted(unknown)}"
    for where, expr in expressions:
        assert metric_names(expr), f"{where}: no metric in {expr!r}"


def test_the_alerts_an_operator_needs_are_there():
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    for alert in (
        "TaskexecQueueStuck",
        "TaskexecFailureRatioHigh",
        "TaskexecNoWorkers",
        "TaskexecLeaseRescues",
        "TaskexecWebhookDeliveriesFailing",
    ):
        assert alert in rules
        assert rules[alert]["annotations"]["summary"]


def test_the_dashboard_is_importable_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "taskexec" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
