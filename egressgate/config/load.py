"""YAML → `config.model.Config`, with every error located at file:line:column.

Walks the composed YAML node tree (not the constructed objects) so that each value keeps its
position. Unknown keys, wrong types, duplicate keys and unparsable entries are refused, and all of
them are reported in one go (ConfigError carries the list). Referenced files (hosts_file, auth
users_file, TLS material) are checked to exist and, where we understand them, to parse, because a
config that would fail at the first request is not valid. No sockets, no asyncio, no logging.

Relative paths in the file are resolved against the directory of the config file.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any, TypeVar

import yaml

from egressgate.config.intercept_ca import CaFileError, load_ca
from egressgate.config.model import (
    DEFAULT_POLICY_NAME,
    MAX_SECRET_BYTES,
    MIN_SECRET_BYTES,
    AuthConfig,
    ClientRule,
    Config,
    DnsAnswer,
    DnsConfig,
    DnsRefusal,
    InterceptConfig,
    InterceptRuleConfig,
    Limits,
    ListenAddress,
    Mode,
    NoSniAction,
    PolicyConfig,
    PortRange,
    Secret,
    SetHeader,
    TlsInterceptConfig,
    TlsListenConfig,
)
from egressgate.errors import ConfigError, ConfigIssue
from egressgate.names.hosts import parse_hosts
from egressgate.names.paths import PathPattern
from egressgate.names.patterns import DomainPattern, HostMatcher, PatternKind, parse_cidr

T = TypeVar("T")

POLICY_KEYS = (
    "allow",
    "connect_ports",
    "http_ports",
    "allow_private",
    "mode",
    "sni_check",
    "tunnels_without_sni",
    "intercept",
)
DNS_KEYS = (
    "dns_listen",
    "dns_passthrough",
    "dns_refusal",
    "dns_answer",
    "dns_proxy_addresses",
    "dns_proxy_ttl_s",
)
TOP_LEVEL_KEYS = (
    "listen",
    "admin_listen",
    "tls_listen",
    "transparent_listen",
    "socks_listen",
    "tls_intercept",
    *DNS_KEYS,
    *POLICY_KEYS,
    "policies",
    "default_policy",
    "clients",
    "auth",
    "hosts_file",
    "nameservers",
    "access_log",
    "workers",
    "forwarded_for",
    "reload_revokes",
    "limits",
)


class _Invalid(Exception):
    """Internal: one value is wrong; the walker records it and carries on."""

    def __init__(self, node: yaml.Node | None, message: str) -> None:
        self.node = node
        self.message = message


class _Reported(Exception):
    """Internal: the node's issue is already recorded; the caller only drops the value."""


class _Walker:
    """Collects issues while converting nodes; each converter raises _Invalid for its own node."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[ConfigIssue] = []
        self._constructor = yaml.constructor.SafeConstructor()

    def issue(self, node: yaml.Node | None, message: str) -> None:
        if node is None:
            self.issues.append(ConfigIssue(self.source, None, None, message))
            return
        mark = node.start_mark
        self.issues.append(ConfigIssue(self.source, mark.line + 1, mark.column + 1, message))

    def attempt(self, node: yaml.Node, convert: Callable[[yaml.Node], T]) -> T | None:
        try:
            return convert(node)
        except _Invalid as exc:
            self.issue(exc.node or node, exc.message)
            return None
        except _Reported:
            return None

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise _Invalid(node, "expected a single value, not a list or mapping")
        try:
            return self._constructor.construct_object(node, deep=True)
        except Exception as exc:
            # Fix (unit tests, test_load.py): an explicit tag escaped as a raw exception instead
            # of an issue: `!foo x` and `<<:` (ConstructorError), `!!int x` (ValueError),
            # `!!bool x` (KeyError)... Whatever the constructor fails with, the value is invalid.
            problem = getattr(exc, "problem", None) or str(exc)
            raise _Invalid(node, f"cannot read this value: {problem}") from None

    def mapping(self, node: yaml.Node, allowed: tuple[str, ...], what: str) -> dict[str, yaml.Node]:
        """Keys → value nodes; unknown and duplicate keys are issues (the rest is kept)."""
        if not isinstance(node, yaml.MappingNode):
            raise _Invalid(node, f"{what} must be a mapping of key: value")
        result: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # Fix (unit tests, test_load.py): a `<<:` merge key has no constructor here, and
                # its error used to discard the whole mapping (and every other issue in it).
                self.issue(key_node, f"{what}: YAML merge keys (<<) are not supported")
                continue
            key: Any = None
            if isinstance(key_node, yaml.ScalarNode):
                try:
                    key = self.scalar(key_node)
                except _Invalid as exc:  # a key with a bad tag: one issue, keep going
                    self.issue(key_node, exc.message)
                    continue
            if not isinstance(key, str):
                self.issue(key_node, f"{what}: keys must be strings")
            elif key in result:
                self.issue(key_node, f"duplicate key {key!r} in {what}")
            elif allowed and key not in allowed:
                self.issue(
                    key_node,
                    f"unknown key {key!r} in {what}; expected one of: " + ", ".join(allowed),
                )
            else:
                result[key] = value_node
        return result

    def items(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        """A YAML list's item nodes; a single scalar is accepted as a list of one."""
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.ScalarNode) and self.scalar(node) is not None:
            return [node]
        if isinstance(node, yaml.ScalarNode):
            return []
        raise _Invalid(node, f"{what} must be a list")

    def each(self, node: yaml.Node, what: str, convert: Callable[[yaml.Node], T]) -> tuple[T, ...]:
        out: list[T] = []
        for item in self.items(node, what):
            value = self.attempt(item, convert)
            if value is not None:
                out.append(value)
        return tuple(out)

    # ---- typed scalars
    def string(self, node: yaml.Node) -> str:
        value = self.scalar(node)
        if not isinstance(value, str) or not value.strip():
            raise _Invalid(node, f"expected a non-empty string, got {_describe(value)}")
        return value

    def optional_string(self, node: yaml.Node) -> str | None:
        value = self.scalar(node)
        return None if value is None else self.string(node)

    def boolean(self, node: yaml.Node) -> bool:
        value = self.scalar(node)
        if not isinstance(value, bool):
            raise _Invalid(node, f"expected true or false, got {_describe(value)}")
        return value

    def integer(self, node: yaml.Node, low: int, high: int) -> int:
        value = self.scalar(node)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Invalid(
                node, f"expected a whole number from {low} to {high}, got {_describe(value)}"
            )
        return value

    def positive_number(self, node: yaml.Node) -> float:
        value = self.scalar(node)
        if not _finite(value) or value <= 0:
            raise _Invalid(node, f"expected a positive number, got {_describe(value)}")
        return float(value)

    def non_negative_number(self, node: yaml.Node) -> float:
        value = self.scalar(node)
        if not _finite(value) or value < 0:
            raise _Invalid(node, f"expected a number ≥ 0, got {_describe(value)}")
        return float(value)

    def parsed(self, node: yaml.Node, parse: Callable[[str], T]) -> T:
        """A string value run through a model parser whose ValueError becomes an issue."""
        value = self.scalar(node)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise _Invalid(node, f"expected a string, got {_describe(value)}")
        try:
            return parse(value)
        except ValueError as exc:
            raise _Invalid(node, str(exc)) from exc

    def port(self, node: yaml.Node) -> PortRange:
        return self.parsed(node, PortRange.parse)


