"""egressgate.tools."""
