"""egressgate: an egress firewall for applications (hostname-allowlist forward proxy)."""

__version__ = "0.1.0"
