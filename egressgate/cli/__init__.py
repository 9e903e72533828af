"""egressgate.cli."""
