"""`control-room ...` command lines in shell text (workflow `run:` blocks, docs' code blocks),
resolved against the CLI's command tree (built once): the command path exists, every option is
one of that command's, an option that takes a value gets one, and the positional arguments fit.
Nothing is run."""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from typing import Any

import typer.main

from control_room.cli import app

OPERATOR = re.compile(r"^[();<>|&]+$")
ARRAY_ADD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\+?=$")


@functools.cache
def root() -> Any:
    return typer.main.get_command(app)


@dataclass(frozen=True)
class Call:
    where: str
    argv: tuple[str, ...]  # the words after `control-room`
    path: tuple[str, ...]  # the command path (`runs create`)
    options: frozenset[str]  # the options given, as written (`--job`)


def _words(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def _simple_commands(words: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for i, word in enumerate(words):
        if OPERATOR.match(word):
            out.append([])
        elif word.isdigit() and i + 1 < len(words) and words[i + 1].startswith((">", "<")):
            continue  # the fd of a redirection (2>&1)
        else:
            out[-1].append(word)
    return [c for c in out if c]


def _arrays(lines: list[list[str]]) -> dict[str, list[str]]:
    """`NAME+=(a b)` / `NAME=(a b)` in a script: every element added to NAME anywhere."""
    arrays: dict[str, list[str]] = {}
    for words in lines:
        for i, word in enumerate(words[:-1]):
            match = ARRAY_ADD.match(word)
            if match and words[i + 1] == "(":
                elements = arrays.setdefault(match.group(1), [])
                for element in words[i + 2:]:
                    if OPERATOR.match(element):
                        break
                    elements.append(element)
    return arrays


def shell_calls(script: str, where: str) -> list[list[str]]:
    """The argv after each `control-room` in a shell script (continuations joined, `"${A[@]}"`
    replaced by every element the script adds to A)."""
    lines = []
    for line in script.replace("\\\n", " ").splitlines():
        try:
            lines.append(_words(line))
        except ValueError as exc:  # unbalanced quotes
            raise AssertionError(f"{where}: {line!r}: {exc}") from None
    arrays = _arrays(lines)
    calls = []
    for words in lines:
        for command in _simple_commands(words):
            for i, word in enumerate(command):
                if word.rsplit("/", 1)[-1] == "control-room":
                    argv: list[str] = []
                    for arg in command[i + 1:]:
                        array = re.fullmatch(r"\$\{(\w+)\[@\]\}", arg)
                        if array:
                            assert array.group(1) in arrays, f"{where}: {arg} is never set"
                            argv.extend(arrays[array.group(1)])
                        else:
                            argv.append(arg)
                    calls.append(argv)
                    break
    return calls


def resolve(argv: list[str], where: str) -> Call:
    """The command `control-room ARGV` names; AssertionError when it does not parse."""
    line = f"{where}: control-room {' '.join(argv)}"
    cmd = root()
    path: list[str] = []
    words = list(argv)
    while hasattr(cmd, "list_commands"):
        assert words and not words[0].startswith("-"), f"{line}: needs a command"
        name = words.pop(0)
        sub = cmd.get_command(cmd.context_class(cmd, info_name=name), name)
        assert sub is not None, f"{line}: no command {' '.join([*path, name])}"
        cmd = sub
        path.append(name)
    # the parser alone: no type conversion, no callbacks, so placeholders ($RUN_ID) pass
    ctx = cmd.context_class(cmd, info_name=" ".join(path))
    try:
        values, rest, _ = cmd.make_parser(ctx).parse_args(args=list(words))
    except Exception as exc:  # click's usage errors (typer vendors click)
        raise AssertionError(f"{line}: {exc}") from None
    # the parser fills the positional arguments; what is left over fits none
    assert not rest, f"{line}: unexpected argument(s) {rest}"
    missing = [p.name for p in cmd.params if p.param_type_name == "argument" and p.required
               and values.get(p.name) in (None, (), [])]
    assert not missing, f"{line}: missing argument(s) {missing}"
    names = {opt for p in ctx.command.get_params(ctx) for opt in (*p.opts, *p.secondary_opts)}
    given = frozenset(w.split("=", 1)[0] for w in words
                      if w.startswith("-") and w.split("=", 1)[0] in names)
    return Call(where, tuple(argv), tuple(path), given)
