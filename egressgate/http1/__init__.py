"""egressgate.http1."""
