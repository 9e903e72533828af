"""End-to-end tests in network namespaces (marker `e2e`; need root, `ip` and `nft`)."""
