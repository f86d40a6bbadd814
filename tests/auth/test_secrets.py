"""A password goes nowhere: not into any table, the gateway's log or an error text."""

from __future__ import annotations

import logging

import psycopg
import pytest
from psycopg import sql

from control_room.users import set_password
from tests.auth.conftest import Auth, bearer

SECRET = "Zebra-Quartz-Oboe-9187"
WRONG = "Wrong-Marble-Tulip-5523"
NEW = "Newer-Falcon-Basil-7741"


def all_text(db_url: str) -> str:
    """Every row of every table of the database, as text."""
    chunks: list[str] = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        tables = conn.execute(
            "select n.nspname, c.relname from pg_class c"
            " join pg_namespace n on n.oid = c.relnamespace where c.relkind in ('r', 'p')"
            " and n.nspname not in ('pg_catalog', 'information_schema')"
            " and n.nspname not like 'pg_toast%'").fetchall()
        assert len(tables) > 20
        for schema, table in tables:
            rows = conn.execute(sql.SQL("select t::text from {}.{} t").format(
                sql.Identifier(schema), sql.Identifier(table))).fetchall()
            chunks.extend(row[0] for row in rows)
    return "\n".join(chunks)


def test_passwords_are_in_no_table_log_or_error(auth: Auth, caplog: pytest.LogCaptureFixture
                                                 ) -> None:
    caplog.set_level(logging.DEBUG)
    ws = auth.workspace()
    email, _ = auth.user("admin", ws, password=SECRET)
    texts = []
    ok = auth.sign_in(email, SECRET)
    assert ok.status_code == 200
    for attempt in (auth.sign_in(email, WRONG), auth.sign_in("ghost@example.org", WRONG),
                    auth.sign_in(email, WRONG * 20)):
        assert attempt.status_code == 400
        texts.append(attempt.text)
    with auth.client() as c:
        texts.append(c.post("/auth/v1/token", params={"grant_type": "password"},
                            json={"email": 7, "password": WRONG}).text)
        texts.append(c.post("/auth/v1/token", params={"grant_type": "refresh_token"},
                            json={"refresh_token": WRONG}).text)
        texts.append(c.get("/auth/v1/user", headers=bearer(WRONG)).text)
    set_password(auth.db_url, email, NEW)
    assert auth.sign_in(email, NEW).status_code == 200
    stored = all_text(auth.db_url)
    assert email in stored                  # the dump does hold the users' rows
    assert "$argon2id$" in stored
    for password in (SECRET, WRONG, NEW):
        assert password not in stored
        assert password not in caplog.text
        for text in texts:
            assert password not in text
