"""The nftables rules that put a pod's traffic through its egressgate sidecar (transparent mode).

One source of truth: `egressgate k8s render --mode transparent` ships this script in its init
container, and the end-to-end test (tests/e2e/test_transparent_netns.py) applies the very same
text in a network namespace standing in for the pod.

What the rules do, for every process of the pod except the sidecar's own UID:
  * outbound TCP to `tcp_ports` (default 80, 443) is REDIRECTed to the transparent listener;
  * DNS (UDP and TCP 53) is REDIRECTed to the DNS guard, when it is given (without one, DNS
    is let out unchanged);
  * everything else leaving the pod is dropped, UDP 443 (QUIC / HTTP/3) included, so clients
    fall back to TCP 443, which is redirected. Loopback and replies on connections the pod
    accepted stay allowed.
The sidecar's UID is exempt from both the redirect and the drop: it is the one way out.
"""

from __future__ import annotations

from collections.abc import Sequence

TABLE = "egressgate_redirect"
DEFAULT_TCP_PORTS = (80, 443)


def nft_script(
    proxy_uid: int,
    transparent_port: int,
    dns_port: int | None,
    tcp_ports: Sequence[int] = DEFAULT_TCP_PORTS,
    table: str = TABLE,
) -> str:
    """The nftables script (for `nft -f -`); replaces the table atomically when re-applied."""
    ports = ", ".join(str(port) for port in tcp_ports)
    nat = [
        f"    meta skuid {proxy_uid} return",
        '    oifname "lo" return',
        f"    meta l4proto tcp tcp dport {{ {ports} }} redirect to :{transparent_port}",
    ]
    if dns_port is not None:
        nat += [
            f"    meta l4proto udp udp dport 53 redirect to :{dns_port}",
            f"    meta l4proto tcp tcp dport 53 redirect to :{dns_port}",
        ]
    # No DNS guard: the pod's DNS goes out as before (and stays a channel out: see
    # docs/transparent.md); with one, only the guard's own lookups leave.
    dns_out = ["    meta l4proto { tcp, udp } th dport 53 accept"] if dns_port is None else []
    lines = [
        f"table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "  chain nat_output {",
        "    type nat hook output priority -100; policy accept;",
        *nat,
        "  }",
        "  chain filter_output {",
        "    type filter hook output priority 0; policy drop;",
        f"    meta skuid {proxy_uid} accept",
        '    oifname "lo" accept',
        "    ct status dnat accept",
        "    ct state established,related accept",
        *dns_out,
        '    udp dport 443 counter drop comment "QUIC: clients fall back to TCP 443"',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"
