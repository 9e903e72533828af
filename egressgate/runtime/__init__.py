"""egressgate.runtime."""
