"""egressgate.net."""
