"""Configuration files, for every program: the one :class:`ConfigError` and the TOML reader
(agent, hostd, controller, the TUI and the command line).

Apart from :mod:`.config` (the daemons' dataclass → TOML → flags loader), which raises the
same :class:`ConfigError`, because the operators' clients read their file here too
(:mod:`._clientconfig`: the profiles of ``limiquantix`` and ``limiquantix-tui``), and
``limiquantix exec`` does on every start, whose start-up time is measured: the loader's
dataclasses, typing and argparse would cost it more than the rest of its start-up.

A file of only comments, ``[table]`` headers and ``key = value`` lines whose values are plain
strings, booleans or integers (what ``make run`` writes for the TUI and the command line, and
what a profile holds) is read here without tomllib: importing it costs about 30 ms (typing,
re, string), as much as everything else ``limiquantix exec`` does to start, and that command
reads its config file on every run. Anything else, and anything this reader is not sure of,
is read by tomllib, which also says what is wrong with a broken file: the reader returns
exactly what tomllib returns or leaves the file to it (tests/test_clientconfig.py compares
the two on generated files).
"""

# No ``from __future__ import annotations``: limiquantix exec imports this module before its
# request leaves, and that statement loads the __future__ module (about 0.3 ms of CPU on the
# project's machine: bench/cli_bench.py); annotations naming what only type checkers
# import are strings instead.

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["ConfigError", "read_toml", "secret_flag_refused"]


class ConfigError(ValueError):
    """The configuration file, a flag or a value is invalid (the message names it and how to fix it)."""


#: What a bare key may hold (TOML: ASCII letters, digits, ``_`` and ``-``).
_BARE_KEY = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_DIGITS = frozenset("0123456789")


def _value(text: str) -> tuple[object, str] | None:
    """The value at the start of ``text`` and what follows it; None unless it is a string
    without escapes, true, false or a decimal integer."""
    if text[:1] in ('"', "'"):
        end = text.find(text[0], 1)
        if end < 0 or "\\" in text[1:end] and text[0] == '"':
            return None  # unclosed, or escapes: tomllib's
        return text[1:end], text[end + 1 :]
    token, _, rest = text.partition("#")
    token = token.rstrip(" \t")
    rest = text[len(token) :]
    if token in ("true", "false"):
        return token == "true", rest
    digits = token[1:] if token.startswith("-") else token
    if digits and _DIGITS.issuperset(digits) and (digits == "0" or not digits.startswith("0")) and len(digits) < 19:
        return int(token), rest
    return None


def _simple_toml(text: str) -> "dict[str, Any] | None":
    """``text`` as tomllib reads it, when it is simple enough (see the module's docstring);
    None otherwise (tomllib then reads it, or says what is wrong)."""
    root: dict[str, Any] = {}
    table = root
    headers: set[str] = set()
    for line in text.replace("\r\n", "\n").split("\n"):
        # Control characters (TOML allows only tab), a lone CR, a BOM, exotic spaces: tomllib's.
        if not line.replace("\t", " ").isprintable():
            return None
        line = line.strip(" \t")
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            name, closed, rest = line[1:].partition("]")
            parts = name.split(".")
            if not closed or name in headers or not all(p and _BARE_KEY.issuperset(p) for p in parts):
                return None  # [[arrays]], quoted or spaced names, a table defined twice
            rest = rest.lstrip(" \t")
            if rest and not rest.startswith("#"):
                return None
            headers.add(name)
            table = root
            for part in parts:
                table = table.setdefault(part, {})
                if not isinstance(table, dict):
                    return None  # a key that is already a value
            continue
        key, eq, after = line.partition("=")
        key = key.rstrip(" \t")
        parsed = _value(after.lstrip(" \t")) if eq else None
        if parsed is None or not key or not _BARE_KEY.issuperset(key) or key in table:
            return None  # dotted or quoted keys, other values, a key given twice
        value, rest = parsed
        rest = rest.lstrip(" \t")
        if rest and not rest.startswith("#"):
            return None
        table[key] = value
    return root


def read_toml(path: str | os.PathLike[str] | None, default: str | os.PathLike[str]) -> "dict[str, Any]":
    """The parsed file at ``path``, else at ``default`` when it exists, else ``{}``.

    An explicitly named file must exist; the default one is optional.

    Raises:
        ConfigError: the file cannot be read, is not UTF-8, or is not valid TOML (the message names it).
    """
    if path is None:
        if not os.path.exists(default):
            return {}
        path = default
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {os.fspath(path)}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{os.fspath(path)}: not UTF-8 text (byte {exc.start}): is it a TOML file?") from None
    simple = _simple_toml(text)
    if simple is not None:
        return simple
    if sys.version_info >= (3, 11):
        import tomllib  # novermin - the 3.11 branch of a version check
    else:  # pragma: no cover - Python 3.10 guests
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from exc


def secret_flag_refused(option: str, instead: str) -> str:
    """Why a secret's flag (``option``) is refused, and ``instead``, what to use.

    Every program refuses a token in argv the same way: a command line is visible to every
    user of the machine (``ps``, ``/proc``).
    """
    return f"{option} is refused: a token on the command line is visible to every user (ps); use {instead}"
