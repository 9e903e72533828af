"""egressgate.policy."""