def _finite(value: object) -> bool:
    """A real, finite number (not a bool).

    Fix (unit tests, test_load.py): `.nan` passed both `<= 0` and `< 0` tests and became a
    timeout, `.inf` was accepted too, and an integer too large for a float raised OverflowError.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _describe(value: object) -> str:
    """The value as the operator wrote it: `0`, `'abc'`, `true`, `nothing (null)`."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def _named(key: str, convert: Callable[[yaml.Node], T]) -> Callable[[yaml.Node], T]:
    """`convert`, with its messages prefixed by the key they are about (`limits.x_s: ...`)."""

    def named(node: yaml.Node) -> T:
        try:
            return convert(node)
        except _Invalid as exc:
            raise _Invalid(exc.node, f"{key}: {exc.message}") from None

    return named


def load_config_file(path: str) -> Config:
    """Read, parse and validate a config file. Raises ConfigError listing every issue."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError([ConfigIssue(path, None, None, f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(path, None, None, "not UTF-8 text")]) from exc
    return load_config_text(text, path, base_dir=os.path.dirname(os.path.abspath(path)))


def load_config_text(
    text: str, source: str = "<config>", base_dir: str | None = None, *, secrets: bool = True
) -> Config:
    """Parse and validate config text. `base_dir` anchors relative paths (default: cwd).

    `secrets=False` leaves `set_headers` secrets unread (their Secret is empty): for tools that
    only describe a config (`k8s render`), run where the secrets do not exist. A config loaded
    so must never be compiled for traffic."""
    walker = _Walker(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:
        raise ConfigError([_reader_issue(source, text, exc)]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        raise ConfigError([ConfigIssue(source, line, column, f"YAML syntax: {problem}")]) from exc
    except RecursionError:
        # Fix (unit tests, test_load.py): PyYAML composes recursively, so a few hundred nested
        # `[` escaped as RecursionError instead of a ConfigError.
        raise ConfigError([ConfigIssue(source, None, None, "YAML nested too deeply")]) from None
    builder = _ConfigBuilder(walker, base_dir or os.getcwd(), read_secrets=secrets)
    config = builder.build(root)
    if walker.issues:
        raise ConfigError(sorted(walker.issues, key=lambda i: (i.line or 0, i.column or 0)))
    return config


def _reader_issue(source: str, text: str, exc: yaml.reader.ReaderError) -> ConfigIssue:
    """A character YAML does not allow, located.

    Fix (fuzz tests, tests/fuzz/test_fuzz_config.py): a control character (NUL, BEL, U+FFFE...)
    fails in YAML's reader, whose error has an offset but no mark: it came out without a line,
    and with PyYAML's '"<unicode string>", position N' as the message.
    """
    offset = exc.position
    line_start = text.rfind("\n", 0, offset) + 1
    char = exc.character
    shown = f"U+{char:04X}" if isinstance(char, int) else repr(char)
    return ConfigIssue(
        source,
        text.count("\n", 0, offset) + 1,
        offset - line_start + 1,
        f"YAML syntax: character {shown} is not allowed in YAML ({exc.reason})",
    )


class _ConfigBuilder:
    """Builds the model from the root node; every sub-builder records issues and continues."""

    def __init__(self, walker: _Walker, base_dir: str, *, read_secrets: bool = True) -> None:
        self.w = walker
        self.base_dir = base_dir
        self.read_secrets = read_secrets
        # The first clients rule naming `user` / `tls_name`, for the cross-checks' location.
        self._criteria_nodes: dict[str, yaml.Node] = {}
        # Each policy's `intercept` node, for the cross-checks' location.
        self._intercept_nodes: dict[str, yaml.Node] = {}

    def build(self, root: yaml.Node | None) -> Config:
        config = Config(source=self.w.source)
        if root is None:
            return config  # an empty file: the built-in defaults
        top = self.w.attempt(root, lambda n: self.w.mapping(n, TOP_LEVEL_KEYS, "the config"))
        if top is None:
            return config
        changes: dict[str, Any] = {}
        self._listeners(top, changes)
        self._dns(top, changes)
        self._files_and_logging(top, changes)
        policies = self._policies(top)
        changes["policies"] = policies
        names = {p.name for p in policies}
        if "default_policy" in top:
            name = self.w.attempt(top["default_policy"], self.w.string)
            if name is not None and name not in names:
                self.w.issue(
                    top["default_policy"],
                    f"default_policy {name!r} is not a defined "
                    f"policy; defined: {', '.join(sorted(names))}",
                )
            elif name is not None:
                changes["default_policy"] = name
        if "auth" in top:
            changes["auth"] = self.w.attempt(top["auth"], self._auth)
        if "clients" in top:
            # Fix (unit tests, test_load.py): `clients: {}` (not a list) escaped as the
            # internal _Invalid exception: go through attempt() like every other key.
            changes["clients"] = self.w.attempt(top["clients"], lambda n: self._clients(n, names))
        clean: dict[str, Any] = {
            k: (None if v is _NULL else v) for k, v in changes.items() if v is not None
        }
        config = replace(config, **clean)
        self._cross_checks(config, top)
        return config

    # ---- listeners
    def _listeners(self, top: dict[str, yaml.Node], changes: dict[str, Any]) -> None:
        if "listen" in top:
            changes["listen"] = self.w.attempt(
                top["listen"], lambda n: self.w.parsed(n, ListenAddress.parse)
            )
        if "admin_listen" in top:
            node = top["admin_listen"]
            if isinstance(node, yaml.ScalarNode) and self.w.attempt(node, self.w.scalar) is None:
                changes["admin_listen"] = _NULL  # explicitly turned off
            else:
                changes["admin_listen"] = self.w.attempt(
                    node, lambda n: self.w.parsed(n, ListenAddress.parse)
                )
        if "tls_listen" in top:
            changes["tls_listen"] = self.w.attempt(top["tls_listen"], self._tls_listen)
        if "tls_intercept" in top:
            node = top["tls_intercept"]
            if isinstance(node, yaml.ScalarNode) and self.w.attempt(node, self.w.scalar) is None:
                changes["tls_intercept"] = _NULL  # written out as off (the default)
            else:
                changes["tls_intercept"] = self.w.attempt(node, self._tls_intercept)
        if "transparent_listen" in top:
            node = top["transparent_listen"]
            if isinstance(node, yaml.ScalarNode) and self.w.attempt(node, self.w.scalar) is None:
                changes["transparent_listen"] = _NULL  # explicitly off (the default)
            else:
                changes["transparent_listen"] = self.w.attempt(
                    node, lambda n: self.w.parsed(n, ListenAddress.parse)
                )
        if "socks_listen" in top:
            node = top["socks_listen"]
            if isinstance(node, yaml.ScalarNode) and self.w.attempt(node, self.w.scalar) is None:
                changes["socks_listen"] = _NULL  # written out as off
            else:
                changes["socks_listen"] = self.w.attempt(
                    node, lambda n: self.w.parsed(n, ListenAddress.parse)
                )

    def _dns(self, top: dict[str, yaml.Node], changes: dict[str, Any]) -> None:
        """The DNS guard's keys (docs/transparent.md); its limits are under `limits`."""
        w = self.w
        if "dns_listen" in top:
            node = top["dns_listen"]
            if isinstance(node, yaml.ScalarNode) and w.attempt(node, w.scalar) is None:
                changes["dns_listen"] = _NULL
            else:
                changes["dns_listen"] = w.attempt(node, lambda n: w.parsed(n, ListenAddress.parse))
        values: dict[str, Any] = {}
        if "dns_passthrough" in top:
            values["passthrough"] = w.attempt(
                top["dns_passthrough"],
                lambda n: w.each(n, "dns_passthrough", self._name_pattern),
            )
        if "dns_refusal" in top:
            values["refusal"] = w.attempt(
                top["dns_refusal"], lambda n: w.parsed(n, _enum(DnsRefusal, "dns_refusal"))
            )
        if "dns_answer" in top:
            values["answer"] = w.attempt(
                top["dns_answer"], lambda n: w.parsed(n, _enum(DnsAnswer, "dns_answer"))
            )
        if "dns_proxy_addresses" in top:
            values["proxy_addresses"] = w.attempt(
                top["dns_proxy_addresses"],
                lambda n: w.each(n, "dns_proxy_addresses", lambda i: w.parsed(i, _ip_address)),
            )
        if "dns_proxy_ttl_s" in top:
            values["proxy_ttl_s"] = w.attempt(
                top["dns_proxy_ttl_s"], _named("dns_proxy_ttl_s", lambda n: w.integer(n, 1, 86400))
            )
        dns = replace(DnsConfig(), **{k: v for k, v in values.items() if v is not None})
        if dns.answer is DnsAnswer.PROXY and not dns.proxy_addresses:
            w.issue(
                top.get("dns_proxy_addresses", top.get("dns_answer")),
                "dns_answer: proxy needs dns_proxy_addresses (the addresses of this proxy's "
                "transparent listener that names are answered with)",
            )
        changes["dns"] = dns

    def _tls_listen(self, node: yaml.Node) -> TlsListenConfig | None:
        keys = ("listen", "cert_file", "key_file", "client_ca_file", "require_client_cert")
        m = self.w.mapping(node, keys, "tls_listen")
        for required in ("listen", "cert_file", "key_file"):
            if required not in m:
                raise _Invalid(node, f"tls_listen needs {required!r}")
        listen = self.w.attempt(m["listen"], lambda n: self.w.parsed(n, ListenAddress.parse))
        cert = self.w.attempt(m["cert_file"], self._existing_file)
        key = self.w.attempt(m["key_file"], self._existing_file)
        ca = (
            self.w.attempt(m["client_ca_file"], self._existing_file)
            if "client_ca_file" in m
            else None
        )
        require = (
            self.w.attempt(m["require_client_cert"], self.w.boolean)
            if "require_client_cert" in m
            else False
        )
        if require and ca is None:
            self.w.issue(node, "require_client_cert needs client_ca_file")
        if listen is None or cert is None or key is None:
            return None
        # Load the material now, so a wrong key or a PEM typo is a config error with a line,
        # not a traceback when the listener starts (or a reload that half-applies).
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            self.w.issue(m["cert_file"], f"cannot load cert_file/key_file: {_ssl_text(exc)}")
        if ca is not None:
            try:
                context.load_verify_locations(ca)
            except (ssl.SSLError, OSError) as exc:
                self.w.issue(m["client_ca_file"], f"cannot load client_ca_file: {_ssl_text(exc)}")
        return TlsListenConfig(listen, cert, key, ca, bool(require))

    def _tls_intercept(self, node: yaml.Node) -> TlsInterceptConfig | None:
        keys = ("ca_cert_file", "ca_key_file", "upstream_ca_file")
        m = self.w.mapping(node, keys, "tls_intercept")
        for required in ("ca_cert_file", "ca_key_file"):
            if required not in m:
                raise _Invalid(node, f"tls_intercept needs {required!r} (egressgate ca init)")
        cert = self.w.attempt(m["ca_cert_file"], self._existing_file)
        key = self.w.attempt(m["ca_key_file"], self._existing_file)
        upstream = None
        if "upstream_ca_file" in m:
            upstream = self.w.attempt(m["upstream_ca_file"], self._optional_ca_bundle)
        if cert is None or key is None:
            return None
        try:
            load_ca(cert, key)
        except CaFileError as exc:
            self.w.issue(m[exc.key], f"tls_intercept: {exc}")
        return TlsInterceptConfig(cert, key, upstream)

    def _optional_ca_bundle(self, node: yaml.Node) -> str | None:
        if self.w.scalar(node) is None:
            return None
        path = self._existing_file(node)
        context = ssl.create_default_context()
        try:
            context.load_verify_locations(path)
        except (ssl.SSLError, OSError) as exc:
            raise _Invalid(node, f"cannot load upstream_ca_file: {_ssl_text(exc)}") from None
        return path

    # ---- files, resolver, logging, limits
    def _files_and_logging(self, top: dict[str, yaml.Node], changes: dict[str, Any]) -> None:
        if "hosts_file" in top:
            changes["hosts_file"] = self.w.attempt(top["hosts_file"], self._hosts_file)
        if "nameservers" in top:
            changes["nameservers"] = self.w.attempt(
                top["nameservers"],
                lambda n: self.w.each(n, "nameservers", lambda i: self.w.parsed(i, _nameserver)),
            )
        if "access_log" in top:
            changes["access_log"] = self.w.attempt(top["access_log"], self._log_target)
        if "workers" in top:
            changes["workers"] = self.w.attempt(top["workers"], lambda n: self.w.integer(n, 1, 256))
        if "forwarded_for" in top:
            changes["forwarded_for"] = self.w.attempt(top["forwarded_for"], self.w.boolean)
        if "reload_revokes" in top:
            changes["reload_revokes"] = self.w.attempt(top["reload_revokes"], self.w.boolean)
        if "limits" in top:
            changes["limits"] = self.w.attempt(top["limits"], self._limits)

    def _path(self, value: str) -> str:
        return value if os.path.isabs(value) else os.path.join(self.base_dir, value)

    def _existing_file(self, node: yaml.Node) -> str:
        path = self._path(self.w.string(node))
        if not os.path.isfile(path):
            raise _Invalid(node, f"file not found: {path}")
        return path

    def _hosts_file(self, node: yaml.Node) -> str:
        path = self._existing_file(node)
        try:
            with open(path, encoding="utf-8") as handle:
                _, errors = parse_hosts(handle.read())
        except (OSError, UnicodeDecodeError) as exc:
            raise _Invalid(node, f"cannot read hosts_file {path}: {exc}") from exc
        for error in errors:
            self.w.issue(node, f"hosts_file {path} line {error.line}: {error.message}")
        return path

    def _log_target(self, node: yaml.Node) -> str:
        value = self.w.string(node)
        if value == "-":
            return value
        path = self._path(value)
        problem = _unwritable(path)
        if problem is not None:
            raise _Invalid(node, f"access_log {path}: {problem}")
        return path

    def _limits(self, node: yaml.Node) -> Limits:
        names = tuple(f.name for f in fields(Limits))
        m = self.w.mapping(node, names, "limits")
        values: dict[str, Any] = {}
        for key, value_node in m.items():
            convert: Callable[[yaml.Node], Any]
            if key == "shutdown_delay_s":
                convert = self.w.non_negative_number
            elif key == "reserved_fds":  # 0 turns the reserve off
                convert = self._reserve_count
            elif key.endswith("_s"):
                convert = self.w.positive_number
            else:
                convert = self._limit_count
            values[key] = self.w.attempt(value_node, _named(f"limits.{key}", convert))
        return replace(Limits(), **{k: v for k, v in values.items() if v is not None})

    def _limit_count(self, node: yaml.Node) -> int:
        return self.w.integer(node, 1, 10**9)

    def _reserve_count(self, node: yaml.Node) -> int:
        return self.w.integer(node, 0, 10**6)

    # ---- policies
    def _policies(self, top: dict[str, yaml.Node]) -> tuple[PolicyConfig, ...]:
        top_level = {k: v for k, v in top.items() if k in POLICY_KEYS}
        default = self._policy(DEFAULT_POLICY_NAME, top_level)
        policies = {DEFAULT_POLICY_NAME: default}
        if "policies" in top:
            named = self.w.attempt(top["policies"], lambda n: self.w.mapping(n, (), "policies"))
            for name, node in (named or {}).items():
                if name == DEFAULT_POLICY_NAME and top_level:
                    self.w.issue(
                        node,
                        "policy 'default' is defined twice: by the top-level "
                        f"keys ({', '.join(top_level)}) and under policies",
                    )
                    continue
                body = self.w.attempt(node, self._policy_body(name))
                if body is not None:
                    policies[name] = self._policy(name, body)
        return tuple(policies.values())

    def _policy_body(self, name: str) -> Callable[[yaml.Node], dict[str, yaml.Node]]:
        def body(node: yaml.Node) -> dict[str, yaml.Node]:
            return self.w.mapping(node, POLICY_KEYS, f"policy {name!r}")

        return body

    def _policy(self, name: str, m: dict[str, yaml.Node]) -> PolicyConfig:
        w = self.w
        values: dict[str, Any] = {"name": name}
        if "allow" in m:
            values["allow"] = w.attempt(m["allow"], lambda n: w.each(n, "allow", self._pattern))
        if "connect_ports" in m:
            values["connect_ports"] = w.attempt(
                m["connect_ports"], lambda n: w.each(n, "connect_ports", w.port)
            )
        if "http_ports" in m:
            values["http_ports"] = w.attempt(
                m["http_ports"], lambda n: w.each(n, "http_ports", w.port)
            )
        if "allow_private" in m:
            values["allow_private"] = w.attempt(
                m["allow_private"], lambda n: w.each(n, "allow_private", self._cidr)
            )
        if "mode" in m:
            values["mode"] = w.attempt(m["mode"], lambda n: w.parsed(n, _enum(Mode, "mode")))
        if "sni_check" in m:
            values["sni_check"] = w.attempt(m["sni_check"], w.boolean)
        if "tunnels_without_sni" in m:
            values["tunnels_without_sni"] = w.attempt(
                m["tunnels_without_sni"],
                lambda n: w.parsed(n, _enum(NoSniAction, "tunnels_without_sni")),
            )
        if "intercept" in m:
            values["intercept"] = w.attempt(m["intercept"], self._intercepts)
        policy = PolicyConfig(**{k: v for k, v in values.items() if v is not None})
        if "intercept" in m:
            self._intercept_nodes[name] = m["intercept"]
        return policy

    # ---- intercept (docs/interception.md)
    def _intercepts(self, node: yaml.Node) -> tuple[InterceptConfig, ...]:
        entries = self.w.each(node, "intercept", self._intercept)
        seen: dict[tuple[PatternKind, str], str] = {}
        for item, entry in zip(self.w.items(node, "intercept"), entries, strict=False):
            key = _intercept_key(entry.host)
            if key in seen:
                self.w.issue(item, f"intercept: host {entry.host!r} is listed twice")
            seen.setdefault(key, entry.host)
        return entries

    def _intercept(self, node: yaml.Node) -> InterceptConfig:
        m = self.w.mapping(node, ("host", "rules", "set_headers"), "an intercept entry")
        if "host" not in m:
            raise _Invalid(node, "an intercept entry needs 'host'")
        if "rules" not in m:
            raise _Invalid(
                node,
                "an intercept entry needs 'rules' (first match wins; `rules: [{}]` allows "
                "every request)",
            )
        host = self.w.attempt(m["host"], self._intercept_host)
        rules = self.w.attempt(m["rules"], self._intercept_rules)
        headers = self.w.attempt(m["set_headers"], self._set_headers) if "set_headers" in m else ()
        if host is None or rules is None or headers is None:
            raise _Reported
        return InterceptConfig(host, rules, headers, line=node.start_mark.line + 1)

    def _intercept_host(self, node: yaml.Node) -> str:
        text, pattern = self._parsed_pattern(node, "intercept host")
        if pattern.kind is PatternKind.ANY:
            raise _Invalid(node, "intercept host: '*' is refused; interception names its hosts")
        if pattern.kind is PatternKind.NETWORK:
            raise _Invalid(
                node, f"intercept host: {text!r} is an address; interception is for host names"
            )
        return text

    def _intercept_rules(self, node: yaml.Node) -> tuple[InterceptRuleConfig, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise _Invalid(node, "rules must be a non-empty list of rules (first match wins)")
        rules = self.w.each(node, "rules", self._intercept_rule)
        if len(rules) != len(node.value):
            raise _Reported
        return rules

    def _intercept_rule(self, node: yaml.Node) -> InterceptRuleConfig:
        m = self.w.mapping(node, ("methods", "paths", "websocket"), "a rule")
        w = self.w
        methods: tuple[str, ...] | None = ()
        paths: tuple[str, ...] | None = ()
        websocket: bool | None = False
        if "methods" in m:
            methods = w.attempt(m["methods"], lambda n: self._nonempty_each(n, "methods", _method))
        if "paths" in m:
            paths = w.attempt(m["paths"], lambda n: self._nonempty_each(n, "paths", _path))
        if "websocket" in m:
            websocket = w.attempt(m["websocket"], w.boolean)
        if methods is None or paths is None or websocket is None:
            raise _Reported
        if websocket and methods and "GET" not in methods:
            raise _Invalid(
                m["websocket"], "websocket: true needs GET in methods (an upgrade is a GET)"
            )
        return InterceptRuleConfig(methods, paths, websocket, line=node.start_mark.line + 1)

    def _nonempty_each(
        self, node: yaml.Node, what: str, parse: Callable[[str], str]
    ) -> tuple[str, ...]:
        items = self.w.items(node, what)
        if not items:
            raise _Invalid(node, f"{what} is empty: leave it out to mean any")
        values = self.w.each(node, what, lambda n: self.w.parsed(n, parse))
        if len(values) != len(items):
            raise _Reported
        return values

    def _set_headers(self, node: yaml.Node) -> tuple[SetHeader, ...]:
        m = self.w.mapping(node, (), "set_headers")
        headers: list[SetHeader] = []
        seen: set[str] = set()
        for name, value_node in m.items():
            key_node = _key_node(node, name)
            if self.w.attempt(key_node, _header_name) is None:
                continue
            if name.lower() in seen:
                self.w.issue(key_node, f"set_headers: {name!r} is set twice (names ignore case)")
                continue
            seen.add(name.lower())
            header = self.w.attempt(value_node, functools.partial(self._set_header, name))
            if header is not None:
                headers.append(header)
        if len(headers) != len(m):
            raise _Reported
        return tuple(headers)

    def _set_header(self, name: str, node: yaml.Node) -> SetHeader:
        text = self.w.string(node).strip()
        if text.startswith(("file:", "env:")):
            prefix, source = "", text
        else:
            prefix, _, source = text.rpartition(" ")
            prefix = prefix.strip()
        if not source.startswith(("file:", "env:")):
            raise _Invalid(
                node,
                f"set_headers {name}: the value comes from a secret, 'file:/path' or "
                "'env:NAME', optionally after a prefix like 'Bearer env:GH_TOKEN' "
                "(literal values are not supported)",
            )
        if prefix and not _printable(prefix.encode("utf-8", "replace")):
            raise _Invalid(node, f"set_headers {name}: the prefix has characters a header cannot")
        if not source.partition(":")[2]:
            raise _Invalid(node, f"set_headers {name}: {source!r} names no {source.split(':')[0]}")
        value = self._read_secret(node, name, source) if self.read_secrets else b""
        return SetHeader(name, Secret(source, value), prefix + " " if prefix else "")

    def _read_secret(self, node: yaml.Node, name: str, source: str) -> bytes:
        """The secret's bytes (surrounding whitespace dropped). Errors name the source, never
        the value (not even a part of it)."""
        kind, _, where = source.partition(":")
        if kind == "env":
            raw = os.environ.get(where, "").encode("utf-8", "surrogateescape")
            if not raw.strip():
                raise _Invalid(
                    node, f"set_headers {name}: environment variable {where} is unset or empty"
                )
            shown = f"environment variable {where}"
        else:
            path = self._path(where)
            raw = _read_secret_file(node, name, path)
            shown = f"file {path}"
        value = raw.strip()
        if len(value) < MIN_SECRET_BYTES:
            raise _Invalid(
                node,
                f"set_headers {name}: the secret in {shown} is shorter than {MIN_SECRET_BYTES} "
                "bytes: too short to be a credential, and to be looked for in traffic",
            )
        if not _printable(value):
            raise _Invalid(
                node,
                f"set_headers {name}: the secret in {shown} has bytes a header value cannot "
                "carry (a line break, a control character or non-ASCII)",
            )
        return value

    def _parsed_pattern(self, node: yaml.Node, what: str) -> tuple[str, DomainPattern]:
        """An allowlist-form entry: its text and parsed pattern; errors prefixed by `what`."""
        text = self.w.parsed(node, lambda s: s)
        try:
            return text, DomainPattern.parse(text)
        except ValueError as exc:
            raise _Invalid(node, f"{what}: {exc}") from exc

    def _pattern(self, node: yaml.Node) -> str:
        return self._parsed_pattern(node, "allow")[0]

    def _name_pattern(self, node: yaml.Node) -> str:
        """A dns_passthrough entry: the allowlist's name forms (exact, .domain, *.sub)."""
        text, pattern = self._parsed_pattern(node, "dns_passthrough")
        if pattern.network is not None:
            raise _Invalid(node, f"dns_passthrough: {text!r} is an address; list domain names")
        return text

    def _cidr(self, node: yaml.Node) -> str:
        text = self.w.string(node)
        try:
            parse_cidr(text)
        except ValueError as exc:
            raise _Invalid(node, str(exc)) from exc
        return text

    # ---- clients and auth
    def _clients(self, node: yaml.Node, policy_names: set[str]) -> tuple[ClientRule, ...]:
        def rule(item: yaml.Node) -> ClientRule:
            keys = ("policy", "source", "user", "tls_name")
            m = self.w.mapping(item, keys, "a clients rule")
            if "policy" not in m:
                raise _Invalid(item, "a clients rule needs 'policy'")
            # Fix (issue 18): an unknown policy used to end the rule's checks here and hide,
            # say, an invalid `source` in the same rule. Record it, check the rest, then drop.
            policy = self.w.attempt(m["policy"], self._known_policy(policy_names))
            for key in ("user", "tls_name"):
                if key in m:
                    self._criteria_nodes.setdefault(key, item)
            sources = self.w.each(m["source"], "source", self._cidr) if "source" in m else ()
            users = self.w.each(m["user"], "user", self.w.string) if "user" in m else ()
            names = self.w.each(m["tls_name"], "tls_name", self.w.string) if "tls_name" in m else ()
            if not any(key in m for key in ("source", "user", "tls_name")):
                raise _Invalid(
                    item,
                    "a clients rule needs at least one of source, user, "
                    "tls_name (a rule for everyone is `default_policy`)",
                )
            if policy is None:
                raise _Reported
            return ClientRule(
                policy,
                sources,
                users,
                tuple(n.lower() for n in names),
                line=item.start_mark.line + 1,
            )

        return self.w.each(node, "clients", rule)

    def _known_policy(self, policy_names: set[str]) -> Callable[[yaml.Node], str]:
        def known(node: yaml.Node) -> str:
            policy = self.w.string(node)
            if policy not in policy_names:
                defined = ", ".join(sorted(policy_names))
                raise _Invalid(node, f"unknown policy {policy!r}; defined: {defined}")
            return policy

        return known

    def _auth(self, node: yaml.Node) -> AuthConfig:
        m = self.w.mapping(node, ("users_file", "users_env", "realm"), "auth")
        users_file = (
            self.w.attempt(m["users_file"], self._existing_file) if "users_file" in m else None
        )
        users_env = self.w.attempt(m["users_env"], self.w.string) if "users_env" in m else None
        if users_file is None and users_env is None:
            raise _Invalid(node, "auth needs users_file or users_env (lines of user:password)")
        realm = self.w.attempt(m["realm"], self.w.string) if "realm" in m else None
        return AuthConfig(users_file, users_env, realm or "egressgate")

    def _cross_checks(self, config: Config, top: dict[str, yaml.Node]) -> None:
        self._dns_cross_checks(config, top)
        self._intercept_cross_checks(config)
        # Both point at the first rule that names the criterion, not at the `clients` list.
        if any(r.users for r in config.clients) and config.auth is None:
            self.w.issue(
                self._criteria_nodes.get("user", top.get("clients")),
                "clients rules name users, but no `auth` section says where their passwords are",
            )
        if any(r.tls_names for r in config.clients) and (
            config.tls_listen is None or config.tls_listen.client_ca_file is None
        ):
            self.w.issue(
                self._criteria_nodes.get("tls_name", top.get("clients")),
                "clients rules name tls_name, which needs tls_listen with client_ca_file",
            )

    def _intercept_cross_checks(self, config: Config) -> None:
        """Every intercepted host is allowed by its policy; interception needs its CA."""
        for policy in config.policies:
            if not policy.intercept:
                continue
            node = self._intercept_nodes.get(policy.name)
            if config.tls_intercept is None:
                self.w.issue(
                    node,
                    f"policy {policy.name!r} has intercept, which needs tls_intercept "
                    "(the CA that signs the intercepted hosts' certificates)",
                )
            matcher = HostMatcher([DomainPattern.parse(p) for p in policy.allow])
            for entry in policy.intercept:
                if not matcher.covers(DomainPattern.parse(entry.host)):
                    self.w.issue(
                        _line_node(node, entry.line),
                        f"intercept host {entry.host!r} is not allowed by policy "
                        f"{policy.name!r}: every intercepted host must also be under `allow`",
                    )

    def _dns_cross_checks(self, config: Config, top: dict[str, yaml.Node]) -> None:
        limits = config.limits
        if limits.dns_cache_min_ttl_s > limits.dns_cache_max_ttl_s:
            self.w.issue(
                top.get("limits"),
                f"limits.dns_cache_min_ttl_s ({limits.dns_cache_min_ttl_s:g}) is larger than "
                f"limits.dns_cache_max_ttl_s ({limits.dns_cache_max_ttl_s:g})",
            )
        listen = config.dns_listen
        if listen is None:
            return
        if listen.port == 0 and config.workers > 1:
            self.w.issue(
                top.get("dns_listen"),
                "dns_listen needs a fixed port with workers > 1 (the guard runs in worker 0)",
            )
        if str(listen) in config.nameservers:
            self.w.issue(
                top.get("nameservers"),
                f"nameservers lists {listen}, the guard's own dns_listen: queries would loop",
            )


_NULL = object()
# RFC 9110 5.6.2: token = 1*tchar
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Headers that frame the message or belong to one connection: the proxy owns them.
_UNSETTABLE_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "expect",
    }
)


