"""The admission story as tables: given these inputs, these steps, this access record.

Pure: no sockets, no loop. A tiny driver plays the front end: it answers NeedAddresses from a
dict (or a ResolveError), Connect from a dict of per-address outcomes (first success wins, as
net/connect.py's strategy does), and concludes the record. Addresses here are only named,
never contacted.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.config.model import (
    AuthConfig,
    ClientRule,
    Config,
    Mode,
    NoSniAction,
    PolicyConfig,
    PortRange,
)
from egressgate.errors import ProxyFailure, Reason, ResolveError, UpstreamError
from egressgate.names.hostname import IPAddress
from egressgate.observe.record import AccessRecord
from egressgate.policy.credentials import Credentials, parse_secret
from egressgate.policy.decision import ClientIdentity, Target
from egressgate.policy.engine import PolicySet
from egressgate.proxy import gate
from egressgate.proxy.auth import Login
from egressgate.proxy.gate import Admission, Connect, Hello, NeedAddresses, Open, Refuse
from egressgate.runtime.state import Generation
from egressgate.tls.clienthello import MAX_HELLO_BYTES
from tests.unit.tls.test_clienthello import real_hello as client_hello

CLIENT = ClientIdentity(ipaddress.ip_address("10.1.2.3"))
PUBLIC = "8.8.8.8"  # public, only named: no unit test sends a packet
PUBLIC6 = "2606:4700::1111"


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def generation(
    allow: tuple[str, ...] = (".ok.test", "9.9.9.9"),
    *,
    mode: Mode = Mode.ENFORCE,
    no_sni: NoSniAction = NoSniAction.ALLOW,
    users: Mapping[str, str] | None = None,
    rules: tuple[ClientRule, ...] = (),
    allow_private: tuple[str, ...] = (),
) -> Generation:
    policies = (
        PolicyConfig(
            "default",
            allow=allow,
            connect_ports=(PortRange.parse("443"),),
            http_ports=(PortRange.parse("80"),),
            mode=mode,
            tunnels_without_sni=no_sni,
            allow_private=allow_private,
        ),
        PolicyConfig("staff", allow=("*",), connect_ports=(PortRange.parse("443"),)),
    )
    auth = AuthConfig(users_env="UNUSED", realm="corp") if users is not None else None
    config = Config(policies=policies, clients=rules, auth=auth)
    credentials = Credentials({u: parse_secret(p) for u, p in (users or {}).items()})
    return Generation(config, PolicySet.compile(config), credentials, 1, "0" * 64)


@dataclass
class World:
    """What the front end's I/O would answer."""

    dns: Mapping[str, tuple[str, ...] | Reason] = field(default_factory=dict)
    connects: Mapping[str, Reason | None] = field(default_factory=dict)  # None: connects


def drive(admission: Admission, world: World) -> list[str]:
    """Run the story to its end as a front end would; the kinds of the steps seen."""
    seen: list[str] = []
    for _ in range(10):
        step = admission.next()
        seen.append(type(step).__name__)
        if isinstance(step, NeedAddresses):
            answer = world.dns.get(step.name, Reason.DNS_NXDOMAIN)
            if isinstance(answer, Reason):
                admission.resolve_failed(ResolveError(answer, f"{step.name}: {answer.text}"))
            else:
                admission.addresses(tuple(ip(a) for a in answer))
        elif isinstance(step, Connect):
            last: Reason | None = Reason.UPSTREAM_REFUSED
            for address in step.addresses:
                last = world.connects.get(str(address))
                if last is None:
                    admission.connected(address)
                    break
            else:
                assert last is not None
                admission.connect_failed(UpstreamError(last, "failed"), step.addresses[-1])
        else:
            return seen
    raise AssertionError("the story did not end")


def record_of(admission: Admission, kind: str = "tunnel") -> AccessRecord:
    record = AccessRecord(time.time(), "10.1.2.3", "CONNECT", kind)
    return gate.conclude(record, admission)


def target(host: str, port: int = 443, connect: bool = True) -> Target:
    return Target(gate.normalize_target_host(host), port, connect)


