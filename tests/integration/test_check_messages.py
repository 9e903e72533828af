"""`egressgate check` points at the right line and names the right key (issue 18).

Each case is a config a newcomer writes, run through the real CLI; each assertion failed on
the code before the fix: an unknown policy hid the same rule's invalid `source`, the "no auth"
error pointed at the first clients rule instead of the one naming `user`, limit errors did not
name their key, and `check --help` described the --live probes as alternatives.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.helpers_ops import CliResult, run_cli

CLIENTS = """\
allow: [a.example]
policies:
  ci: {allow: [b.example]}
clients:
  - source: 10.1.0.0/16
    policy: ci
  - policy: nosuch
    source: 10.0.0.0/33
  - source: 10.2.0.0/16
    policy: ci
  - policy: ci
    user: [alice]
"""

LIMITS = """\
allow: [a.example]
limits:
  header_timeout_s: 0
  max_connections: 0
  shutdown_delay_s: -1
"""


def check(tmp_path: Path, text: str) -> CliResult:
    path = tmp_path / "egress.yaml"
    path.write_text(text, encoding="utf-8")
    result = run_cli(["check", "--config", str(path)], timeout=30.0)
    assert result.exit_code == 1, result
    return result


def errors(result: CliResult, tmp_path: Path) -> list[str]:
    prefix = f"{tmp_path / 'egress.yaml'}:"
    return [line.removeprefix(prefix) for line in result.stderr_lines[:-1]]


def test_unknown_policy_does_not_hide_the_rules_invalid_source(tmp_path: Path) -> None:
    found = errors(check(tmp_path, CLIENTS), tmp_path)
    assert found[0] == "7:13: unknown policy 'nosuch'; defined: ci, default"
    assert found[1].startswith("8:13: '10.0.0.0/33' is not a valid CIDR network")


def test_users_without_auth_points_at_the_rule_naming_users(tmp_path: Path) -> None:
    found = errors(check(tmp_path, CLIENTS), tmp_path)
    no_auth = [line for line in found if "no `auth` section" in line]
    assert no_auth == [
        "11:5: clients rules name users, but no `auth` section says where their passwords are"
    ]


def test_limit_errors_name_the_key_and_the_value_as_written(tmp_path: Path) -> None:
    result = check(tmp_path, LIMITS)
    assert errors(result, tmp_path) == [
        "3:21: limits.header_timeout_s: expected a positive number, got 0",
        "4:20: limits.max_connections: expected a whole number from 1 to 1000000000, got 0",
        "5:21: limits.shutdown_delay_s: expected a number ≥ 0, got -1",
    ]
    assert result.stderr_lines[-1] == "egressgate check: 3 error(s)"


def test_check_help_describes_the_live_probe_order() -> None:
    result = run_cli(["check", "--help"], timeout=30.0)
    assert result.exit_code == 0, result
    text = " ".join(result.stdout.split())
    # live_problem asks /readyz on the admin listener first, then always the proxy's /healthz.
    assert "the admin listener's /readyz (when the config has an admin listener" in text
    assert "then the proxy port's own GET /healthz (always)" in text
    assert "otherwise" not in text