def _method(text: str) -> str:
    """An HTTP method as rules name it; methods are case-sensitive (RFC 9110 9.1)."""
    if not _TOKEN.match(text):
        raise ValueError(f"methods: {text!r} is not an HTTP method name")
    if text != text.upper():
        raise ValueError(
            f"methods: {text!r}: methods are case-sensitive (RFC 9110 9.1); write {text.upper()!r}"
        )
    if text == "CONNECT":
        raise ValueError("methods: CONNECT inside an intercepted tunnel is never allowed")
    return text


def _path(text: str) -> str:
    try:
        PathPattern.parse(text)
    except ValueError as exc:
        raise ValueError(f"paths: {exc}") from None
    return text


def _header_name(node: yaml.Node) -> str:
    name = str(node.value)
    if not _TOKEN.match(name):
        raise _Invalid(None, f"set_headers: {name!r} is not a header name")
    if name.lower() in _UNSETTABLE_HEADERS or name.lower().startswith("proxy-"):
        raise _Invalid(None, f"set_headers: {name!r} frames the message; it cannot be set")
    return name


def _printable(value: bytes) -> bool:
    """Visible ASCII, space and tab: what a header value may carry (RFC 9110 5.5), minus
    obs-text, and never a line break."""
    return all(byte == 0x09 or 0x20 <= byte <= 0x7E for byte in value)