# (id, admission inputs, world) → (steps, record: decision, reason, status, address, rule)
STORIES = [
    (
        "cached name, connects",
        {"host": "a.ok.test"},
        World({"a.ok.test": (PUBLIC,)}),
        ["NeedAddresses", "Connect", "Open"],
        ("allow", "allowed", 0, PUBLIC, ".ok.test"),
    ),
    (
        "IP literal listed: no NeedAddresses",
        {"host": "9.9.9.9"},
        World(),
        ["Connect", "Open"],
        ("allow", "allowed", 0, "9.9.9.9", "9.9.9.9"),
    ),
    (
        "name not listed: refused before DNS",
        {"host": "evil.test"},
        World({"evil.test": (PUBLIC,)}),
        ["Refuse"],
        ("deny", "host-not-allowed", 403, None, None),
    ),
    (
        "IP literal not listed",
        {"host": "192.0.2.1"},
        World(),
        ["Refuse"],
        ("deny", "ip-literal-not-allowed", 403, None, None),
    ),
    (
        "port not allowed for CONNECT",
        {"host": "a.ok.test", "port": 22},
        World({"a.ok.test": (PUBLIC,)}),
        ["Refuse"],
        ("deny", "port-not-allowed", 403, None, ".ok.test"),
    ),
    (
        "HTTP uses http_ports",
        {"host": "a.ok.test", "port": 80, "connect": False},
        World({"a.ok.test": (PUBLIC,)}),
        ["NeedAddresses", "Connect", "Open"],
        ("allow", "allowed", 0, PUBLIC, ".ok.test"),
    ),
    (
        "resolves inside: private-address names the refused address",
        {"host": "a.ok.test"},
        World({"a.ok.test": (PUBLIC, "10.0.0.5")}),
        ["NeedAddresses", "Refuse"],
        ("deny", "private-address", 403, "10.0.0.5", ".ok.test"),
    ),
    (
        "metadata address",
        {"host": "a.ok.test"},
        World({"a.ok.test": ("169.254.169.254",)}),
        ["NeedAddresses", "Refuse"],
        ("deny", "private-address", 403, "169.254.169.254", ".ok.test"),
    ),
    (
        "NXDOMAIN",
        {"host": "gone.ok.test"},
        World(),
        ["NeedAddresses", "Refuse"],
        ("error", "dns-nxdomain", 502, None, ".ok.test"),
    ),
    (
        "DNS timeout is 504",
        {"host": "slow.ok.test"},
        World({"slow.ok.test": Reason.DNS_TIMEOUT}),
        ["NeedAddresses", "Refuse"],
        ("error", "dns-timeout", 504, None, ".ok.test"),
    ),
    (
        "first address refuses, second connects",
        {"host": "a.ok.test"},
        World({"a.ok.test": (PUBLIC, PUBLIC6)}, {PUBLIC: Reason.UPSTREAM_REFUSED}),
        ["NeedAddresses", "Connect", "Open"],
        ("allow", "allowed", 0, PUBLIC6, ".ok.test"),
    ),
    (
        "every address fails: the last error, the last address",
        {"host": "a.ok.test"},
        World(
            {"a.ok.test": (PUBLIC, PUBLIC6)},
            {PUBLIC: Reason.UPSTREAM_REFUSED, PUBLIC6: Reason.UPSTREAM_TIMEOUT},
        ),
        ["NeedAddresses", "Connect", "Refuse"],
        ("error", "upstream-timeout", 504, PUBLIC6, ".ok.test"),
    ),
    (
        "invalid host text: refused by the story",
        {"host": "bad host.test"},
        World(),
        ["Refuse"],
        ("deny", "host-not-allowed", 403, None, None),
    ),
    (
        "report mode: allowed, reason kept",
        {"host": "evil.test", "gen": generation(mode=Mode.REPORT)},
        World({"evil.test": (PUBLIC,)}),
        ["NeedAddresses", "Connect", "Open"],
        ("report", "host-not-allowed", 0, PUBLIC, None),
    ),
    (
        "report mode never lets an internal address through",
        {"host": "evil.test", "gen": generation(mode=Mode.REPORT)},
        World({"evil.test": ("127.0.0.1",)}),
        ["NeedAddresses", "Refuse"],
        ("deny", "private-address", 403, "127.0.0.1", None),
    ),
    (
        "allow_private lets a listed internal range through",
        {"host": "a.ok.test", "gen": generation(allow_private=("10.0.0.0/8",))},
        World({"a.ok.test": ("10.0.0.5",)}),
        ["NeedAddresses", "Connect", "Open"],
        ("allow", "allowed", 0, "10.0.0.5", ".ok.test"),
    ),
    (
        "credentials configured, none sent, no user rule: default policy",
        {"host": "a.ok.test", "gen": generation(users={"ann": "pw"})},
        World({"a.ok.test": (PUBLIC,)}),
        ["NeedAddresses", "Connect", "Open"],
        ("allow", "allowed", 0, PUBLIC, ".ok.test"),
    ),
    (
        "wrong password: 407",
        {
            "host": "a.ok.test",
            "gen": generation(users={"ann": "pw"}),
            "login": Login("ann", "nope"),
        },
        World(),
        ["Refuse"],
        ("deny", "proxy-auth-required", 407, None, None),
    ),
    (
        "malformed credentials: 407 with the problem",
        {
            "host": "a.ok.test",
            "gen": generation(users={"ann": "pw"}),
            "login": Login("", "", "malformed Proxy-Authorization"),
        },
        World(),
        ["Refuse"],
        ("deny", "proxy-auth-required", 407, None, None),
    ),
    (
        "a user rule needs a login: 407",
        {
            "host": "a.ok.test",
            "gen": generation(users={"ann": "pw"}, rules=(ClientRule("staff", users=("ann",)),)),
        },
        World(),
        ["Refuse"],
        ("deny", "proxy-auth-required", 407, None, None),
    ),
    (
        "the right login selects the user's policy",
        {
            "host": "anything.test",
            "gen": generation(users={"ann": "pw"}, rules=(ClientRule("staff", users=("ann",)),)),
            "login": Login("ann", "pw"),
        },
        World({"anything.test": (PUBLIC,)}),
        ["NeedAddresses", "Connect", "Open"],
        ("allow", "allowed", 0, PUBLIC, "*"),
    ),
]


