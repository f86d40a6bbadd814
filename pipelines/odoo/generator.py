"""An Odoo 17.0 or 18.0 shaped source database with day-by-day sales and accounting activity.

The pipeline under test reads an ERP database that keeps changing: quotations are created,
edited, confirmed, cancelled or deleted; confirmed orders are delivered and invoiced; invoices
are paid, partly paid or credited. `generate` builds such a database from nothing (tables of
`schema.sql`, reference data, `days` simulated days); `advance` continues it day by day, so a
full load followed by incremental loads can be exercised against known data.

Everything that varies is drawn from `random.Random` instances seeded with (seed, day), and the
simulation reads only what it keeps in memory between two days: the open quotations, orders,
invoices and the reference data. `advance` rebuilds exactly that working set from the database
(`generator.sql`), so the same seed, scale and number of days give the same content whether the
days ran in one `generate` or in a `generate` followed by `advance` calls; `source_digest`
proves it. Rows carry the simulated time of their last change in `write_date` (UTC).

`odoo_version` ("17.0" or "18.0") picks the shape (schema.sql: lines tagged `-- @odoo <v>`
exist in that version only). The simulation is the same for both: rows are built with every
column of either version and each database gets its version's columns, so the same seed,
scale and days give the same activity in a 17.0 and an 18.0 database.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import itertools
import json
import math
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

import blake3
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.copy import FileWriter
from psycopg.rows import dict_row
from psycopg.types.numeric import FloatLoader
from psycopg.types.string import TextLoader

from pipelines.odoo.sqlfile import parse_queries

SCHEMA_PATH = Path(__file__).with_name("schema.sql")
QUERIES_PATH = Path(__file__).with_name("generator.sql")
CONSTRAINTS_MARKER = "-- @constraints"

GENERATOR_VERSION = "1"
CONFIG_PREFIX = "control_room.generator."
SEED_KEY, SCALE_KEY = CONFIG_PREFIX + "seed", CONFIG_PREFIX + "scale"
START_KEY, DAY_KEY = CONFIG_PREFIX + "start", CONFIG_PREFIX + "day"
VERSION_KEY = CONFIG_PREFIX + "version"
ODOO_VERSION_KEY = CONFIG_PREFIX + "odoo_version"
ODOO_VERSIONS = ("17.0", "18.0")
DEFAULT_ODOO_VERSION = "17.0"
_VERSION_TAG = re.compile(r"--\s*@odoo\s+(\S+)\s*$")

LINES_PER_SCALE = 100_000  # sale_order_line rows per REFERENCE_DAYS days at scale 1.0
REFERENCE_DAYS = 30
TAX_RATE = 0.21
REFUND_WINDOW = 5  # an invoice can be credited while unpaid and at most this many days old

# Ids of the reference data every generated database has.
SYSTEM_UID, ADMIN_UID = 1, 2
COMPANY_ID = 1
EUR, USD, GBP = 1, 2, 3
TAX_ID = 1
SALE_JOURNAL, BANK_JOURNAL = 1, 2
INCOME_ACCOUNT, RECEIVABLE_ACCOUNT, TAX_ACCOUNT, BANK_ACCOUNT = 1, 2, 3, 4
UNIT_UOM, HOUR_UOM = 1, 3
PAYMENT_TERM_DAYS = {1: 15, 2: 30, 3: 45}
INITIAL_RATES = {EUR: 1.0, USD: 1.08, GBP: 0.86}  # units per EUR before the first day

# Hours (UTC) of each activity within a simulated day; windows never overlap, so the
# write_date of a row only grows.
_WINDOWS = {
    "rates": (0, 1), "partners": (7, 8), "edits": (8, 10), "closures": (10, 11),
    "confirmations": (11, 13), "quotations": (13, 16), "deliveries": (16, 17),
    "invoices": (17, 18), "payments": (18, 19), "refunds": (19, 20),
}
_LINE_COUNTS = (1, 2, 3, 4, 5, 6, 7, 8)
_LINE_COUNT_WEIGHTS = (22, 20, 16, 13, 10, 8, 6, 5)
_MEAN_LINES = sum(c * w for c, w in zip(_LINE_COUNTS, _LINE_COUNT_WEIGHTS, strict=True)) / sum(
    _LINE_COUNT_WEIGHTS
)
_DISCOUNTS = (5.0, 10.0, 15.0, 20.0)
# Daily probabilities of each kind of activity.
P_EDIT, P_SEND, P_UPSELL = 0.08, 0.15, 0.01
P_DELETE, P_CANCEL, P_CANCEL_EXPIRED, P_CANCEL_CONFIRMED = 0.02, 0.03, 0.3, 0.004
P_CONFIRM, P_DELIVER, P_PARTIAL_DELIVERY, P_INVOICE = 0.2, 0.45, 0.1, 0.55
P_PARTIAL_PAYMENT, P_REFUND = 0.15, 0.01

Row = dict[str, Any]


class GeneratorError(ValueError):
    """Bad input, or a database the generator must not or cannot work on; says which."""


@dataclass(frozen=True)
class Table:
    """A table of `schema.sql`: its columns in order and its primary key."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]


@dataclass(frozen=True)
class GenerateReport:
    """What a `generate` or `advance` call did to the database."""

    database: str
    seed: int
    scale: float
    first_day: date
    last_day: date
    rows: dict[str, int]
    inserted: dict[str, int]
    updated: dict[str, int]
    deleted: dict[str, int]
    activity: dict[str, int]
    seconds: float
    odoo_version: str = DEFAULT_ODOO_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.database, "seed": self.seed, "scale": self.scale,
            "first_day": self.first_day.isoformat(), "last_day": self.last_day.isoformat(),
            "rows": self.rows, "inserted": self.inserted, "updated": self.updated,
            "deleted": self.deleted, "activity": self.activity,
            "seconds": round(self.seconds, 3), "odoo_version": self.odoo_version,
        }


# ---------------------------------------------------------------------------------- schema


def _check_version(odoo_version: str) -> str:
    if odoo_version not in ODOO_VERSIONS:
        raise GeneratorError(f"odoo_version must be one of {', '.join(ODOO_VERSIONS)}, got "
                             f"{odoo_version!r}")
    return odoo_version


@functools.cache
def _schema_parts(odoo_version: str = DEFAULT_ODOO_VERSION) -> tuple[str, str]:
    """schema.sql's tables and constraints, with the column lines of `odoo_version` only."""
    _check_version(odoo_version)
    kept = []
    for line in SCHEMA_PATH.read_text("utf-8").splitlines():
        tagged = _VERSION_TAG.search(line) if not line.lstrip().startswith("--") else None
        if tagged is None or tagged.group(1) == odoo_version:
            kept.append(line)
    tables, constraints = re.split(
        f"^{re.escape(CONSTRAINTS_MARKER)}$", "\n".join(kept) + "\n", maxsplit=1,
        flags=re.MULTILINE,
    )
    return tables, constraints


_CREATE = re.compile(r"^create table (\w+) \(\n(.*?)\n\);", re.MULTILINE | re.DOTALL)


@functools.cache
def schema_tables(odoo_version: str = DEFAULT_ODOO_VERSION) -> dict[str, Table]:
    """The tables of `schema.sql` for `odoo_version` in creation order (parents before
    children)."""
    tables: dict[str, Table] = {}
    for name, body in _CREATE.findall(_schema_parts(odoo_version)[0]):
        columns: list[str] = []
        key: tuple[str, ...] = ("id",)
        for raw in body.splitlines():
            line = raw.strip().rstrip(",")
            if line.startswith("primary key"):
                inside = line[line.index("(") + 1 : line.index(")")]
                key = tuple(part.strip() for part in inside.split(","))
            elif line and not line.startswith("--") and not re.match(
                    r"(constraint|check)\b", line):
                columns.append(line.split()[0])
        tables[name] = Table(name, tuple(columns), key)
    return tables


def schema_columns(odoo_version: str = DEFAULT_ODOO_VERSION) -> dict[str, list[str]]:
    """`{table: [column, ...]}` as `schema.sql` declares them for `odoo_version`."""
    return {name: list(table.columns) for name, table in schema_tables(odoo_version).items()}


@functools.cache
def _queries() -> dict[str, str]:
    return parse_queries(QUERIES_PATH.read_text("utf-8"))


@functools.cache
def _blank(table: str) -> tuple[Row, frozenset[str]]:
    """Every column `table` has in any version: rows are built once for all versions."""
    columns = dict.fromkeys(c for version in ODOO_VERSIONS
                            for c in schema_tables(version)[table].columns)
    return dict.fromkeys(columns), frozenset(columns)


def _row(table: str, values: dict[str, Any]) -> Row:
    """A full row of `table`: every column, None unless given."""
    blank, known = _blank(table)
    row = dict(blank)
    row.update(values)
    if len(row) != len(blank):
        raise KeyError(f"{table} has no column {sorted(set(values) - known)}")
    return row


def _values_of(table: Table) -> Callable[[Row], tuple[Any, ...]]:
    """A fast getter of a row's values in column order (every table has 2+ columns)."""
    return itemgetter(*table.columns)


def _key(table: str, row: Row) -> tuple[Any, ...]:
    return tuple(row[column] for column in schema_tables()[table].key)


# ---------------------------------------------------------------------------------- connections


def _connect(dsn: str) -> psycopg.Connection[Any]:
    """A connection reading numeric as float and jsonb as text, the types rows are built with."""
    conn = psycopg.connect(dsn)
    conn.adapters.register_loader("numeric", FloatLoader)
    conn.adapters.register_loader("jsonb", TextLoader)
    return conn


def _with_dbname(dsn: str, name: str) -> str:
    params: dict[str, Any] = conninfo_to_dict(dsn)
    params["dbname"] = name
    return make_conninfo(**params)


def ensure_database(admin_dsn: str, name: str) -> str:
    """Create database `name` on the server of `admin_dsn` unless it exists; return its DSN."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if conn.execute(_queries()["database_exists"], {"name": name}).fetchone() is None:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return _with_dbname(admin_dsn, name)


# ---------------------------------------------------------------------------------- randomness


def _unit(seed: int, kind: str, ident: int) -> float:
    """A stable number in [0, 1) for one record: traits that have no column of their own."""
    digest = hashlib.blake2b(f"{seed}:{kind}:{ident}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _day_rng(seed: int, day: int) -> random.Random:
    return random.Random(f"odoo-generator:{seed}:day:{day}")


def _count(rng: random.Random, mean: float) -> int:
    """An integer with the given mean: the whole part plus one with the fraction's chance."""
    whole = math.floor(mean)
    return whole + (1 if rng.random() < mean - whole else 0)


