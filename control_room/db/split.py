"""Split a SQL file into statements exactly as the Supabase CLI does.

A port of the finite state machine in supabase/cli `pkg/parser/state.go` and `token.go`
(`SplitAndTrim`): a `;` ends a statement unless it sits inside a quoted string or
identifier, a dollar-quoted body, a `--` or (nested) `/* */` comment, parentheses or a
`BEGIN ATOMIC ... END` body. Each statement is kept as written (comments included), with
trailing semicolons and surrounding whitespace removed; empty ones are dropped.

The migration runner executes each file as a whole; the split is only what it records in
`supabase_migrations.schema_migrations.statements`, so that this runner and `supabase db
push` agree about a database.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

_BEGIN_ATOMIC = "ATOMIC"
_END_ATOMIC = "END"


class _State(abc.ABC):
    @abc.abstractmethod
    def next(self, ch: str, data: str, start: int, end: int) -> _State | None:
        """Consume `ch` (= data[end - 1]); `data[start:end]` is the token so far.

        Returns the next state, or None to emit the token.
        """


class _Ready(_State):
    def next(self, ch: str, data: str, start: int, end: int) -> _State | None:
        if ch == "$":
            return _Tag(offset=end - 1)
        if ch in ("'", '"'):
            return _Quote(delimiter=ch)
        if ch == "-":
            return _Comment()
        if ch == "/":
            return _Block()
        if ch == "\\":
            return _Escape()
        if ch == ";":
            return None
        if ch == "(":
            return _Atomic(prev=self, delimiter=")")
        if ch in ("c", "C"):
            offset = end - len(_BEGIN_ATOMIC)
            if (
                offset > start
                and data[offset:end].upper() == _BEGIN_ATOMIC
                and data[offset - 1].isspace()
            ):
                return _Atomic(prev=self, delimiter=_END_ATOMIC)
        return self


class _Comment(_State):
    def next(self, ch: str, data: str, start: int, end: int) -> _State | None:
        if ch == "-":
            return _Dollar(delimiter="\n")
        return _Ready().next(ch, data, start, end)


@dataclass
class _Block(_State):
    depth: int = 0

    def next(self, ch: str, data: str, start: int, end: int) -> _State | None:
        window = data[max(start, end - 2) : end]
        if window == "/*":
            self.depth += 1
            return self
        if self.depth == 0:
            return _Ready().next(ch, data, start, end)
        if window == "*/":
            self.depth -= 1
            if self.depth == 0:
                return _Ready()
        return self


@dataclass
class _Quote(_State):
    delimiter: str
    escape: bool = False

    def next(self, ch: str, data: str, start: int, end: int) -> _State | None:
        if self.escape:
            if ch == self.delimiter:
                self.escape = False
                return self
            return _Ready().next(ch, data, start, end)
        if ch == self.delimiter:
            self.escape = True
        return self


@dataclass
class _Dollar(_State):
    delimiter: str

    def next(self, ch: str, data: str, start: int, end: int) -> _State | None:
        if data[max(start, end - len(self.delimiter)) : end] == self.delimiter:
            return _Ready()
        return self


@dataclass
class _Tag(_State):
    offset: int

    def next(self, ch: str, data: str, start: int, end: int) -> _State | None:
        if ch == "$":
            return _Dollar(delimiter=data[self.offset : end])
        if ch.isalpha() or ch.isdigit() or ch == "_":
            return self
        return _Ready().next(ch, data, start, end)


class _Escape(_State):
    def next(self, ch: str, data: str, start: int, end: int) -> _State | None:
        return _Ready()


@dataclass
class _Atomic(_State):
    prev: _State
    delimiter: str = field(default=")")

    def next(self, ch: str, data: str, start: int, end: int) -> _State | None:
        current = self.prev.next(ch, data, start, end)
        if current is not None:
            self.prev = current
        if isinstance(self.prev, _Ready):
            window = data[max(start, end - len(self.delimiter)) : end]
            if window.upper() == self.delimiter.upper():
                return _Ready()
        return self


def split(sql: str) -> list[str]:
    """Split into raw statements (each with its `;`), like the CLI's `parser.Split`."""
    tokens: list[str] = []
    state: _State = _Ready()
    start = 0
    position = 0
    length = len(sql)
    while position < length:
        ch = sql[position]
        position += 1
        # Like the CLI's, the state machine looks only inside the current token.
        following = state.next(ch, sql, start, position)
        if following is None:
            tokens.append(sql[start:position])
            start = position
            state = _Ready()
        else:
            state = following
    if start < length:
        tokens.append(sql[start:])
    return tokens


def split_and_trim(sql: str) -> list[str]:
    """The CLI's `SplitAndTrim`: drop trailing `;`, trim whitespace, skip empty statements."""
    statements = []
    for token in split(sql):
        trimmed = token.rstrip(";").strip()
        if trimmed:
            statements.append(trimmed)
    return statements


def normalize(statement: str) -> str:
    """Collapse whitespace runs, for comparing statements regardless of layout."""
    return " ".join(statement.split())