@pytest.mark.parametrize(
    ("inputs", "world", "steps", "expected"),
    [pytest.param(*row[1:], id=str(row[0])) for row in STORIES],
)
def test_story(
    inputs: dict[str, object],
    world: World,
    steps: list[str],
    expected: tuple[str, str, int, str | None, str | None],
) -> None:
    gen = inputs.get("gen", generation())
    assert isinstance(gen, Generation)
    login = inputs.get("login")
    assert login is None or isinstance(login, Login)
    host = inputs["host"]
    assert isinstance(host, str)
    port = inputs.get("port", 443)
    assert isinstance(port, int)
    connect = inputs.get("connect", True)
    assert isinstance(connect, bool)
    admission = Admission.for_host(gen, CLIENT, host, port, connect, login)
    assert drive(admission, world) == steps
    record = record_of(admission)
    got = (record.decision, record.reason, record.status, record.address, record.rule)
    assert got == expected
    assert record.port == port
    assert record.host is not None


def test_a_step_is_repeated_until_its_result_comes_back() -> None:
    admission = Admission(generation(), CLIENT, target("a.ok.test"))
    first = admission.next()
    assert first == NeedAddresses("a.ok.test")
    assert admission.next() is first


def test_connect_carries_the_generations_timeouts_and_only_vetted_addresses() -> None:
    gen = generation()
    admission = Admission(gen, CLIENT, target("a.ok.test"))
    admission.next()
    admission.addresses((ip(PUBLIC), ip(PUBLIC6)))
    step = admission.next()
    assert step == Connect(
        (ip(PUBLIC), ip(PUBLIC6)),
        443,
        min(gen.config.limits.connect_timeout_s, gen.config.limits.connect_total_timeout_s),
        gen.config.limits.connect_total_timeout_s,
    )


def test_refuse_renders_the_http_refusal_with_policy_and_realm() -> None:
    gen = generation(users={"ann": "pw"})
    admission = Admission(gen, CLIENT, target("a.ok.test"), Login("ann", "x"))
    step = admission.next()
    assert isinstance(step, Refuse)
    response = step.response()
    assert response.startswith(b"HTTP/1.1 407 ")
    assert b'Proxy-Authenticate: Basic realm="corp"' in response
    denied = Admission(gen, CLIENT, target("evil.test")).next()
    assert isinstance(denied, Refuse)
    assert b"X-Egressgate-Policy: default" in denied.response()


def test_a_failure_known_before_the_story_is_its_only_step() -> None:
    failure = ProxyFailure(Reason.BAD_REQUEST, "no host")
    admission = Admission(generation(), CLIENT, None, host_text="??", failure=failure)
    step = admission.next()
    assert isinstance(step, Refuse)
    assert step.failure is failure
    record = record_of(admission)
    assert (record.decision, record.reason, record.status, record.host) == (
        "error",
        "bad-request",
        400,
        "??",
    )


def test_the_front_end_can_end_the_story_with_its_own_failure() -> None:
    admission = Admission(generation(), CLIENT, target("9.9.9.9"))
    assert isinstance(admission.next(), Connect)
    admission.connected(ip("9.9.9.9"))
    assert isinstance(admission.next(), Open)
    admission.fail(UpstreamError(Reason.UPSTREAM_ERROR, "internal error: boom"))
    record = record_of(admission)
    assert (record.decision, record.reason, record.status) == ("error", "upstream-error", 502)
    assert record.detail == "internal error: boom"


# ---- after Open: the SNI judgement of a tunnel
def opened(gen: Generation, host: str = "a.ok.test") -> Admission:
    admission = Admission(gen, CLIENT, target(host))
    admission.next()
    admission.addresses((ip(PUBLIC),))
    admission.next()
    admission.connected(ip(PUBLIC))
    step = admission.next()
    assert isinstance(step, Open)
    assert step.sni_check
    return admission