def _r2(value: float) -> float:
    """Round to cents, half away from zero as Odoo's float_round (Python's round() is not:
    round(2.675, 2) == 2.67); `+ 0.0` turns -0.0 into 0.0 so equal amounts serialise equally.
    """
    return round(value * 100.0 + (1e-7 if value > 0 else -1e-7)) / 100.0 + 0.0


# ---------------------------------------------------------------------------------- world


@dataclass
class Customer:
    row: Row
    weight: float  # how often the customer orders (Pareto)
    currency_id: int
    term_id: int
    payer: str  # prompt | late | bad


@dataclass
class Product:
    id: int
    template: Row
    label: str
    weight: float  # popularity
    policy: str  # invoice_policy: order | delivery
    uom_id: int
    service: bool


@dataclass
class Order:
    row: Row
    lines: dict[int, Row]


@dataclass
class Invoice:
    row: Row
    term: Row  # the receivable (payment_term) line
    order_id: int | None
    lines: list[Row]  # product and tax lines, kept while the invoice can be credited
    links: dict[int, int]  # invoice line id -> sale order line id


@dataclass
class World:
    """What the simulation knows between two days; `advance` rebuilds it from the database."""

    seed: int
    scale: float
    start: date
    day: int
    ids: dict[str, int]
    numbers: dict[str, int]  # last sequence_number per account_move sequence_prefix
    rates: dict[int, float]
    config: dict[str, Row]
    users: list[int]
    customers: dict[int, Customer]
    templates: dict[int, Row]
    products: dict[int, Product]
    orders: dict[int, Order] = field(default_factory=dict)
    invoices: dict[int, Invoice] = field(default_factory=dict)
    activity: Counter[str] = field(default_factory=Counter)
    product_list: list[Product] = field(default_factory=list)
    product_weights: list[float] = field(default_factory=list)
    odoo_version: str = DEFAULT_ODOO_VERSION

    def index_products(self) -> None:
        self.product_list = list(self.products.values())
        self.product_weights = list(itertools.accumulate(p.weight for p in self.product_list))

    def next_id(self, table: str) -> int:
        self.ids[table] += 1
        return self.ids[table]

    def next_number(self, prefix: str) -> int:
        self.numbers[prefix] = self.numbers.get(prefix, 0) + 1
        return self.numbers[prefix]

    @property
    def current_date(self) -> date:
        return self.start + timedelta(days=self.day)

    def held(self) -> Iterator[tuple[str, Row]]:
        """Every row the world still holds (and may still change)."""
        for row in self.config.values():
            yield "ir_config_parameter", row
        for customer in self.customers.values():
            yield "res_partner", customer.row
        for template in self.templates.values():
            yield "product_template", template
        for order in self.orders.values():
            yield from _order_rows(order)
        for invoice in self.invoices.values():
            yield "account_move", invoice.row
            yield "account_move_line", invoice.term


def _order_rows(order: Order) -> Iterator[tuple[str, Row]]:
    yield "sale_order", order.row
    for line in order.lines.values():
        yield "sale_order_line", line
        if line["product_id"] is not None:
            yield "account_tax_sale_order_line_rel", _line_tax(line)


def _line_tax(line: Row) -> Row:
    return {"sale_order_line_id": line["id"], "account_tax_id": TAX_ID}


def _customers_for(scale: float) -> int:
    return max(30, round(4000 * scale))


def _templates_for(scale: float) -> int:
    return max(25, round(1200 * scale))


def _salespeople_for(scale: float) -> int:
    return max(3, round(12 * math.sqrt(scale)))


# ---------------------------------------------------------------------------------- sinks


class _Sink(Protocol):
    """Where the simulation's row changes go: a fresh bulk load, or a live database."""

    def added(self, table: str, row: Row) -> None: ...
    def changed(self, table: str, row: Row) -> None: ...
    def removed(self, table: str, row: Row) -> None: ...
    def released(self, table: str, row: Row) -> None: ...


class _BulkSink:
    """Writes each row once, in its final state, to a COPY file per table; loads them at the end.

    The simulation releases a row when it will never change it again; `generate` releases what
    the world still holds after the last day. Nothing is updated or deleted in the database.
    """

    def __init__(self, conn: psycopg.Connection[Any], directory: Path,
                 tables: dict[str, Table]) -> None:
        self._conn = conn
        self._directory = directory
        self._tables = tables
        self._files: dict[str, IO[bytes]] = {}
        self._copies: dict[str, psycopg.Copy] = {}
        self._values = {name: _values_of(table) for name, table in tables.items()}

    def added(self, table: str, row: Row) -> None:
        pass

    def changed(self, table: str, row: Row) -> None:
        pass

    def removed(self, table: str, row: Row) -> None:
        pass

    def released(self, table: str, row: Row) -> None:
        try:
            copy = self._copies[table]
        except KeyError:
            copy = self._open(table)
        copy.write_row(self._values[table](row))

    def _open(self, table: str) -> psycopg.Copy:
        file = (self._directory / f"{table}.copy").open("w+b")
        self._files[table] = file
        copy = psycopg.Copy(self._conn.cursor(), writer=FileWriter(file))
        self._copies[table] = copy
        return copy

    def load(self, dsn: str) -> None:
        """COPY every file into its (committed, constraint-free) table, two tables at a time.

        The server does the parsing: two connections keep both cores of a small machine busy.
        """
        for copy in self._copies.values():
            copy.finish(None)
        self._copies.clear()
        tables = self._tables
        biggest_first = sorted(self._files, key=lambda name: -self._files[name].tell())
        with ThreadPoolExecutor(max_workers=2) as pool:
            for done in [pool.submit(_load_file, dsn, tables[name], self._files[name])
                         for name in biggest_first]:
                done.result()

    def close(self) -> None:
        for copy in self._copies.values():
            with contextlib.suppress(Exception):
                copy.finish(None)
        for file in self._files.values():
            file.close()


class _DbSink:
    """Collects inserts, updates and deletes of a live database; `flush` applies them."""

    def __init__(self, tables: dict[str, Table]) -> None:
        self._tables = tables
        self.inserted: dict[str, dict[tuple[Any, ...], Row]] = {name: {} for name in tables}
        self.updated: dict[str, dict[tuple[Any, ...], Row]] = {name: {} for name in tables}
        self.deleted: dict[str, dict[tuple[Any, ...], Row]] = {name: {} for name in tables}

    def added(self, table: str, row: Row) -> None:
        self.inserted[table][_key(table, row)] = row

    def changed(self, table: str, row: Row) -> None:
        key = _key(table, row)
        if key not in self.inserted[table]:
            self.updated[table][key] = row

    def removed(self, table: str, row: Row) -> None:
        key = _key(table, row)
        if self.inserted[table].pop(key, None) is None:
            self.updated[table].pop(key, None)
            self.deleted[table][key] = row

    def released(self, table: str, row: Row) -> None:
        pass

    def flush(self, conn: psycopg.Connection[Any]) -> None:
        """Inserts parents first, then updates, then deletes children first."""
        tables = self._tables
        for name, table in tables.items():
            if self.inserted[name]:
                _copy_rows(conn, name, table.columns, self.inserted[name].values())
        for name, table in tables.items():
            if self.updated[name]:
                _update_rows(conn, table, self.updated[name].values())
        for name in reversed(list(tables)):
            if self.deleted[name]:
                _delete_rows(conn, tables[name], list(self.deleted[name]))


def _load_file(dsn: str, table: Table, file: IO[bytes]) -> None:
    file.seek(0)
    statement = sql.SQL("copy {} ({}) from stdin").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, table.columns))
    )
    with psycopg.connect(dsn) as conn, conn.cursor().copy(statement) as copy:
        while chunk := file.read(1 << 20):
            copy.write(chunk)


