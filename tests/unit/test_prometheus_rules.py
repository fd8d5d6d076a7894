"""The shipped Prometheus config and alert rules, checked by the real `promtool` (Debian package `prometheus`,
installed by `make system-deps`). tests/unit/test_prometheus_queries.py checks the metric names they use."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from k2_core.settings import REPO_ROOT

PROMETHEUS_DIR = REPO_ROOT / "config" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: run `make system-deps` (Debian package `prometheus`)"
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def alert_rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules_and_the_config() -> None:
    rules = promtool("check", "rules", ALERTS.name)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout


def test_promtool_unit_tests_make_every_alert_fire() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    quiet = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if not case.get("exp_alerts")
    }
    names = {str(rule["alert"]) for rule in alert_rules()}
    assert fired == names  # every alert is shown firing ...
    assert quiet == names  # ... and shown staying quiet on a healthy (or not yet long enough) series


def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """Mutation check: the same unit tests fail against a rule with a wrong threshold."""
    broken = ALERTS.read_text().replace("(kafka_consumer_lag_seconds) > 60", "(kafka_consumer_lag_seconds) > 20")
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(PROMETHEUS_DIR / "alerts_test.yml", tmp_path / "alerts_test.yml")
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "KafkaConsumerLagHigh" in result.stdout + result.stderr
