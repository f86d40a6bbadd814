"""Lakehouse Control Room: the control plane (schema `ops`), its migrations, CLI and gateway."""

__version__ = "0.1.0"