def _copy_rows(conn: psycopg.Connection[Any], target: str, columns: tuple[str, ...],
               rows: Any) -> None:
    statement = sql.SQL("copy {} ({}) from stdin").format(
        sql.Identifier(target), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    values = itemgetter(*columns)
    with conn.cursor().copy(statement) as copy:
        for row in rows:
            copy.write_row(values(row))


def _update_rows(conn: psycopg.Connection[Any], table: Table, rows: Any) -> None:
    """Whole-row UPDATE through a temporary table loaded with COPY."""
    staging = f"_generator_{table.name}"
    conn.execute(
        sql.SQL("create temp table {} (like {}) on commit drop").format(
            sql.Identifier(staging), sql.Identifier(table.name)
        )
    )
    _copy_rows(conn, staging, table.columns, rows)
    values = [c for c in table.columns if c not in table.key]
    conn.execute(
        sql.SQL("update {t} set ({cols}) = ({src}) from {s} where {match}").format(
            t=sql.Identifier(table.name),
            cols=sql.SQL(", ").join(map(sql.Identifier, values)),
            src=sql.SQL(", ").join(sql.Identifier("s", c) for c in values),
            s=sql.SQL("{} as s").format(sql.Identifier(staging)),
            match=sql.SQL(" and ").join(
                sql.SQL("{} = {}").format(sql.Identifier(table.name, c), sql.Identifier("s", c))
                for c in table.key
            ),
        )
    )
    conn.execute(sql.SQL("drop table {}").format(sql.Identifier(staging)))


def _delete_rows(conn: psycopg.Connection[Any], table: Table,
                 keys: list[tuple[Any, ...]]) -> None:
    columns = [sql.Identifier(c) for c in table.key]
    arrays = [[key[i] for key in keys] for i in range(len(table.key))]
    conn.execute(
        sql.SQL("delete from {t} using unnest({arrays}) as k({cols}) where {match}").format(
            t=sql.Identifier(table.name),
            arrays=sql.SQL(", ").join([sql.Placeholder()] * len(arrays)),
            cols=sql.SQL(", ").join(columns),
            match=sql.SQL(" and ").join(
                sql.SQL("{} = {}").format(sql.Identifier(table.name, c), sql.Identifier("k", c))
                for c in table.key
            ),
        ),
        arrays,
    )


# ---------------------------------------------------------------------------------- reference data

_COUNTRIES: tuple[tuple[str, str, int, int, str, str, tuple[str, ...]], ...] = (
    # code, name, currency, phone code, lang, company suffix, cities
    ("NL", "Netherlands", EUR, 31, "nl_NL", "BV", ("Amsterdam", "Rotterdam", "Utrecht", "Delft")),
    ("BE", "Belgium", EUR, 32, "nl_BE", "NV", ("Antwerpen", "Gent", "Brussel", "Leuven")),
    ("DE", "Germany", EUR, 49, "de_DE", "GmbH", ("Berlin", "Hamburg", "Köln", "München")),
    ("FR", "France", EUR, 33, "fr_FR", "SAS", ("Paris", "Lyon", "Lille", "Nantes")),
    ("ES", "Spain", EUR, 34, "es_ES", "SL", ("Madrid", "Barcelona", "Valencia")),
    ("IT", "Italy", EUR, 39, "it_IT", "Srl", ("Milano", "Torino", "Bologna")),
    ("IE", "Ireland", EUR, 353, "en_IE", "Ltd", ("Dublin", "Cork")),
    ("US", "United States", USD, 1, "en_US", "Inc.", ("New York", "Chicago", "Austin", "Denver")),
    ("GB", "United Kingdom", GBP, 44, "en_GB", "Ltd", ("London", "Manchester", "Leeds")),
)
_COUNTRY_WEIGHTS = (34, 14, 14, 7, 4, 4, 3, 12, 8)
_FIRST = ("Anna", "Bram", "Chloé", "Daan", "Emma", "Finn", "Greta", "Hugo", "Ines", "Jonas",
          "Katja", "Lars", "Mila", "Noah", "Olivia", "Pieter", "Quinn", "Rosa", "Sven", "Tess",
          "Umar", "Vera", "Willem", "Yara", "Zoë")
_LAST = ("de Vries", "Jansen", "Peeters", "Müller", "Martin", "García", "Rossi", "Murphy",
         "Smith", "Brown", "Bakker", "Visser", "Claes", "Schmidt", "Dubois", "López", "Bianchi",
         "Walsh", "Johnson", "Taylor", "Mertens", "Wagner", "Moreau", "Ricci", "Kelly")
_COMPANY_WORDS = ("Blue", "North", "Harbor", "Summit", "Delta", "Oak", "Silver", "Bright",
                  "Pioneer", "Atlas", "Cedar", "Nova", "Vertex", "Maple", "Orbit", "Granite")
_COMPANY_NOUNS = ("Logistics", "Foods", "Systems", "Retail", "Design", "Consulting", "Health",
                  "Energy", "Media", "Works", "Labs", "Trading", "Partners", "Industries")
_STREETS = ("Kerkstraat", "Stationsweg", "Main Street", "Hauptstraße", "Rue de la Paix",
            "Calle Mayor", "Via Roma", "High Street", "Market Square", "Dorpsstraat")

_CATEGORIES: tuple[tuple[str, str, float, bool, tuple[str, ...], tuple[str, ...]], ...] = (
    # name, code, log-mean price (EUR), service, adjectives, nouns
    ("Office Furniture", "FURN", math.log(240), False,
     ("Oak", "Steel", "Ergonomic", "Compact", "Executive", "Modular"),
     ("Desk", "Chair", "Cabinet", "Shelf", "Table", "Drawer Unit")),
    ("Electronics", "ELEC", math.log(180), False,
     ("Wireless", "4K", "Portable", "Smart", "USB-C", "Noise-Cancelling"),
     ("Monitor", "Keyboard", "Headset", "Dock", "Webcam", "Speaker")),
    ("Stationery", "STAT", math.log(12), False,
     ("Recycled", "A4", "Premium", "Colour", "Magnetic", "Refillable"),
     ("Notebook", "Pen Set", "Binder", "Whiteboard", "Paper Pack", "Stapler")),
    ("Spare Parts", "PART", math.log(35), False,
     ("Replacement", "Heavy-Duty", "Universal", "Spare", "Mounting", "Power"),
     ("Cable", "Bracket", "Adapter", "Battery", "Caster Set", "Hinge")),
    ("Software", "SOFT", math.log(420), True,
     ("Annual", "Team", "Enterprise", "Starter", "Cloud", "Premium"),
     ("Licence", "Subscription", "Support Plan", "Seat Pack")),
    ("Services", "SERV", math.log(95), True,
     ("On-site", "Remote", "Senior", "Express", "Standard", "Weekend"),
     ("Installation", "Consulting", "Training", "Maintenance", "Audit")),
)
_CATEGORY_WEIGHTS = (22, 22, 20, 18, 8, 10)


def _jsonb(text: str) -> str:
    """A translatable field's value: the jsonb Odoo 17 stores, English only."""
    return json.dumps({"en_US": text})


def _stamp(row: Row, when: datetime, uid: int) -> None:
    row["write_date"] = when
    row["write_uid"] = uid


def _created(when: datetime, uid: int) -> dict[str, Any]:
    return {"create_uid": uid, "create_date": when, "write_uid": uid, "write_date": when}


def _customer(seed: int, row: Row) -> Customer:
    """A customer's hidden traits come from its id, so a reloaded world has the same ones."""
    pid = row["id"]
    weight = min(200.0, (1.0 - _unit(seed, "customer-weight", pid)) ** (-1 / 1.16))
    term = _unit(seed, "customer-term", pid)
    payer = _unit(seed, "customer-payer", pid)
    country = _COUNTRIES[row["country_id"] - 1]
    return Customer(
        row=row, weight=weight, currency_id=country[2],
        term_id=1 if term < 0.25 else 2 if term < 0.8 else 3,
        payer="prompt" if payer < 0.7 else "late" if payer < 0.9 else "bad",
    )


def _product(seed: int, template: Row, variant: Row) -> Product:
    service = template["type"] == "service"
    name = json.loads(template["name"])["en_US"]
    return Product(
        id=variant["id"], template=template, label=f"[{variant['default_code']}] {name}",
        weight=min(100.0, (1.0 - _unit(seed, "product-weight", variant["id"])) ** (-1 / 1.5)),
        policy=template["invoice_policy"], uom_id=template["uom_id"], service=service,
    )


def _customer_row(rng: random.Random, pid: int, when: datetime, users: list[int]) -> Row:
    country_id = rng.choices(range(1, len(_COUNTRIES) + 1), weights=_COUNTRY_WEIGHTS)[0]
    code, _, _, phone_code, lang, suffix, cities = _COUNTRIES[country_id - 1]
    is_company = rng.random() < 0.75
    if is_company:
        name = f"{rng.choice(_COMPANY_WORDS)} {rng.choice(_COMPANY_NOUNS)} {suffix}"
        email = f"info@{name.split()[0].lower()}-{name.split()[1].lower()}{pid}.example.com"
    else:
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        name = f"{first} {last}"
        email = f"{first.lower()}.{pid}@mail.example.com"
    return _row("res_partner", {
        "id": pid, "name": name, "complete_name": name, "commercial_partner_id": pid,
        "commercial_company_name": name if is_company else None, "type": "contact",
        "lang": lang, "tz": "Europe/Amsterdam" if code != "US" else "America/New_York",
        "user_id": rng.choice(users),
        "vat": f"{code}{rng.randrange(10**8, 10**9)}" if is_company else None,
        "website": f"https://www.{name.split()[0].lower()}.example.com" if is_company else None,
        "active": True, "employee": False,
        "street": f"{rng.choice(_STREETS)} {rng.randint(1, 250)}",
        "zip": f"{rng.randint(1000, 99999)}", "city": rng.choice(cities),
        "country_id": country_id, "email": email,
        "phone": f"+{phone_code} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
        "is_company": is_company, "color": 0, "partner_share": True,
        "customer_rank": 1, "supplier_rank": 0, **_created(when, ADMIN_UID),
    })


class _Setup:
    """The reference data of a new database: company, currencies, accounts, customers, products."""

    def __init__(self, seed: int, scale: float, start: date, sink: _Sink,
                 odoo_version: str = DEFAULT_ODOO_VERSION) -> None:
        self.seed, self.scale, self.start, self.sink = seed, scale, start, sink
        self.odoo_version = odoo_version
        self.rng = random.Random(f"odoo-generator:{seed}:setup")
        self.when = datetime.combine(start - timedelta(days=1), clock_time(6, 0))
        self.ids: dict[str, int] = dict.fromkeys(
            (name for name, table in schema_tables().items() if table.key == ("id",)), 0
        )

    def fixed(self, table: str, values: dict[str, Any], uid: int = SYSTEM_UID) -> Row:
        """A reference row that never changes: written once."""
        row = self.add(table, values, uid)
        self.sink.released(table, row)
        return row

    def add(self, table: str, values: dict[str, Any], uid: int = SYSTEM_UID) -> Row:
        self.ids[table] += 1
        row = _row(table, {"id": self.ids[table], **_created(self.when, uid), **values})
        self.sink.added(table, row)
        return row

    def build(self) -> World:
        self.modules()
        users = self.staff()
        self.currencies_and_company()
        self.accounting()
        config = self.config()
        customers = self.customers(users)
        templates, products = self.products()
        world = World(
            seed=self.seed, scale=self.scale, start=self.start, day=0, ids=self.ids,
            numbers={}, rates=dict(INITIAL_RATES), config=config, users=users,
            customers=customers, templates=templates, products=products,
            odoo_version=self.odoo_version,
        )
        world.index_products()
        return world

    def staff(self) -> list[int]:
        self.fixed("res_partner", {"name": "Control Room Demo BV", "is_company": True,
                                   "complete_name": "Control Room Demo BV",
                                   "company_id": COMPANY_ID, "commercial_partner_id": 1,
                                   "country_id": 1, "email": "info@controlroom.example.com",
                                   "active": True, "type": "contact", "partner_share": False,
                                   "customer_rank": 0, "supplier_rank": 0})
        people = [("OdooBot", "__system__"), ("Mitchell Admin", "admin")]
        for index in range(_salespeople_for(self.scale)):
            first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
            people.append((f"{first} {last}", f"sales{index + 1}@controlroom.example.com"))
        users: list[int] = []
        for name, login in people:
            partner = self.fixed("res_partner", {
                "name": name, "complete_name": name, "company_id": COMPANY_ID,
                "commercial_partner_id": self.ids["res_partner"] + 1, "type": "contact",
                "active": login != "__system__", "email": login if "@" in login else None,
                "is_company": False, "partner_share": False, "customer_rank": 0,
                "supplier_rank": 0, "country_id": 1, "lang": "en_US"})
            user = self.fixed("res_users", {"login": login, "partner_id": partner["id"],
                                            "company_id": COMPANY_ID,
                                            "active": login != "__system__", "share": False})
            if user["id"] > ADMIN_UID:
                users.append(user["id"])
        return users

    def currencies_and_company(self) -> None:
        for code, full, symbol, position, unit, sub in (
            ("EUR", "Euro", "€", "after", "Euros", "Cents"),
            ("USD", "United States dollar", "$", "before", "Dollars", "Cents"),
            ("GBP", "British pound", "£", "before", "Pounds", "Pence"),
        ):
            self.fixed("res_currency", {
                "name": code, "full_name": full, "symbol": symbol, "rounding": 0.01,
                "decimal_places": 2, "active": True, "position": position,
                "currency_unit_label": self.translatable(unit),
                "currency_subunit_label": self.translatable(sub)})
        for code, name, currency, phone, *_ in _COUNTRIES:
            self.fixed("res_country", {"name": _jsonb(name), "code": code,
                                       "currency_id": currency, "phone_code": phone})
        self.fixed("res_company", {
            "name": "Control Room Demo BV", "partner_id": 1, "currency_id": EUR, "sequence": 10,
            "parent_path": "1/", "email": "info@controlroom.example.com",
            "phone": "+31 20 555 0100", "company_registry": "12345678", "color": 1,
            "active": True, "account_fiscal_country_id": 1,
            "tax_calculation_rounding_method": "round_per_line"})

    def translatable(self, text: str) -> str:
        """A field translatable in 18.0 but not in 17.0 (res_currency's labels)."""
        return text if self.odoo_version == "17.0" else _jsonb(text)

    def modules(self) -> None:
        """The installed modules (ir_module_module), `base`'s version saying the database's."""
        for name, minor in (("base", "1.3"), ("uom", "1.0"), ("product", "1.2"),
                            ("account", "1.2"), ("sale", "1.2")):
            self.fixed("ir_module_module", {
                "name": name, "state": "installed",
                "latest_version": f"{self.odoo_version}.{minor}", "author": "Odoo S.A.",
                "license": "LGPL-3", "application": name in ("account", "sale")})

    def accounting(self) -> None:
        for name, code, kind, group, reconcile in (
            ("Product Sales", "400000", "income", "income", False),
            ("Account Receivable", "121000", "asset_receivable", "asset", True),
            ("VAT Payable", "451000", "liability_current", "liability", False),
            ("Bank", "550001", "asset_cash", "asset", False),
        ):
            self.fixed("account_account", {
                "name": _jsonb(name), "code": code, "deprecated": False, "account_type": kind,
                "internal_group": group, "reconcile": reconcile, "company_id": COMPANY_ID})
        for name, code, kind, account in (("Customer Invoices", "INV", "sale", INCOME_ACCOUNT),
                                          ("Bank", "BNK1", "bank", BANK_ACCOUNT)):
            self.fixed("account_journal", {
                "name": _jsonb(name), "code": code, "active": True, "type": kind,
                "default_account_id": account, "company_id": COMPANY_ID, "sequence": 10})
        self.fixed("account_tax", {
            "name": _jsonb("21%"), "type_tax_use": "sale", "tax_scope": None,
            "amount_type": "percent", "active": True, "company_id": COMPANY_ID, "sequence": 1,
            "amount": 21.0, "description": _jsonb("VAT 21%"), "price_include": False,
            "include_base_amount": False})
        for days in PAYMENT_TERM_DAYS.values():
            term = self.fixed("account_payment_term", {
                "name": _jsonb(f"{days} Days"), "active": True,
                "note": _jsonb(f"Payment terms: {days} Days"), "sequence": 10,
                "display_on_invoice": True, "early_discount": False})
            self.fixed("account_payment_term_line", {
                "value": "percent", "value_amount": 100.0, "delay_type": "days_after",
                "nb_days": days, "payment_id": term["id"]})
        for name in ("Unit", "Working Time"):
            self.fixed("uom_category", {"name": _jsonb(name)})
        for name, category, factor, kind in (("Units", 1, 1.0, "reference"),
                                             ("Dozens", 1, 0.083333, "bigger"),
                                             ("Hours", 2, 1.0, "reference"),
                                             ("Days", 2, 0.125, "bigger")):
            self.fixed("uom_uom", {"name": _jsonb(name), "category_id": category,
                                   "factor": factor, "rounding": 0.01, "active": True,
                                   "uom_type": kind})

    def config(self) -> dict[str, Row]:
        rows: dict[str, Row] = {}
        for key, value in ((VERSION_KEY, GENERATOR_VERSION), (SEED_KEY, str(self.seed)),
                           (SCALE_KEY, repr(self.scale)), (START_KEY, self.start.isoformat()),
                           (DAY_KEY, "0"), (ODOO_VERSION_KEY, self.odoo_version)):
            rows[key] = self.add("ir_config_parameter", {"key": key, "value": value})
        return rows

    def customers(self, users: list[int]) -> dict[int, Customer]:
        customers: dict[int, Customer] = {}
        for _ in range(_customers_for(self.scale)):
            self.ids["res_partner"] += 1
            when = self.when - timedelta(seconds=self.rng.randrange(365 * 86400))
            row = _customer_row(self.rng, self.ids["res_partner"], when, users)
            self.sink.added("res_partner", row)
            customers[row["id"]] = _customer(self.seed, row)
        return customers

    def products(self) -> tuple[dict[int, Row], dict[int, Product]]:
        parents = [self.fixed("product_category", {"name": "All", "complete_name": "All",
                                                   "parent_path": "1/"})]
        parents.append(self.fixed("product_category", {
            "name": "Saleable", "complete_name": "All / Saleable", "parent_id": 1,
            "parent_path": "1/2/"}))
        category_ids = []
        for name, *_ in _CATEGORIES:
            cid = self.ids["product_category"] + 1
            self.fixed("product_category", {
                "name": name, "complete_name": f"All / Saleable / {name}", "parent_id": 2,
                "parent_path": f"1/2/{cid}/"})
            category_ids.append(cid)
        templates: dict[int, Row] = {}
        products: dict[int, Product] = {}
        for _ in range(_templates_for(self.scale)):
            index = self.rng.choices(range(len(_CATEGORIES)), weights=_CATEGORY_WEIGHTS)[0]
            template, variants = self.template(index, category_ids[index])
            templates[template["id"]] = template
            for variant in variants:
                products[variant["id"]] = _product(self.seed, template, variant)
        return templates, products

    def template(self, index: int, category_id: int) -> tuple[Row, list[Row]]:
        _, code, log_price, service, adjectives, nouns = _CATEGORIES[index]
        rng = self.rng
        name = f"{rng.choice(adjectives)} {rng.choice(nouns)} {rng.choice('ABCDEFGHKMRSTX')}" \
               f"{rng.randint(1, 99)}"
        tid = self.ids["product_template"] + 1
        kind = "service" if service else ("product" if rng.random() < 0.7 else "consu")
        goods = not service
        when = self.when - timedelta(seconds=rng.randrange(730 * 86400))
        template = self.add("product_template", {
            "name": _jsonb(name), "sequence": 1, "description_sale": None,
            "detailed_type": kind, "type": kind, "categ_id": category_id,
            "list_price": _r2(max(1.0, rng.lognormvariate(log_price, 0.6))),
            "volume": _r2(rng.uniform(0.001, 0.8)) if goods else 0.0,
            "weight": _r2(rng.uniform(0.05, 40.0)) if goods else 0.0,
            "sale_ok": True, "purchase_ok": goods, "uom_id": HOUR_UOM if service else UNIT_UOM,
            "uom_po_id": HOUR_UOM if service else UNIT_UOM, "active": True, "color": 0,
            "default_code": f"{code}-{tid:05d}", "priority": "0",
            "invoice_policy": "order" if service else "delivery",
            "service_type": "manual", "expense_policy": "no", "create_date": when,
            "write_date": when})
        suffixes = [""]
        if goods and rng.random() < 0.12:
            suffixes = ["-S", "-M", "-L"][: rng.randint(2, 3)]
        variants = []
        for position, suffix in enumerate(suffixes):
            variants.append(self.fixed("product_product", {
                "product_tmpl_id": tid, "default_code": f"{code}-{tid:05d}{suffix}",
                "active": True, "barcode": f"{rng.randrange(10**12, 10**13)}",
                "combination_indices": str(position + 1) if suffix else "",
                "volume": template["volume"], "weight": template["weight"],
                "create_date": when, "write_date": when}))
        return template, variants


# ---------------------------------------------------------------------------------- order maths


def _price_line(line: Row) -> None:
    """Odoo's `_compute_amount` for one tax of 21 % excluded from the price, rounded per line."""
    quantity = line["product_uom_qty"]
    subtotal = _r2(quantity * line["price_unit"] * (1 - line["discount"] / 100))
    tax = _r2(subtotal * TAX_RATE)
    line["price_subtotal"] = subtotal
    line["price_tax"] = tax
    line["price_total"] = _r2(subtotal + tax)
    line["price_reduce_taxexcl"] = _r2(subtotal / quantity) if quantity else 0.0
    line["price_reduce_taxinc"] = _r2((subtotal + tax) / quantity) if quantity else 0.0


def _line_invoicing(line: Row, policy: str | None) -> None:
    """qty_to_invoice, untaxed_amount_to_invoice and invoice_status as Odoo 17 computes them."""
    if line["display_type"] or line["state"] != "sale" or policy is None:
        line["qty_to_invoice"] = 0.0
        line["untaxed_amount_to_invoice"] = 0.0
        line["invoice_status"] = "no"
        return
    basis = line["qty_delivered"] if policy == "delivery" else line["product_uom_qty"]
    line["qty_to_invoice"] = _r2(basis - line["qty_invoiced"])
    due = _r2(basis * line["price_unit"] * (1 - line["discount"] / 100))
    line["untaxed_amount_to_invoice"] = _r2(max(due - line["untaxed_amount_invoiced"], 0.0))
    if line["qty_to_invoice"] != 0:
        line["invoice_status"] = "to invoice"
    elif policy == "order" and line["qty_delivered"] > line["product_uom_qty"]:
        line["invoice_status"] = "upselling"
    elif line["qty_invoiced"] >= line["product_uom_qty"]:
        line["invoice_status"] = "invoiced"
    else:
        line["invoice_status"] = "no"


def _order_totals(order: Order) -> None:
    lines = order.lines.values()
    untaxed = _r2(sum(line["price_subtotal"] for line in lines))
    tax = _r2(sum(line["price_tax"] for line in lines))
    order.row["amount_untaxed"] = untaxed
    order.row["amount_tax"] = tax
    order.row["amount_total"] = _r2(untaxed + tax)


def _order_invoice_status(order: Order) -> str:
    if order.row["state"] != "sale":
        return "no"
    statuses = [line["invoice_status"] for line in order.lines.values() if not line["display_type"]]
    if "to invoice" in statuses:
        return "to invoice"
    if statuses and all(status == "invoiced" for status in statuses):
        return "invoiced"
    if statuses and all(status in ("invoiced", "upselling") for status in statuses):
        return "upselling"
    return "no"


def _order_open(order: Order, refundable_orders: set[int]) -> bool:
    """Whether the simulation may still change the order (mirrors `open_orders` in SQL)."""
    state = order.row["state"]
    if state in ("draft", "sent"):
        return True
    if state != "sale":
        return False
    return (
        order.row["invoice_status"] != "invoiced"
        or _undelivered(order)
        or order.row["id"] in refundable_orders
    )


def _undelivered(order: Order) -> bool:
    return any(line["qty_delivered"] < line["product_uom_qty"] for line in order.lines.values())


class _Item(NamedTuple):
    """One product line of a customer invoice or credit note, before it becomes a move line."""

    order_line_id: int
    product_id: int
    uom_id: int
    label: str
    quantity: float
    price_unit: float
    discount: float
    subtotal: float
    tax: float
    company_subtotal: float  # in EUR, positive


# ---------------------------------------------------------------------------------- one day


class _Day:
    """One simulated day: every activity in its time window, then the working set is pruned."""

    def __init__(self, world: World, sink: _Sink, seed: int) -> None:
        self.world, self.sink = world, sink
        self.rng = _day_rng(seed, world.day)
        self.date = world.current_date
        self.midnight = datetime.combine(self.date, clock_time())

    def run(self) -> None:
        self.rates()
        self.partners()
        self.edits()
        self.closures()
        self.confirmations()
        self.quotations()
        self.deliveries()
        self.invoicing()
        self.payments()
        self.refunds()
        self.end()

    def times(self, phase: str, count: int) -> list[datetime]:
        start, end = _WINDOWS[phase]
        seconds = sorted(self.rng.randrange(start * 3600, end * 3600) for _ in range(count))
        return [self.midnight + timedelta(seconds=s) for s in seconds]

    def new(self, table: str, values: dict[str, Any], when: datetime, uid: int) -> Row:
        row = _row(table, {"id": self.world.next_id(table), **_created(when, uid), **values})
        self.sink.added(table, row)
        return row

    def final(self, table: str, values: dict[str, Any]) -> Row:
        """A row that is complete when created (rates, relations, credit notes, payments)."""
        row = _row(table, values)
        self.sink.added(table, row)
        self.sink.released(table, row)
        return row

    def link(self, table: str, row: Row) -> None:
        """A Many2many pair that never changes (the row is given whole)."""
        self.sink.added(table, row)
        self.sink.released(table, row)

    def touch(self, table: str, row: Row, when: datetime, uid: int) -> None:
        _stamp(row, when, uid)
        self.sink.changed(table, row)

    # ------------------------------------------------------------------ reference data

    def rates(self) -> None:
        for when, currency in zip(self.times("rates", 2), (USD, GBP), strict=True):
            rate = round(self.world.rates[currency] * math.exp(self.rng.gauss(0, 0.004)), 6)
            self.world.rates[currency] = rate
            row = self.new("res_currency_rate", {"name": self.date, "rate": rate,
                                                 "currency_id": currency,
                                                 "company_id": COMPANY_ID}, when, SYSTEM_UID)
            self.sink.released("res_currency_rate", row)

    def partners(self) -> None:
        world, rng = self.world, self.rng
        base = _customers_for(world.scale)
        new = _count(rng, base * 0.0015)
        edits = _count(rng, base * 0.002)
        prices = _count(rng, _templates_for(world.scale) * 0.003)
        times = iter(self.times("partners", new + edits + prices))
        for _ in range(new):
            when = next(times)
            row = _customer_row(rng, world.next_id("res_partner"), when, world.users)
            self.sink.added("res_partner", row)
            world.customers[row["id"]] = _customer(world.seed, row)
            world.activity["new_customers"] += 1
        customer_ids = list(world.customers)
        for _ in range(edits):
            row = world.customers[rng.choice(customer_ids)].row
            field_name = rng.choice(("phone", "email", "street"))
            row[field_name] = {
                "phone": f"+{rng.randint(1, 99)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
                "email": f"contact{rng.randint(1, 999)}.{row['id']}@mail.example.com",
                "street": f"{rng.choice(_STREETS)} {rng.randint(1, 250)}",
            }[field_name]
            self.touch("res_partner", row, next(times), ADMIN_UID)
            world.activity["customer_edits"] += 1
        template_ids = list(world.templates)
        for _ in range(prices):
            template = world.templates[rng.choice(template_ids)]
            template["list_price"] = _r2(template["list_price"] * rng.uniform(0.95, 1.08))
            self.touch("product_template", template, next(times), ADMIN_UID)
            world.activity["price_changes"] += 1

    # ------------------------------------------------------------------ quotations

    def earlier_quotations(self) -> list[Order]:
        return [order for order in self.world.orders.values()
                if order.row["state"] in ("draft", "sent")
                and order.row["create_date"] < self.midnight]

    def edits(self) -> None:
        rng = self.rng
        chosen: list[tuple[str, Order]] = []
        for order in self.world.orders.values():
            draw = rng.random()
            state = order.row["state"]
            if state in ("draft", "sent") and order.row["create_date"] < self.midnight:
                if draw < P_EDIT:
                    chosen.append(("edit", order))
                elif state == "draft" and draw < P_EDIT + P_SEND:
                    chosen.append(("send", order))
            elif state == "sale" and order.row["invoice_status"] != "invoiced" and draw < P_UPSELL:
                chosen.append(("upsell", order))
        for (action, order), when in zip(chosen, self.times("edits", len(chosen)), strict=True):
            uid = order.row["user_id"]
            if action == "send":
                order.row["state"] = "sent"
                for line in order.lines.values():
                    line["state"] = "sent"
                    self.touch("sale_order_line", line, when, uid)
            else:
                self.edit_lines(order, when, upsell=action == "upsell")
            _order_totals(order)
            order.row["invoice_status"] = _order_invoice_status(order)
            self.touch("sale_order", order.row, when, uid)
            self.world.activity[{"send": "sent", "edit": "edits", "upsell": "upsells"}[action]] += 1

    def edit_lines(self, order: Order, when: datetime, *, upsell: bool) -> None:
        rng = self.rng
        lines = [line for line in order.lines.values() if line["product_id"] is not None]
        line = rng.choice(lines)
        draw = rng.random()
        if upsell:
            line["product_uom_qty"] = line["product_uom_qty"] + float(rng.randint(1, 3))
        elif draw < 0.45:
            product = self.world.products[line["product_id"]]
            line["product_uom_qty"] = self.quantity(product)
        elif draw < 0.65:
            if rng.random() < 0.5:
                line["price_unit"] = _r2(line["price_unit"] * rng.uniform(0.85, 1.0))
            else:
                line["discount"] = rng.choice(_DISCOUNTS)
        elif draw < 0.85 or len(lines) == 1:
            sequence = max(other["sequence"] for other in order.lines.values()) + 10
            self.add_line(order, self.pick_products(1)[0], sequence, when)
            return
        else:
            self.remove_line(order, line)
            return
        _price_line(line)
        _line_invoicing(line, self.world.products[line["product_id"]].policy)
        self.touch("sale_order_line", line, when, order.row["user_id"])

    def remove_line(self, order: Order, line: Row) -> None:
        del order.lines[line["id"]]
        if line["product_id"] is not None:
            self.sink.removed("account_tax_sale_order_line_rel", _line_tax(line))
        self.sink.removed("sale_order_line", line)

    def closures(self) -> None:
        """Drafts deleted (Odoo unlink), quotations cancelled or expired, a few orders cancelled."""
        rng = self.rng
        chosen: list[tuple[str, Order]] = []
        for order in self.world.orders.values():
            row = order.row
            if row["state"] in ("draft", "sent") and row["create_date"] < self.midnight:
                draw = rng.random()
                expired = row["validity_date"] is not None and row["validity_date"] < self.date
                cancel = P_CANCEL_EXPIRED if expired else P_CANCEL
                if row["state"] == "draft" and draw < P_DELETE:
                    chosen.append(("delete", order))
                elif draw < P_DELETE + cancel:
                    chosen.append(("cancel", order))
            elif row["state"] == "sale" and all(
                line["qty_delivered"] == 0 and line["qty_invoiced"] == 0
                for line in order.lines.values()
            ) and rng.random() < P_CANCEL_CONFIRMED:
                chosen.append(("cancel", order))
        for (action, order), when in zip(chosen, self.times("closures", len(chosen)), strict=True):
            if action == "delete":
                for line in list(order.lines.values()):
                    self.remove_line(order, line)
                self.sink.removed("sale_order", order.row)
                del self.world.orders[order.row["id"]]
                self.world.activity["deleted_orders"] += 1
            else:
                self.set_state(order, "cancel", when)
                self.world.activity["cancelled"] += 1

    def set_state(self, order: Order, state: str, when: datetime) -> None:
        uid = order.row["user_id"]
        order.row["state"] = state
        for line in order.lines.values():
            line["state"] = state
            product = self.world.products.get(line["product_id"])
            _line_invoicing(line, product.policy if product else None)
            self.touch("sale_order_line", line, when, uid)
        order.row["invoice_status"] = _order_invoice_status(order)
        self.touch("sale_order", order.row, when, uid)

    def confirmations(self) -> None:
        chosen = [order for order in self.earlier_quotations() if self.rng.random() < P_CONFIRM]
        for order, when in zip(chosen, self.times("confirmations", len(chosen)), strict=True):
            order.row["date_order"] = when  # Odoo sets the order date on confirmation
            self.set_state(order, "sale", when)
            self.world.activity["confirmed"] += 1

    def quotations(self) -> None:
        world, rng = self.world, self.rng
        season = 1.2 if self.date.weekday() < 5 else 0.5
        mean_lines = LINES_PER_SCALE * world.scale / REFERENCE_DAYS * season
        count = _count(rng, mean_lines / _MEAN_LINES * rng.uniform(0.9, 1.1))
        customers = list(world.customers.values())
        weights = list(itertools.accumulate(customer.weight for customer in customers))
        for when in self.times("quotations", count):
            customer = rng.choices(customers, cum_weights=weights)[0]
            self.new_order(customer, when)

    def pick_products(self, count: int) -> list[Product]:
        world, picked, seen = self.world, [], set()
        for _ in range(count * 3):
            product = self.rng.choices(world.product_list, cum_weights=world.product_weights)[0]
            if product.id not in seen:
                seen.add(product.id)
                picked.append(product)
                if len(picked) == count:
                    break
        return picked

    def quantity(self, product: Product) -> float:
        if product.service:
            return float(self.rng.choice((1, 2, 4, 8, 16, 24, 40)))
        return float(max(1, round(self.rng.lognormvariate(1.0, 0.9))))

    def new_order(self, customer: Customer, when: datetime) -> None:
        world, rng = self.world, self.rng
        count = rng.choices(_LINE_COUNTS, weights=_LINE_COUNT_WEIGHTS)[0]
        products = self.pick_products(count)
        uid = customer.row["user_id"]
        row = self.new("sale_order", {
            "company_id": COMPANY_ID,
            "partner_id": customer.row["id"], "state": "draft", "locked": False,
            "client_order_ref": f"PO-{rng.randint(10000, 99999)}" if rng.random() < 0.2 else None,
            "date_order": when, "require_signature": True, "require_payment": False,
            "prepayment_percent": 1.0, "validity_date": self.date + timedelta(days=30),
            "partner_invoice_id": customer.row["id"], "partner_shipping_id": customer.row["id"],
            "payment_term_id": customer.term_id, "currency_id": customer.currency_id,
            "currency_rate": world.rates[customer.currency_id], "user_id": uid,
            "invoice_status": "no"}, when, uid)
        row["name"] = f"S{row['id']:05d}"
        order = Order(row, {})
        world.orders[row["id"]] = order
        sequence = 10
        if count >= 3 and rng.random() < 0.1:
            self.new_line(order, {"display_type": "line_section", "name": "Main items",
                                  "sequence": sequence, "product_uom_qty": 0.0,
                                  "price_unit": 0.0}, when)
            sequence += 10
        for product in products:
            self.add_line(order, product, sequence, when)
            sequence += 10
        _order_totals(order)
        world.activity["quotations"] += 1

    def add_line(self, order: Order, product: Product, sequence: int, when: datetime) -> None:
        rng = self.rng
        price = _r2(product.template["list_price"] * order.row["currency_rate"])
        discount = rng.choice(_DISCOUNTS) if rng.random() < 0.2 else 0.0
        line = self.new_line(order, {
            "sequence": sequence, "product_id": product.id, "name": product.label,
            "product_uom_qty": self.quantity(product), "product_uom": product.uom_id,
            "price_unit": price, "discount": discount}, when)
        _line_invoicing(line, product.policy)
        self.sink.added("account_tax_sale_order_line_rel", _line_tax(line))
        self.world.activity["lines"] += 1

    def new_line(self, order: Order, values: dict[str, Any], when: datetime) -> Row:
        row = order.row
        line = self.new("sale_order_line", {
            "order_id": row["id"], "company_id": COMPANY_ID, "currency_id": row["currency_id"],
            "order_partner_id": row["partner_id"], "salesman_id": row["user_id"],
            "state": row["state"], "is_downpayment": False, "is_expense": False,
            "customer_lead": 0.0, "discount": 0.0, "qty_delivered_method": "manual",
            "qty_delivered": 0.0, "qty_invoiced": 0.0, "qty_to_invoice": 0.0,
            "invoice_status": "no", "untaxed_amount_invoiced": 0.0,
            "untaxed_amount_to_invoice": 0.0, **values}, when, row["user_id"])
        _price_line(line)
        order.lines[line["id"]] = line
        return line

    # ------------------------------------------------------------------ fulfilment

    def deliveries(self) -> None:
        chosen = [
            order for order in self.world.orders.values()
            if order.row["state"] == "sale"
            and _undelivered(order) and self.rng.random() < P_DELIVER
        ]
        for order, when in zip(chosen, self.times("deliveries", len(chosen)), strict=True):
            for line in order.lines.values():
                remaining = line["product_uom_qty"] - line["qty_delivered"]
                if remaining <= 0:
                    continue
                if remaining >= 2 and self.rng.random() < P_PARTIAL_DELIVERY:
                    remaining = float(max(1, math.floor(remaining * self.rng.uniform(0.3, 0.8))))
                line["qty_delivered"] = _r2(line["qty_delivered"] + remaining)
                _line_invoicing(line, self.world.products[line["product_id"]].policy)
                self.touch("sale_order_line", line, when, ADMIN_UID)
            status = _order_invoice_status(order)
            if status != order.row["invoice_status"]:
                order.row["invoice_status"] = status
                self.touch("sale_order", order.row, when, ADMIN_UID)
            self.world.activity["deliveries"] += 1

    def invoicing(self) -> None:
        chosen = [order for order in self.world.orders.values()
                  if order.row["invoice_status"] == "to invoice" and self.rng.random() < P_INVOICE]
        for order, when in zip(chosen, self.times("invoices", len(chosen)), strict=True):
            self.invoice(order, when)

    def invoice(self, order: Order, when: datetime) -> None:
        row = order.row
        rate = self.world.rates[row["currency_id"]]
        items: list[_Item] = []
        for line in order.lines.values():
            if line["display_type"] or line["qty_to_invoice"] <= 0:
                continue
            quantity = line["qty_to_invoice"]
            subtotal = _r2(quantity * line["price_unit"] * (1 - line["discount"] / 100))
            items.append(_Item(
                order_line_id=line["id"], product_id=line["product_id"],
                uom_id=line["product_uom"], label=line["name"], quantity=quantity,
                price_unit=line["price_unit"], discount=line["discount"], subtotal=subtotal,
                tax=_r2(subtotal * TAX_RATE), company_subtotal=_r2(subtotal / rate)))
            line["qty_invoiced"] = _r2(line["qty_invoiced"] + quantity)
            line["untaxed_amount_invoiced"] = _r2(line["untaxed_amount_invoiced"] + subtotal)
            _line_invoicing(line, self.world.products[line["product_id"]].policy)
            self.touch("sale_order_line", line, when, ADMIN_UID)
        if not items:
            return
        tax = _r2(sum(item.tax for item in items))
        term_days = PAYMENT_TERM_DAYS[row["payment_term_id"]]
        invoice = self.customer_move(
            "out_invoice", items, order=row, when=when, company_tax=_r2(tax / rate),
            due=self.date + timedelta(days=term_days), term_id=row["payment_term_id"])
        self.world.invoices[invoice.row["id"]] = invoice
        row["invoice_status"] = _order_invoice_status(order)
        self.touch("sale_order", row, when, ADMIN_UID)
        self.world.activity["invoices"] += 1

    def customer_move(self, move_type: str, items: list[_Item], *, order: Row, when: datetime,
                      company_tax: float, due: date, term_id: int | None,
                      reversed_entry: Row | None = None) -> Invoice:
        """A posted `out_invoice` or `out_refund`: product lines, a tax line, a receivable line."""
        world = self.world
        refund = move_type == "out_refund"
        sign = -1.0 if refund else 1.0  # invoices credit income; credit notes debit it
        prefix = f"{'RINV' if refund else 'INV'}/{self.date.year}/"
        number = world.next_number(prefix)
        move_id = world.next_id("account_move")
        name = f"{prefix}{number:05d}"
        partner = world.customers[order["partner_invoice_id"]].row
        common = {
            "move_id": move_id, "journal_id": SALE_JOURNAL, "company_id": COMPANY_ID,
            "company_currency_id": EUR, "move_name": name, "parent_state": "posted",
            "date": self.date, "currency_id": order["currency_id"], "partner_id": partner["id"],
            "reconciled": False, "amount_residual": 0.0, "amount_residual_currency": 0.0,
            "is_downpayment": False, "tax_base_amount": 0.0, **_created(when, ADMIN_UID),
        }
        lines: list[Row] = []
        links: dict[int, int] = {}
        for position, item in enumerate(items):
            balance = _r2(-sign * item.company_subtotal)
            line = self.move_line(common, {
                "sequence": 10 + position, "account_id": INCOME_ACCOUNT, "name": item.label,
                "balance": balance, "amount_currency": _r2(-sign * item.subtotal),
                "product_id": item.product_id, "product_uom_id": item.uom_id,
                "quantity": item.quantity, "price_unit": item.price_unit,
                "discount": item.discount, "price_subtotal": item.subtotal,
                "price_total": _r2(item.subtotal + item.tax), "display_type": "product"})
            lines.append(line)
            links[line["id"]] = item.order_line_id
            self.link("sale_order_line_invoice_rel", {"invoice_line_id": line["id"],
                                                      "order_line_id": item.order_line_id})
            self.link("account_move_line_account_tax_rel", {"account_move_line_id": line["id"],
                                                            "account_tax_id": TAX_ID})
        untaxed = _r2(sum(item.subtotal for item in items))
        tax = _r2(sum(item.tax for item in items))
        total = _r2(untaxed + tax)
        company_untaxed = _r2(sum(item.company_subtotal for item in items))
        lines.append(self.move_line(common, {
            "sequence": 1000, "account_id": TAX_ACCOUNT, "name": "21%",
            "balance": _r2(-sign * company_tax), "amount_currency": _r2(-sign * tax),
            "tax_line_id": TAX_ID, "tax_base_amount": company_untaxed, "display_type": "tax"}))
        company_total = _r2(company_untaxed + company_tax)
        term = self.move_line(common, {
            "sequence": 1001, "account_id": RECEIVABLE_ACCOUNT, "name": name,
            "balance": _r2(sign * company_total), "amount_currency": _r2(sign * total),
            "amount_residual": _r2(sign * company_total),
            "amount_residual_currency": _r2(sign * total),
            "display_type": "payment_term", "date_maturity": due})
        move = _row("account_move", {
            "id": move_id, "name": name, "date": self.date, "state": "posted",
            "move_type": move_type, "is_storno": False, "journal_id": SALE_JOURNAL,
            "company_id": COMPANY_ID, "partner_id": partner["id"],
            "commercial_partner_id": partner["commercial_partner_id"],
            "currency_id": order["currency_id"], "payment_reference": name,
            "invoice_date": self.date, "invoice_date_due": due, "invoice_origin": order["name"],
            "invoice_payment_term_id": term_id, "invoice_user_id": order["user_id"],
            "amount_untaxed": untaxed, "amount_tax": tax, "amount_total": total,
            "amount_residual": total, "amount_untaxed_signed": _r2(sign * company_untaxed),
            "amount_tax_signed": _r2(sign * company_tax),
            "amount_total_signed": _r2(sign * company_total),
            "amount_total_in_currency_signed": _r2(sign * total),
            "amount_residual_signed": _r2(sign * company_total), "payment_state": "not_paid",
            "invoice_partner_display_name": partner["name"], "sequence_prefix": prefix,
            "sequence_number": number, "posted_before": True, "to_check": False, "checked": True,
            "auto_post": "no", **_created(when, ADMIN_UID)})
        if reversed_entry is not None:
            move["reversed_entry_id"] = reversed_entry["id"]
            move["ref"] = f"Reversal of: {reversed_entry['name']}"
        self.sink.added("account_move", move)
        for line in lines:
            self.sink.released("account_move_line", line)
        return Invoice(row=move, term=term, order_id=None if refund else order["id"],
                       lines=lines, links=links)

    def move_line(self, common: dict[str, Any], values: dict[str, Any]) -> Row:
        line = _row("account_move_line", common)
        line.update(values)
        if len(line) != len(_blank("account_move_line")[0]):
            _row("account_move_line", {**common, **values})  # raises, naming the column
        balance = line["balance"]
        line["id"] = self.world.next_id("account_move_line")
        line["debit"] = balance if balance > 0 else 0.0
        line["credit"] = _r2(-balance) if balance < 0 else 0.0
        self.sink.added("account_move_line", line)
        return line

    # ------------------------------------------------------------------ accounting

    def payments(self) -> None:
        chosen: list[Invoice] = []
        for invoice in self.world.invoices.values():
            if invoice.row["invoice_date"] >= self.date:
                continue
            payer = self.world.customers[invoice.row["partner_id"]].payer
            days_left = (invoice.row["invoice_date_due"] - self.date).days
            if self.rng.random() < _payment_chance(payer, days_left):
                chosen.append(invoice)
        for invoice, when in zip(chosen, self.times("payments", len(chosen)), strict=True):
            self.pay(invoice, when)

    def pay(self, invoice: Invoice, when: datetime) -> None:
        world, move = self.world, invoice.row
        residual = move["amount_residual"]
        amount = residual
        if self.rng.random() < P_PARTIAL_PAYMENT:
            amount = _r2(residual * self.rng.uniform(0.3, 0.7))
        company_amount = _r2(amount / world.rates[move["currency_id"]])
        prefix = f"BNK1/{self.date.year}/"
        number = world.next_number(prefix)
        name = f"{prefix}{number:05d}"
        payment = self.final("account_move", {
            "id": world.next_id("account_move"), "name": name, "ref": move["name"],
            "date": self.date, "state": "posted", "move_type": "entry", "is_storno": False,
            "journal_id": BANK_JOURNAL, "company_id": COMPANY_ID, "partner_id": move["partner_id"],
            "commercial_partner_id": move["commercial_partner_id"],
            "currency_id": move["currency_id"], "amount_untaxed": 0.0, "amount_tax": 0.0,
            "amount_total": amount, "amount_residual": 0.0, "amount_untaxed_signed": 0.0,
            "amount_tax_signed": 0.0, "amount_total_signed": company_amount,
            "amount_total_in_currency_signed": amount, "amount_residual_signed": 0.0,
            "payment_state": "not_paid", "sequence_prefix": prefix, "sequence_number": number,
            "posted_before": True, "to_check": False, "checked": True, "auto_post": "no",
            **_created(when, ADMIN_UID)})
        common = {
            "move_id": payment["id"], "journal_id": BANK_JOURNAL, "company_id": COMPANY_ID,
            "company_currency_id": EUR, "move_name": name, "parent_state": "posted",
            "date": self.date, "ref": move["name"], "currency_id": move["currency_id"],
            "partner_id": move["partner_id"], "amount_residual": 0.0,
            "amount_residual_currency": 0.0, "tax_base_amount": 0.0, "is_downpayment": False,
            "date_maturity": self.date, **_created(when, ADMIN_UID),
        }
        for sequence, account, kind, sign in ((10, BANK_ACCOUNT, "product", 1.0),
                                              (20, RECEIVABLE_ACCOUNT, "payment_term", -1.0)):
            line = self.move_line(common, {
                "sequence": sequence, "account_id": account, "name": f"Payment of {move['name']}",
                "balance": _r2(sign * company_amount), "amount_currency": _r2(sign * amount),
                "display_type": kind, "reconciled": kind == "payment_term",
                "matching_number": move["name"] if kind == "payment_term" else None})
            self.sink.released("account_move_line", line)
        residual = _r2(residual - amount)
        ratio = move["amount_total_signed"] / move["amount_total"] if move["amount_total"] else 1.0
        self.settle(invoice, residual, _r2(residual * ratio),
                    "paid" if residual <= 0 else "partial", when)
        world.activity["partial_payments" if residual > 0 else "payments"] += 1

    def settle(self, invoice: Invoice, residual: float, company_residual: float, state: str,
               when: datetime) -> None:
        """Record what is left to pay on an invoice and on its receivable line."""
        move, term = invoice.row, invoice.term
        move["amount_residual"] = max(residual, 0.0)
        move["amount_residual_signed"] = max(company_residual, 0.0)
        move["payment_state"] = state
        term["amount_residual"] = move["amount_residual_signed"]
        term["amount_residual_currency"] = move["amount_residual"]
        term["reconciled"] = move["amount_residual"] == 0
        term["matching_number"] = move["name"]
        self.touch("account_move", move, when, ADMIN_UID)
        self.touch("account_move_line", term, when, ADMIN_UID)

    def refunds(self) -> None:
        cutoff = self.date - timedelta(days=REFUND_WINDOW)
        chosen = [invoice for invoice in self.world.invoices.values()
                  if invoice.lines and invoice.row["payment_state"] == "not_paid"
                  and cutoff <= invoice.row["invoice_date"] < self.date
                  and self.rng.random() < P_REFUND]
        for invoice, when in zip(chosen, self.times("refunds", len(chosen)), strict=True):
            self.refund(invoice, when)

    def refund(self, invoice: Invoice, when: datetime) -> None:
        """A full credit note: the invoice is 'reversed', its order lines are to invoice again."""
        assert invoice.order_id is not None
        order = self.world.orders[invoice.order_id]
        items = [
            _Item(order_line_id=invoice.links[line["id"]], product_id=line["product_id"],
                  uom_id=line["product_uom_id"], label=line["name"], quantity=line["quantity"],
                  price_unit=line["price_unit"], discount=line["discount"],
                  subtotal=line["price_subtotal"],
                  tax=_r2(line["price_total"] - line["price_subtotal"]),
                  company_subtotal=_r2(-line["balance"]))
            for line in invoice.lines if line["display_type"] == "product"
        ]
        company_tax = next(_r2(-line["balance"]) for line in invoice.lines
                           if line["display_type"] == "tax")
        credit = self.customer_move(
            "out_refund", items, order=order.row, when=when, company_tax=company_tax,
            due=self.date, term_id=None, reversed_entry=invoice.row)
        credit.row["amount_residual"] = 0.0
        credit.row["amount_residual_signed"] = 0.0
        credit.row["payment_state"] = "paid"
        credit.term.update(amount_residual=0.0, amount_residual_currency=0.0, reconciled=True,
                           matching_number=invoice.row["name"])
        self.sink.released("account_move", credit.row)
        self.sink.released("account_move_line", credit.term)
        self.settle(invoice, 0.0, 0.0, "reversed", when)
        for item in items:
            line = order.lines[item.order_line_id]
            line["qty_invoiced"] = _r2(line["qty_invoiced"] - item.quantity)
            line["untaxed_amount_invoiced"] = _r2(line["untaxed_amount_invoiced"] - item.subtotal)
            _line_invoicing(line, self.world.products[line["product_id"]].policy)
            self.touch("sale_order_line", line, when, ADMIN_UID)
        order.row["invoice_status"] = _order_invoice_status(order)
        self.touch("sale_order", order.row, when, ADMIN_UID)
        self.world.activity["refunds"] += 1

    # ------------------------------------------------------------------ end of day

    def end(self) -> None:
        world = self.world
        world.day += 1
        config = world.config[DAY_KEY]
        config["value"] = str(world.day)
        self.touch("ir_config_parameter", config, self.midnight + timedelta(hours=23, minutes=59),
                   SYSTEM_UID)
        _prune(world, self.sink)


def _payment_chance(payer: str, days_left: int) -> float:
    """Daily chance that an open invoice is paid, by customer habit and days to the due date."""
    if payer == "prompt":
        return 0.04 if days_left > 3 else 0.35 if days_left >= -3 else 0.25
    if payer == "late":
        return 0.01 if days_left > 3 else 0.08 if days_left >= -3 else 0.15
    return 0.0 if days_left > 3 else 0.02 if days_left >= -3 else 0.03


def _prune(world: World, sink: _Sink) -> None:
    """Let go of what no later day can change: the same cut `_load_world` makes in SQL."""
    cutoff = world.current_date - timedelta(days=REFUND_WINDOW)
    for invoice_id, invoice in list(world.invoices.items()):
        state = invoice.row["payment_state"]
        if state not in ("not_paid", "partial"):
            sink.released("account_move", invoice.row)
            sink.released("account_move_line", invoice.term)
            del world.invoices[invoice_id]
        elif invoice.lines and not (state == "not_paid"
                                    and invoice.row["invoice_date"] >= cutoff):
            invoice.lines, invoice.links = [], {}
    refundable = {invoice.order_id for invoice in world.invoices.values()
                  if invoice.lines and invoice.order_id is not None}
    for order_id, order in list(world.orders.items()):
        if not _order_open(order, refundable):
            for table, row in _order_rows(order):
                sink.released(table, row)
            del world.orders[order_id]


# ---------------------------------------------------------------------------------- loading


def _load_world(conn: psycopg.Connection[Any], seed: int | None) -> tuple[World, int]:
    """The working set at the end of the last simulated day, read back from the database."""
    queries = _queries()
    cur = conn.cursor(row_factory=dict_row)
    marker = cur.execute(queries["generator_marker"], {}).fetchone()
    config: dict[str, Row] = {}
    if marker is not None and marker["has_config"]:
        config = {row["key"]: row for row in cur.execute(queries["config"], {}).fetchall()}
    if DAY_KEY not in config:
        raise GeneratorError(
            "this database was not made by the generator: ir_config_parameter has no "
            f"{DAY_KEY!r}; run generate first"
        )
    if config[VERSION_KEY]["value"] != GENERATOR_VERSION:
        raise GeneratorError(
            f"this database was made by generator version {config[VERSION_KEY]['value']}, "
            f"this is version {GENERATOR_VERSION}; run generate again"
        )
    data_seed = int(config[SEED_KEY]["value"])
    odoo_version = str(config.get(ODOO_VERSION_KEY, {}).get("value", DEFAULT_ODOO_VERSION))
    world = World(
        seed=data_seed, scale=float(config[SCALE_KEY]["value"]),
        start=date.fromisoformat(config[START_KEY]["value"]), day=int(config[DAY_KEY]["value"]),
        ids=_last_ids(cur), numbers={r["sequence_prefix"]: r["last_number"]
                                     for r in cur.execute(queries["move_sequences"], {})},
        rates={**INITIAL_RATES, **{r["currency_id"]: r["rate"]
                            for r in cur.execute(queries["last_rates"], {})}},
        config=config, users=[r["id"] for r in cur.execute(queries["sales_users"], {})],
        customers={r["id"]: _customer(data_seed, r)
                   for r in cur.execute(queries["customers"], {})},
        templates={r["id"]: r for r in cur.execute(queries["templates"], {})},
        products={}, odoo_version=_check_version(odoo_version),
    )
    for variant in cur.execute(queries["products"], {}).fetchall():
        template = world.templates[variant["product_tmpl_id"]]
        world.products[variant["id"]] = _product(data_seed, template, variant)
    world.index_products()
    _load_open_documents(cur, world)
    return world, data_seed if seed is None else seed


def _last_ids(cur: psycopg.Cursor[Any]) -> dict[str, int]:
    ids = {name: 0 for name, table in schema_tables().items() if table.key == ("id",)}
    for row in cur.execute(_queries()["sequences"], {}):
        table = row["sequencename"].removesuffix("_id_seq")
        if table in ids:
            ids[table] = row["last_value"]
    return ids


def _load_open_documents(cur: psycopg.Cursor[Any], world: World) -> None:
    queries = _queries()
    cutoff = world.current_date - timedelta(days=REFUND_WINDOW)
    for row in cur.execute(queries["open_orders"], {"refund_cutoff": cutoff}).fetchall():
        world.orders[row["id"]] = Order(row, {})
    for line in cur.execute(queries["order_lines"], {"ids": list(world.orders)}):
        world.orders[line["order_id"]].lines[line["id"]] = line
    order_ids = {order.row["name"]: order_id for order_id, order in world.orders.items()}
    invoices = cur.execute(queries["open_invoices"], {}).fetchall()
    refundable = [row["id"] for row in invoices
                  if row["payment_state"] == "not_paid" and row["invoice_date"] >= cutoff]
    lines: dict[int, list[Row]] = {row["id"]: [] for row in invoices}
    for line in cur.execute(queries["invoice_lines"],
                            {"ids": list(lines), "refundable": refundable}).fetchall():
        lines[line["move_id"]].append(line)
    links = {r["invoice_line_id"]: r["order_line_id"]
             for r in cur.execute(queries["invoice_links"], {"ids": [
                 line["id"] for move in lines.values() for line in move
                 if line["display_type"] == "product"]})}
    for row in invoices:
        own = lines[row["id"]]
        term = next(line for line in own if line["display_type"] == "payment_term")
        rest = [line for line in own if line is not term]
        world.invoices[row["id"]] = Invoice(
            row=row, term=term, order_id=order_ids.get(row["invoice_origin"]), lines=rest,
            links={line["id"]: links[line["id"]] for line in rest
                   if line["display_type"] == "product"})


# ---------------------------------------------------------------------------------- public API


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while millions of (acyclic) row dicts are made: the
    collector would walk them all again and again for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _validate(*, scale: float, days: int) -> None:
    if not (isinstance(scale, int | float) and math.isfinite(scale) and 0 < scale <= 100):
        raise GeneratorError(f"scale must be a number in (0, 100], got {scale!r}")
    if not (isinstance(days, int) and 0 <= days <= 3660):
        raise GeneratorError(f"days must be an integer in [0, 3660], got {days!r}")


def _refuse_foreign(conn: psycopg.Connection[Any], database: str) -> None:
    """Never drop the tables of a real Odoo database: only ones this generator made."""
    queries = _queries()
    marker = conn.execute(queries["generator_marker"], {}).fetchone()
    assert marker is not None
    has_odoo, _, made_by_generator = marker
    if has_odoo and not made_by_generator:
        raise GeneratorError(
            f"refusing to overwrite database {database!r}: it has Odoo tables that the "
            "generator did not create (ir_config_parameter lacks its mark)"
        )


def _recreate_tables(conn: psycopg.Connection[Any], odoo_version: str) -> None:
    names = sql.SQL(", ").join(sql.Identifier(name) for name in schema_tables(odoo_version))
    conn.execute(sql.SQL("drop table if exists {} cascade").format(names))
    conn.execute(_schema_parts(odoo_version)[0])


def _set_sequences(conn: psycopg.Connection[Any], ids: dict[str, int]) -> None:
    for table, last in ids.items():
        conn.execute(_queries()["set_sequence"], {"table": table, "last": last})


def _row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in schema_tables():
        found = conn.execute(
            sql.SQL("select count(*) from {}").format(sql.Identifier(name))
        ).fetchone()
        counts[name] = int(found[0]) if found else 0
    return counts


DAY_ENDS = clock_time(_WINDOWS["refunds"][1], 0)
"""When a simulated day's activity is over (UTC): the end of its last window."""


def default_end(now: datetime | None = None) -> date:
    """The last simulated day when neither `start` nor `end` is given: the newest day whose
    activity is over by `now` (UTC; default: the wall clock), so that the generated activity
    ends at most a day before now and never runs ahead of it."""
    moment = now if now is not None else datetime.now(UTC)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    today = moment.date()
    return today if moment.time() >= DAY_ENDS else today - timedelta(days=1)


def simulated_days(days: int, *, start: date | None = None, end: date | None = None,
                   now: datetime | None = None) -> date:
    """The first simulated day of `days` days: from `start`, or up to `end` (its last day),
    or, given neither, up to `default_end(now)`. Deterministic for a given `start` or `end`."""
    if start is not None and end is not None:
        raise GeneratorError("give start or end, not both")
    if start is not None:
        return start
    last = end if end is not None else default_end(now)
    return last - timedelta(days=max(days - 1, 0))


def generate(dsn: str, *, scale: float = 1.0, seed: int = 42, days: int = 30,
             start: date | None = None, end: date | None = None,
             odoo_version: str = DEFAULT_ODOO_VERSION,
             create_database: bool = True) -> GenerateReport:
    """(Re)build the Odoo source database at `dsn` and simulate `days` days from `start`, or
    up to `end`, or (neither given) up to the last day whose activity is over by now
    (`default_end`): the same seed, scale, days and start or end give the same database.

    About `100_000 * scale` sale order lines per 30 days. The database is created when missing
    (`create_database`); the generator's tables are dropped and recreated, but a database with
    Odoo tables it did not create is refused. `odoo_version`: the shape, 17.0 or 18.0 (the
    same activity either way).
    """
    _validate(scale=scale, days=days)
    _check_version(odoo_version)
    start = simulated_days(days, start=start, end=end)
    tables = schema_tables(odoo_version)
    began = time.monotonic()
    database = str(conninfo_to_dict(dsn).get("dbname") or "")
    if create_database and database:
        # Through the server's `postgres` database; if that is out of reach, the connection
        # below reports the real problem.
        with contextlib.suppress(psycopg.OperationalError):
            ensure_database(_with_dbname(dsn, "postgres"), database)
    with _connect(dsn) as conn:
        _refuse_foreign(conn, database)
        _recreate_tables(conn, odoo_version)
        conn.commit()
        with tempfile.TemporaryDirectory(prefix="odoo-generator-") as directory:
            sink = _BulkSink(conn, Path(directory), tables)
            try:
                with _collector_paused():
                    world = _Setup(seed, float(scale), start, sink, odoo_version).build()
                    for _ in range(days):
                        _Day(world, sink, seed).run()
                    for table, row in world.held():
                        sink.released(table, row)
                sink.load(dsn)
            finally:
                sink.close()
        _set_sequences(conn, world.ids)
        conn.execute(_schema_parts(odoo_version)[1])
        conn.commit()
        rows = _row_counts(conn)
    last = start + timedelta(days=max(days - 1, 0))
    return GenerateReport(
        database=database, seed=seed, scale=float(scale), first_day=start, last_day=last,
        rows=rows, inserted={name: count for name, count in rows.items() if count},
        updated={}, deleted={},
        activity=dict(sorted(world.activity.items())), seconds=time.monotonic() - began,
        odoo_version=odoo_version,
    )


def advance(dsn: str, *, days: int = 1, seed: int | None = None) -> GenerateReport:
    """Simulate `days` more days on a generated database, in one transaction.

    The days follow the last simulated one and use the generation's seed unless `seed` is
    given: `generate(days=1)` then `advance(days=2)` gives the database `generate(days=3)` does.
    """
    _validate(scale=1.0, days=days)
    began = time.monotonic()
    with _connect(dsn) as conn:
        world, day_seed = _load_world(conn, seed)
        first = world.current_date
        sink = _DbSink(schema_tables(world.odoo_version))
        with _collector_paused():
            for _ in range(days):
                _Day(world, sink, day_seed).run()
        sink.flush(conn)
        _set_sequences(conn, world.ids)
        conn.commit()
        rows = _row_counts(conn)
    counts = {
        kind: {name: len(changes) for name, changes in getattr(sink, kind).items() if changes}
        for kind in ("inserted", "updated", "deleted")
    }
    return GenerateReport(
        database=str(conninfo_to_dict(dsn).get("dbname") or ""), seed=day_seed,
        scale=world.scale, first_day=first, last_day=first + timedelta(days=max(days - 1, 0)),
        rows=rows, inserted=counts["inserted"], updated=counts["updated"],
        deleted=counts["deleted"], activity=dict(sorted(world.activity.items())),
        seconds=time.monotonic() - began, odoo_version=world.odoo_version,
    )


DIGEST_VERSION = "odoo-source-digest/1"


def source_digest(dsn: str) -> str:
    """`blake3:<hex>` over every generator table's rows, as COPY text ordered by primary key.

    Session settings that change the text of values (DateStyle, extra_float_digits) are fixed,
    so the digest depends on the content only.
    """
    hasher = blake3.blake3(DIGEST_VERSION.encode())
    with psycopg.connect(dsn) as conn:
        conn.execute("set datestyle = 'ISO, YMD'")
        conn.execute("set extra_float_digits = 1")
        conn.execute("set intervalstyle = 'postgres'")
        found = conn.execute("select value from ir_config_parameter where key = %s",
                             [ODOO_VERSION_KEY]).fetchone()
        version = str(found[0]) if found else DEFAULT_ODOO_VERSION
        for name, table in schema_tables(version).items():
            hasher.update(f"\ntable {name} ({', '.join(table.columns)})\n".encode())
            statement = sql.SQL("copy (select {} from {} order by {}) to stdout").format(
                sql.SQL(", ").join(map(sql.Identifier, table.columns)), sql.Identifier(name),
                sql.SQL(", ").join(map(sql.Identifier, table.key)),
            )
            with conn.cursor().copy(statement) as copy:
                for chunk in copy:
                    hasher.update(chunk)
    return f"blake3:{hasher.hexdigest()}"
