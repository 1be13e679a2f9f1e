"""Several administrations as separate hosts (network namespaces) over a real network."""
