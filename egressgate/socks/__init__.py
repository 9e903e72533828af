"""egressgate.socks: sans-IO SOCKS5 (RFC 1928, RFC 1929)."""
