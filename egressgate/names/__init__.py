"""Pure name and address rules shared by config validation and policy: hostnames, patterns, IPs."""
