"""The dashboards and alert rules kept in the chart: their shape, promtool's checks and unit tests, and how the chart
carries them (the running platform is checked against a real Prometheus in tests/test_observability.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from chart_support import CHART, render_chart

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
RULE_FILES = sorted((CHART / "rules").glob("*.yaml"))
RULE_TESTS = sorted((CHART / "rules" / "tests").glob("*.yaml"))


def promtool(*args: str) -> subprocess.CompletedProcess:
    subprocess.run([str(REPO / "scripts" / "install_prometheus.sh")], check=True)  # Debian's package when missing
    return subprocess.run(["promtool", *args], capture_output=True, text=True)


def test_the_four_dashboards_use_a_datasource_variable():
    assert {p.stem for p in DASHBOARDS} == {
        "chatplane-overview", "chatplane-inference", "chatplane-tenants", "chatplane-events-jobs"
    }
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert board["uid"] == path.stem and board["panels"]
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", f"{path.name}: {panel['title']}"
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", f"{path.name}: {panel['title']}"


def test_alert_rules_pass_promtool_check_and_unit_tests():
    assert RULE_FILES and RULE_TESTS
    check = promtool("check", "rules", *map(str, RULE_FILES))
    assert check.returncode == 0, check.stdout + check.stderr
    test = promtool("test", "rules", *map(str, RULE_TESTS))
    assert test.returncode == 0, test.stdout + test.stderr


def test_the_alerts_the_issue_asks_for_exist():
    alerts = {r["alert"] for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]
              if "alert" in r}
    assert {
        "ChatplaneHighErrorRate", "ChatplaneTTFTBudgetBurnFast", "ChatplaneInferenceQueueSaturated",
        "ChatplaneOutboxBacklog", "ChatplaneConsumerLag", "ChatplaneServiceDown",
    } <= alerts


def test_the_prometheus_rule_carries_the_rule_files_but_not_their_tests():
    rendered = render_chart(CHART, {"observability": {"prometheusRule": {"enabled": True}}})
    (rule,) = rendered.of_kind("PrometheusRule")
    expected = [g for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]]
    assert rule["spec"]["groups"] == expected
    assert all("tests" not in g and "input_series" not in json.dumps(g) for g in rule["spec"]["groups"])
