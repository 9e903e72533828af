"""egressgate.proxy."""
