"""egressgate.tls."""
