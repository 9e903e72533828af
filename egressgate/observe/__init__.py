"""egressgate.observe."""
