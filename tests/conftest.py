"""Shared fixtures: a real PostgreSQL server, a migrated template, a fresh clone per test.

The server is `$CONTROL_ROOM_TEST_ADMIN_URL` if set, else the system PostgreSQL at
127.0.0.1:5432 when it answers, else an embedded server started under a temporary
directory for the session.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control_room.local import EmbeddedPostgres
from tests.helpers import (
    SYSTEM_ADMIN_URL,
    ClonePool,
    admin_url_from_env,
    database_url,
    finish_drops,
    server_answers,
    template_database,
    temporary_database,
)

# `make test-fast` (the loop while working: ruff, then pytest -m "not slow and not e2e" on every
# core; about 2,280 tests) leaves out what is marked `e2e` or `slow`; `make test` (CI) runs every
# test. A module whose tests all fit a mark is named below (then the fast loop does not even
# import it); a test that fits one in a module of other tests carries `@pytest.mark.e2e` or
# `@pytest.mark.slow` itself (e.g. test_kind_params's CLI processes, test_claim_plan's million
# phases).
#
# End to end through real processes (the CLI, gateway and worker processes, the demo, the wheel):
# marked `e2e`. The CLI run in-process (typer's CliRunner) and the gateway in a thread
# (tests/helpers.py running_gateway) are not: their tests stay in the fast loop.
E2E_MODULES = frozenset({
    "tests/test_demo.py",
    "tests/test_wheel.py",
    "tests/test_cli_up.py",
    "tests/test_local.py",
    "tests/executor/test_end_to_end.py",
    "tests/executor/test_verify.py",
    "tests/executor/test_worker.py",
    "tests/executor/test_catalog_worker.py",
    "tests/executor/test_dbt_worker.py",
    "tests/odoo/test_end_to_end.py",
    "tests/odoo/test_continuous.py",
    "tests/odoo/test_pipeline.py",
    "tests/odoo/test_publish.py",
    "tests/odoo/test_versions.py",
    "tests/odoo/test_extract_api.py",
    "tests/executor/test_verify_catalog.py",
    "tests/gateway/test_serve.py",
    "tests/gateway/test_gateway_concurrency.py",
    "tests/test_scheduler.py",
    "tests/chaos/test_gateway_outage.py",
    "tests/chaos/test_backends_terminated.py",
    "tests/chaos/test_worker_killed.py",
    "tests/chaos/test_starvation.py",
    "tests/chaos/test_pool_exhaustion.py",
    "tests/chaos/test_retry_storm.py",
    "tests/chaos/test_postgres_restart.py",
    "tests/test_github_summary.py",
    "tests/test_github_statuses.py",
    "tests/test_github_checks.py",
    "tests/test_mcp_stdio.py",
    "tests/ui/test_browser.py",
})
# Not end to end, but slow for the fast loop (each test generates an Odoo database, runs dbt,
# fuzzes with hypothesis / schemathesis, or starts an embedded PostgreSQL): marked `slow`.
SLOW_MODULES = frozenset({
    "tests/odoo/test_in_flight.py",
    "tests/odoo/test_generator.py",
    "tests/odoo/test_extract.py",
    "tests/odoo/test_dbt_gold.py",
    "tests/executor/test_kind_dbt.py",
    "tests/gateway/test_schemathesis.py",
    "tests/security/test_bad_input_fuzz.py",
    "tests/conformance/test_kinds.py",
    "tests/security/test_embedded_auth.py",
})
ROOT = Path(__file__).resolve().parents[1]


def _build_each_cli_once() -> None:
    """typer's CliRunner builds the click command tree of the app it is given on every
    `invoke` (0.15 to 0.25 s for control-room's hundred commands, several times what most
    invocations then take); the `control-room` process builds it once. Build it once per app
    here: the tree holds no state of an invocation (click makes a new context for each)."""
    import typer.testing

    testing: Any = typer.testing
    build = testing._get_command   # what CliRunner.invoke calls (fails loudly if renamed)
    built: dict[int, tuple[Any, Any]] = {}

    def once(app: Any) -> Any:
        if id(app) not in built:
            built[id(app)] = (app, build(app))    # the app is kept: its id stays its own
        return built[id(app)][1]

    testing._get_command = once


_build_each_cli_once()


def _load_the_ca_bundle_once() -> None:
    """Every httpx client makes an SSL context and loads certifi's CA bundle into it (40 ms of
    CPU) although the tests' clients talk plain HTTP to 127.0.0.1; thousands are made (a
    ContractClient each, the CLI's in each invocation, the workers'). Share one default
    context, made the same way, among the clients that ask for the default (verify=True and no
    client certificate); any other verify or cert gets its own context as before."""
    import httpx._transports.default

    transports: Any = httpx._transports.default
    make = transports.create_ssl_context     # what HTTPTransport calls (fails loudly if renamed)
    shared: list[Any] = []

    def default_once(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is not True or cert is not None:
            return make(verify=verify, cert=cert, trust_env=trust_env)
        if not shared:
            shared.append(make(verify=verify, cert=cert, trust_env=trust_env))
        return shared[0]

    transports.create_ssl_context = default_once


_load_the_ca_bundle_once()


_KEYWORDS = frozenset({"and", "or", "not"})


def _module_marks(path: Path) -> frozenset[str]:
    try:
        name = path.relative_to(ROOT).as_posix()
    except ValueError:
        return frozenset()
    return frozenset({"e2e"} if name in E2E_MODULES else set()) | frozenset(
        {"slow"} if name in SLOW_MODULES else set())


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Skip importing a module `-m` deselects whole: one whose marks from E2E_MODULES /
    SLOW_MODULES make the expression false whatever other marks its tests carry.

    Importing them costs the fast loop seconds per xdist worker (test_schemathesis.py builds
    its items, test_kind_dbt.py imports dbt) for tests that would be deselected anyway.
    """
    marks = _module_marks(collection_path)
    expr = config.getoption("markexpr", "")
    if not marks or not expr or "(" in expr:
        return None
    from _pytest.mark.expression import Expression  # pytest's own -m parser

    compiled = Expression.compile(expr)
    others = sorted(set(re.findall(r"[\w.:+\-\[\]\\/]+", expr)) - _KEYWORDS - marks)
    if len(others) > 8:
        return None
    for chosen in itertools.product((False, True), repeat=len(others)):
        present = marks | {name for name, on in zip(others, chosen, strict=True) if on}
        if compiled.evaluate(lambda name, /, present=present, **_: name in present):
            return None                 # some test of it could still be selected
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.relative_to(ROOT).as_posix()
        if path in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)
        if path in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A superuser URL of the server the tests create their databases on."""
    configured = admin_url_from_env()
    if configured is not None:
        yield configured
        finish_drops()
        return
    if server_answers(SYSTEM_ADMIN_URL):
        yield SYSTEM_ADMIN_URL
        finish_drops()
        return
    with EmbeddedPostgres(tmp_path_factory.mktemp("embedded-pg")) as server:
        url = server.url
        assert url is not None
        yield url
        finish_drops()


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    """Name of a database migrated with the repo's supabase/migrations (built once)."""
    with template_database(pg_admin_url) as name:
        yield name


@pytest.fixture(scope="session")
def clone_pool(pg_admin_url: str, template_db: str) -> Iterator[ClonePool]:
    """Clones of the template made ahead and dropped behind the tests (tests/helpers.py)."""
    pool = ClonePool(pg_admin_url, template_db)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def db_url(pg_admin_url: str, clone_pool: ClonePool) -> Iterator[str]:
    """URL of a fresh clone of the migrated template, dropped after the test."""
    name = clone_pool.take()
    try:
        yield database_url(pg_admin_url, name)
    finally:
        clone_pool.give_back(name)


@pytest.fixture(scope="module")
def module_db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """Like `db_url`, but one clone shared by every test of a module."""
    with temporary_database(pg_admin_url, template=template_db, suffix="mod") as url:
        yield url


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """URL of a fresh, empty database (no shim, no migrations), dropped after the test."""
    with temporary_database(pg_admin_url, suffix="empty") as url:
        yield url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection (autocommit off) to the test's fresh database."""
    with psycopg.connect(db_url) as connection:
        yield connection
