"""Integrations with outside systems (GitHub: the PR gate's summary and commit statuses)."""
