"""The start-up fast path: ``limiquantix exec`` and ``sh`` without loading click.

A command line of the forms ``[GLOBAL OPTIONS] exec [OPTIONS] VM [--] ARGV...`` and
``[GLOBAL OPTIONS] sh [OPTIONS] VM SCRIPT`` is parsed here with the same option tables click
builds its commands from (:mod:`._options`) and run at once; anything else (``--help``, a
typo, an option spelled another way such as ``-t5``, shell completion) returns None and
click handles it, errors and help included. Importing click costs about 45 ms on the
project's machine, several times what the rest of an ``exec`` takes (``bench/cli_bench.py``).
"""

from __future__ import annotations

import os

from ._options import EXEC_OPTIONS, GLOBAL_OPTIONS, Opt, by_name, parse_env_pair, parse_timeout

# Names for type checkers only: importing typing and collections costs milliseconds of the
# start-up that bench/cli_bench.py measures.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    #: (global options, command, command options, positional arguments)
    Parsed = tuple[dict[str, Any], str, dict[str, Any], list[str]]

__all__ = ["parse", "run"]


def _option(argv: Sequence[str], i: int, table: dict[str, Opt], into: dict[str, Any]) -> int | None:
    """Parse the option at ``argv[i]`` into ``into``; the next index, or None if click must."""
    token = argv[i]
    name, eq, value = token.partition("=") if token.startswith("--") else (token, "", "")
    opt = table.get(name)
    if opt is None:
        return None
    if not opt.value:
        if eq:
            return None
        into[opt.dest] = True
        return i + 1
    if eq:
        i += 1
    elif i + 1 < len(argv):
        value, i = argv[i + 1], i + 2
    else:
        return None
    if opt.multiple:
        into.setdefault(opt.dest, []).append(value)
    else:
        into[opt.dest] = value
    return i


def parse(argv: Sequence[str]) -> Parsed | None:
    """An exec/sh command line, as click would read it; None for anything else."""
    glob: dict[str, Any] = {}
    table = by_name(GLOBAL_OPTIONS)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        nxt = _option(argv, i, table, glob)
        if nxt is None:
            return None
        i = nxt
    if i >= len(argv) or argv[i] not in ("exec", "sh"):
        return None
    command, i = argv[i], i + 1
    opts: dict[str, Any] = {}
    table = by_name(EXEC_OPTIONS)
    positional: list[str] = []
    while i < len(argv):
        token = argv[i]
        if token == "--":
            positional.extend(argv[i + 1 :])
            break
        if token.startswith("-") and token != "-":
            nxt = _option(argv, i, table, opts)
            if nxt is None:
                return None
            i = nxt
            continue
        positional.append(token)
        i += 1
    if len(positional) < 2 or (command == "sh" and len(positional) != 2):
        return None
    try:
        if "timeout" in opts:
            opts["timeout"] = parse_timeout(opts["timeout"])
        if "env" in opts:
            opts["env"] = [parse_env_pair(pair) for pair in opts["env"]]
    except ValueError:
        return None  # click says what is wrong with it
    return glob, command, opts, positional


def run(argv: Sequence[str]) -> int | None:
    """Run an exec/sh command line; its exit code, or None when click must handle it."""
    if os.environ.get("_LIMIQUANTIX_COMPLETE"):
        return None
    parsed = parse(argv)
    if parsed is None:
        return None
    glob, command, opts, positional = parsed
    from ._exec import exec_command

    return exec_command(
        glob,
        command,
        positional[0],
        positional[1:],
        timeout_s=opts.get("timeout", 0),
        user=opts.get("user", ""),
        cwd=opts.get("cwd", ""),
        env=dict(opts.get("env", ())),
    )
