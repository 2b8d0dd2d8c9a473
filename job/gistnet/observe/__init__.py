"""Observing a run from outside: Prometheus metrics (and experiment tracking).
May import: only the top-level helpers (config, errors); every layer above may import it."""
