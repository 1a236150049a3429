"""The alert rules (the one set: the chart's files/alerts.yaml), their unit tests and the
dashboard's queries, checked by promtool.

promtool comes with Debian's `prometheus` package (CI: `apt-get install -y prometheus`);
without it these tests are skipped with that reason, the structural checks still run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# Helm reads only files inside the chart: the rules and the dashboard live there, once.
RULES = ROOT / "helm" / "meshgate" / "files" / "alerts.yaml"
RULES_TEST = ROOT / "observability" / "prometheus" / "alerts_test.yaml"
DASHBOARD = ROOT / "helm" / "meshgate" / "files" / "grafana" / "meshgate.json"
PROMTOOL = shutil.which("promtool")

# Every series the gateway exposes (as Prometheus names them), by metric family.
METRICS = {
    "meshgate_events_total",
    "meshgate_events_refused_total",
    "meshgate_publish_duration_seconds",
    "meshgate_inflight_events",
    "meshgate_replicated_events_total",
    "meshgate_replication_latency_seconds",
    "meshgate_broker_connected",
    "meshgate_link_lag_events",
    "meshgate_link_lag_seconds",
    "meshgate_link_state",
    "meshgate_forwarded_total",
    "meshgate_link_retries_total",
    "meshgate_dead_lettered_total",
    "meshgate_config_reloads_total",
    "meshgate_build_info",
    "meshgate_ready",
}
# Grafana's variables, as literals promtool can parse.
_TEMPLATE_VARS = {
    "${region}": "here",
    "$region": "here",
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}
_NAME = re.compile(r"\bmeshgate_[a-z_]+")


def promtool(*args: str, cwd: Path | None = None) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool not installed (apt-get install -y prometheus); promtool checks not run")
    proc = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=60)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(_panels(p.get("panels", [])))
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [
        (f"panel {p['id']} ({p['title']}) {t['refId']}", t["expr"])
        for p in _panels(dash["panels"])
        for t in p.get("targets", [])
    ]


def _literal(expr: str) -> str:
    for var, value in sorted(_TEMPLATE_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"a template variable left in {expr!r}"
    return expr


def _names(text: str) -> set[str]:
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in _NAME.findall(text)}


def test_alert_rules_are_valid() -> None:
    promtool("check", "rules", str(RULES))


def test_alert_rules_unit_test() -> None:
    promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)


# Every alert of the set, by severity.
ALERTS = {
    "MeshgateLinkLagHigh": "warning",
    "MeshgateLinkStuck": "critical",
    "MeshgateLinkLagCritical": "critical",
    "MeshgateLinkLagGrowing": "warning",
    "MeshgateDeadLettered": "warning",
    "MeshgateLinkPaused": "warning",
    "MeshgateGatewayDown": "critical",
    "MeshgateGatewayNotReady": "warning",
    "MeshgateBrokerDisconnected": "critical",
    "MeshgateStorageFull": "critical",
    "MeshgateConfigReloadRefused": "warning",
}


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_alert_rules_name_exposed_metrics_and_tell_on_call_what_to_check() -> None:
    found = rules()
    assert {r["alert"]: r["labels"]["severity"] for r in found} == ALERTS
    for rule in found:
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80, rule["alert"]
        assert _names(rule["expr"]) <= METRICS, rule["alert"]
    # Every alert has a promtool unit test that fires it.
    fired = {
        t["alertname"]
        for case in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for t in case["alert_rule_test"]
        if t.get("exp_alerts")
    }
    assert fired == set(ALERTS)


def test_one_rule_set_and_one_dashboard_in_the_repository() -> None:
    """main had two rule sets (observability/ and the chart's template) that differed."""
    defining = sorted(
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*.y*ml")
        if not {".venv", "build", ".git"} & set(path.relative_to(ROOT).parts)
        and "alert: Meshgate" in path.read_text(errors="replace")
    )
    assert defining == ["helm/meshgate/files/alerts.yaml"]
    dashboards = sorted(
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*.json")
        if not {".venv", "build", ".git", "node_modules"} & set(path.relative_to(ROOT).parts)
        and '"panels"' in path.read_text(errors="replace")
    )
    assert dashboards == ["helm/meshgate/files/grafana/meshgate.json"]
    # The unit tests run the chart's file itself.
    assert yaml.safe_load(RULES_TEST.read_text())["rule_files"] == ["../../helm/meshgate/files/alerts.yaml"]


def test_dashboard_shape() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["region"]["type"] == "query"
    ids = [p["id"] for p in _panels(dash["panels"])]
    assert len(ids) == len(set(ids))
    for p in _panels(dash["panels"]):
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]
    queries = dashboard_queries()
    used = set().union(*(_names(expr) for _, expr in queries))
    # Every metric the gateway exposes is on the dashboard, and nothing else is.
    assert used == METRICS
    for where, expr in queries:
        assert "$region" in expr, where  # every family has the region label


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    rules = [
        {"record": f"meshgate_dashboard:query_{i}", "expr": _literal(expr)}
        for i, (_, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(path))