def _read_secret_file(node: yaml.Node, name: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise _Invalid(
            node, f"set_headers {name}: cannot read the secret file {path}: {exc.strerror}"
        ) from None
    if len(raw) > MAX_SECRET_BYTES:
        raise _Invalid(
            node,
            f"set_headers {name}: the secret file {path} is larger than {MAX_SECRET_BYTES} "
            "bytes; it is not a secret",
        )
    return raw


def _intercept_key(host: str) -> tuple[PatternKind, str]:
    pattern = DomainPattern.parse(host)
    return pattern.kind, pattern.name


def _key_node(mapping: yaml.Node, key: str) -> yaml.Node:
    """The key node of `key` in a mapping node (for issues about the key itself)."""
    for key_node, _ in mapping.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            found: yaml.Node = key_node
            return found
    return mapping


def _line_node(node: yaml.Node | None, line: int | None) -> yaml.Node | None:
    """The item of a list node that starts on `line` (an intercept entry), else the list."""
    if isinstance(node, yaml.SequenceNode):
        item: yaml.Node
        for item in node.value:
            if item.start_mark.line + 1 == line:
                return item
    return node


def _unwritable(path: str) -> str | None:
    """Why the proxy could not open `path` to append to it, or None if it can (issue 19,
    item 3: a reload to an unopenable access_log was accepted). Checked without creating
    anything; the proxy still opens the new log before it lets go of the old one."""
    path = os.path.realpath(path)  # open() follows symlinks, and creates a dangling one's target
    parent = os.path.dirname(path) or "."
    if os.path.isdir(path):
        return "is a directory (give a file name)"
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            return "not writable"
        return None
    if not os.path.exists(parent):
        return f"directory does not exist: {parent}"
    if not os.path.isdir(parent):
        return f"not a directory: {parent}"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create the file: directory {parent} is not writable"
    return None


def _ip_address(text: str) -> str:
    """An IPv4 or IPv6 address (no port, no network); returns its canonical text."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r}: expected an IP address, like 10.0.0.5 or fd00::5") from None


def _nameserver(text: str) -> str:
    """Validate `ip`, `ip:port`, `v6` or `[v6]:port`; returns the canonical `host:port` form."""
    text = text.strip()
    if text.startswith("[") or text.count(":") == 1:
        address = ListenAddress.parse(text)
    else:
        address = ListenAddress(text, 53)
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        raise ValueError(
            f"{text!r}: a nameserver is an IP address, optionally with :port"
        ) from None
    if address.port == 0:
        raise ValueError(f"{text!r}: nameserver port must not be 0")
    return str(address)


def _enum(
    kind: type[Mode] | type[NoSniAction] | type[DnsRefusal] | type[DnsAnswer], what: str
) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise ValueError(
                f"{what} must be one of: " + ", ".join(m.value for m in kind)
            ) from None

    return parse


def _ssl_text(exc: Exception) -> str:
    """ssl errors print as "[SSL] PEM lib (_ssl.c:3905)": keep the words, drop the C source."""
    if isinstance(exc, ssl.SSLError):
        text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)
        text = re.sub(r"^\[[A-Z_]+\]\s*", "", text)
        return f"not a usable PEM certificate, key or pair ({text})"
    return getattr(exc, "strerror", None) or str(exc)
