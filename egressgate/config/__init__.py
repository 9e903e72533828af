"""egressgate.config."""