HELLOS = [
    # (id, gen kwargs, data, timed_out) → (answer, record reason, sni)
    ("same name", {}, client_hello("a.ok.test"), False, Hello.RELAY, "allowed", "a.ok.test"),
    ("other allowed name: fronting", {}, client_hello("b.ok.test"), False, "sni-mismatch", "", ""),
    ("name not allowed", {}, client_hello("evil.test"), False, "sni-not-allowed", "", ""),
    ("half a hello", {}, client_hello("a.ok.test")[:20], False, Hello.NEED_MORE, "", ""),
    # TLS whose hello cannot be read is refused even under tunnels_without_sni: allow
    ("half a hello, too late", {}, client_hello("a.ok.test")[:20], True, "sni-unreadable", "", ""),
    (
        "a ServerHello",
        {},
        b"\x16\x03\x01\x00\x08\x02\x00\x00\x04" + bytes(4),
        False,
        "sni-unreadable",
        "",
        "",
    ),
    (
        "declares 16 MiB",
        {},
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",
        False,
        "sni-unreadable",
        "",
        "",
    ),
    ("a lone 0x16, too late", {}, b"\x16", True, "sni-unreadable", "", ""),
    ("0x16 then not TLS: not TLS, allowed", {}, b"\x16\x00abc", True, Hello.RELAY, "allowed", None),
    ("not TLS, allowed", {}, b"SSH-2.0-x\r\n", False, Hello.RELAY, "allowed", None),
    (
        "not TLS, denied",
        {"no_sni": NoSniAction.DENY},
        b"SSH-2.0-x\r\n",
        False,
        "sni-missing",
        "",
        "",
    ),
    (
        "nothing sent, denied",
        {"no_sni": NoSniAction.DENY},
        b"",
        True,
        "sni-missing",
        "",
        "",
    ),
    (
        "fronting in report mode: relayed, logged",
        {"mode": Mode.REPORT},
        client_hello("b.ok.test"),
        False,
        Hello.RELAY,
        "sni-mismatch",
        "b.ok.test",
    ),
]


@pytest.mark.parametrize(
    ("gen_kwargs", "data", "timed_out", "answer", "reason", "sni"),
    [pytest.param(*row[1:], id=str(row[0])) for row in HELLOS],
)
def test_judge_hello(
    gen_kwargs: dict[str, object],
    data: bytes,
    timed_out: bool,
    answer: Hello | str,
    reason: str,
    sni: str | None,
) -> None:
    admission = opened(generation(**gen_kwargs))  # type: ignore[arg-type]
    got = admission.judge_hello(data, timed_out)
    if isinstance(answer, Hello):
        assert got is answer
        if answer is Hello.RELAY:
            record = record_of(admission)
            assert (record.reason, record.sni) == (reason, sni)
        return
    assert isinstance(got, Refuse)
    assert got.reason.value == answer
    record = record_of(admission)
    assert (record.decision, record.reason, record.status) == ("deny", answer, 403)


def test_no_sni_check_for_plain_http_or_when_the_policy_turns_it_off() -> None:
    admission = Admission(generation(), CLIENT, target("a.ok.test", 80, connect=False))
    admission.next()
    admission.addresses((ip(PUBLIC),))
    admission.next()
    admission.connected(ip(PUBLIC))
    step = admission.next()
    assert isinstance(step, Open)
    assert not step.sni_check


@given(st.binary(max_size=MAX_HELLO_BYTES + 10), st.booleans())
def test_judge_hello_always_answers_within_the_bound(data: bytes, timed_out: bool) -> None:
    admission = opened(generation(no_sni=NoSniAction.DENY))
    got = admission.judge_hello(data, timed_out)
    if timed_out or len(data) >= MAX_HELLO_BYTES:
        assert got is not Hello.NEED_MORE


def test_conclude_keeps_what_the_front_end_measured() -> None:
    admission = opened(generation())
    assert admission.judge_hello(client_hello("a.ok.test"), False) is Hello.RELAY
    record = AccessRecord(time.time() - 1.0, "10.1.2.3", "CONNECT", "tunnel")
    record.status, record.bytes_up, record.bytes_down = 200, 10, 20
    gate.conclude(record, admission)
    assert (record.status, record.bytes_up, record.bytes_down) == (200, 10, 20)
    assert (record.host, record.port, record.policy, record.address) == (
        "a.ok.test",
        443,
        "default",
        PUBLIC,
    )
    admission.fail(UpstreamError(Reason.UPSTREAM_ERROR, "later"))
    assert gate.conclude(record, admission).reason == "allowed"  # once only
