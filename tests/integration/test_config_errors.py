"""Invalid config files: `egressgate run` and `egressgate check` refuse them, naming every
problem at once as file:line:column and its reason, and nothing is left listening."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers_core import free_port
from tests.support.proxy import REPO_ROOT, clean_env


def egressgate(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run `python -m egressgate ARGS` (bounded); its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "egressgate", *args],
        cwd=REPO_ROOT,
        env=clean_env({"PYTHONUNBUFFERED": "1"}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def position(text: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the `occurrence`-th `needle` in `text`."""
    index = -1
    for _ in range(occurrence):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def assert_nothing_listens(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.fixture
def bad_config(tmp_path: Path) -> tuple[Path, int, dict[str, tuple[int, int]]]:
    """A config with seven independent errors; returns its path, its listen port and where
    each error is (line, column)."""
    port = free_port()
    text = (
        f'listen: "127.0.0.1:{port}"\n'
        "admin_listen: null\n"
        "allow:\n"
        "  - ok.example\n"
        '  - "bad*pattern.example"\n'
        "connect_ports: [443, 70000]\n"
        'allow_private: ["10.0.0.0/33"]\n'
        "mode: enforcing\n"
        "limits:\n"
        "  header_timeout_s: -1\n"
        "unknown_key: 1\n"
        "hosts_file: /nonexistent/egressgate-hosts\n"
    )
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    where = {
        "'*' is only allowed": position(text, '"bad*pattern'),
        "70000": position(text, "70000"),
        "10.0.0.0/33": position(text, '"10.0.0.0/33"'),
        "mode must be one of": position(text, "enforcing"),
        "positive number": position(text, "-1"),
        "unknown key 'unknown_key'": position(text, "unknown_key"),
        "file not found": position(text, "/nonexistent"),
    }
    return path, port, where


def assert_every_issue_located(output: str, path: Path, where: dict[str, tuple[int, int]]) -> None:
    lines = output.splitlines()
    for reason, (line, column) in where.items():
        located = f"{path}:{line}:{column}: "
        matching = [text for text in lines if located in text and reason in text]
        assert matching, f"no line with {located!r} and {reason!r} in:\n{output}"


def test_run_with_an_invalid_config_exits_nonzero_listing_every_error(
    bad_config: tuple[Path, int, dict[str, tuple[int, int]]],
) -> None:
    path, port, where = bad_config
    done = egressgate("run", "--config", str(path))
    assert done.returncode != 0
    assert_every_issue_located(done.stderr, path, where)
    assert "listening" not in done.stderr
    assert_nothing_listens(port)


def test_check_with_an_invalid_config_exits_nonzero_listing_every_error(
    bad_config: tuple[Path, int, dict[str, tuple[int, int]]],
) -> None:
    path, port, where = bad_config
    done = egressgate("check", "--config", str(path))
    assert done.returncode == 1
    assert_every_issue_located(done.stderr, path, where)
    assert f"{len(where)} error(s)" in done.stderr
    assert_nothing_listens(port)


@pytest.mark.parametrize("command", ["run", "check"])
def test_yaml_syntax_error_is_located(tmp_path: Path, command: str) -> None:
    port = free_port()
    text = f'listen: "127.0.0.1:{port}"\nadmin_listen: null\nallow: [a.example, b.example\n'
    path = tmp_path / "syntax.yaml"
    path.write_text(text, encoding="utf-8")
    done = egressgate(command, "--config", str(path))
    assert done.returncode != 0
    assert f"{path}:" in done.stderr
    assert "YAML syntax" in done.stderr
    issue = next(line for line in done.stderr.splitlines() if "YAML syntax" in line)
    located = issue.split(f"{path}:", 1)[1].split(":")
    assert located[0].isdigit()
    assert located[1].isdigit()
    assert_nothing_listens(port)


@pytest.mark.parametrize("command", ["run", "check"])
def test_duplicate_keys_and_wrong_types_are_located(tmp_path: Path, command: str) -> None:
    port = free_port()
    text = (
        f'listen: "127.0.0.1:{port}"\n'
        "admin_listen: null\n"
        "allow: [a.example]\n"
        "allow: [b.example]\n"
        "sni_check: maybe\n"
        "limits:\n"
        "  max_connections: lots\n"
    )
    path = tmp_path / "types.yaml"
    path.write_text(text, encoding="utf-8")
    done = egressgate(command, "--config", str(path))
    assert done.returncode != 0
    expected = {
        "duplicate key 'allow'": position(text, "allow", 2),
        "true or false": position(text, "maybe"),
        "whole number": position(text, "lots"),
    }
    assert_every_issue_located(done.stderr, path, expected)
    assert_nothing_listens(port)


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    for command in ("run", "check"):
        done = egressgate(command, "--config", str(path))
        assert done.returncode != 0
        assert str(path) in done.stderr
        assert "cannot read" in done.stderr


def test_check_accepts_a_valid_config_without_starting_anything(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "good.yaml"
    path.write_text(
        f'listen: "127.0.0.1:{port}"\nadmin_listen: null\n'
        "allow: [api.example.com, .example.org, '*.cdn.example.net', 203.0.113.0/24]\n"
        "connect_ports: [443, 8443-8444]\nhttp_ports: [80]\nallow_private: [10.1.0.0/16]\n"
        "mode: report\nsni_check: true\ntunnels_without_sni: deny\n"
        "limits: {max_connections: 10, header_timeout_s: 2.5}\n",
        encoding="utf-8",
    )
    done = egressgate("check", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout
    assert "4 allow entries" in done.stdout
    assert_nothing_listens(port)


def test_a_listen_port_in_use_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        config = tmp_path / "busy.yaml"
        config.write_text(f'listen: "127.0.0.1:{port}"\nadmin_listen: null\n', encoding="utf-8")
        for workers in ("1", "2"):
            result = egressgate("run", "--config", str(config), "--workers", workers)
            assert result.returncode == 1, result.stderr
            assert "Traceback" not in result.stderr
            assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
            assert "in use" in result.stderr


def test_unloadable_tls_material_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    key.write_text("not a key\n")
    port = free_port()
    text = (
        f'listen: "127.0.0.1:{free_port()}"\n'
        "admin_listen: null\n"
        "tls_listen:\n"
        f'  listen: "127.0.0.1:{port}"\n'
        f"  cert_file: {cert}\n"
        f"  key_file: {key}\n"
    )
    config = tmp_path / "tls.yaml"
    config.write_text(text, encoding="utf-8")
    for command in ("run", "check"):
        result = egressgate(command, "--config", str(config))
        assert result.returncode == (2 if command == "run" else 1), result.stderr
        assert "Traceback" not in result.stderr
        line, _ = position(text, "cert_file")
        assert f"{config}:{line}:" in result.stderr
        assert "cannot load cert_file/key_file" in result.stderr
    assert_nothing_listens(port)
