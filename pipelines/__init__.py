"""Pipelines shipped with the control room."""
