"""The documented built-in config used when `egressgate run` is given no --config.

Secure by default: it listens on 0.0.0.0:3128 (admin on 0.0.0.0:9090), allows NO destination,
refuses internal addresses, logs JSON lines to stdout. Every refusal names its reason, so a first
run shows what an app tries to reach; add those hosts to an `allow:` list in your own file.
"""

from __future__ import annotations

from egressgate.config.model import Config

BUILTIN_DEFAULT_YAML = """\
# egressgate built-in default (used when no --config is given)
listen: 0.0.0.0:3128
admin_listen: 0.0.0.0:9090
allow: []                 # nothing is allowed until you list it
connect_ports: [443]
http_ports: [80]
allow_private: []
access_log: "-"
mode: enforce
"""


def builtin_default() -> Config:
    """The built-in config as a model (same values as BUILTIN_DEFAULT_YAML)."""
    return Config(source="<built-in default>")
