"""The Odoo medallion pipeline: generator, extraction, silver, gold (docs/odoo.md)."""
