"""Fixtures of the Odoo pipeline tests: a scratch Odoo source and a scratch warehouse per
test, on the test PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import temporary_database


@pytest.fixture
def source_dsn(pg_admin_url: str) -> Iterator[str]:
    """An empty database for the generator to fill."""
    with temporary_database(pg_admin_url, suffix="odoo") as url:
        yield url


@pytest.fixture
def warehouse_dsn(pg_admin_url: str) -> Iterator[str]:
    """An empty database for the `gold` schema."""
    with temporary_database(pg_admin_url, suffix="wh") as url:
        yield url
