"""What the command line prints: guest output (raw in a pipe, escaped on a terminal), error
lines, JSON, and tables (rich, loaded only when one is drawn).

Guest text is hostile (a guest's root chooses its hostname, file names, command output):
on a terminal every control character is shown escaped (:mod:`limiquantix.protocol._safetext`),
so ``\\x1b]0;pwned\\x07`` cannot retitle the window; piped or redirected, command output and
file contents pass byte for byte, like ``limiquantix-agent-cli`` (a script gets what the
command printed). Names and messages are escaped always; table cells are rich ``Text``,
never markup; JSON escapes controls by construction (``ensure_ascii``).
"""

# No ``from __future__ import annotations``: limiquantix exec imports this module on every
# run, and that statement loads the __future__ module (about 0.3 ms of CPU on the project's
# machine: bench/cli_bench.py); annotations naming what only type checkers import are
# strings instead.

import sys

# Names for type checkers only: importing typing and collections costs milliseconds of the
# start-up that bench/cli_bench.py measures.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, TextIO


def safe_text(text: str, *, multiline: bool = False) -> str:
    """:func:`limiquantix.protocol.safe_text`, imported on first use (its table is
    built at import: ``exec`` into a pipe never needs it)."""
    from limiquantix.protocol import safe_text as escape

    return escape(text, multiline=multiline)


__all__ = ["GuestWriter", "error_line", "print_json", "print_table", "progress_line", "say", "short_time", "warn"]

PROG = "limiquantix"


class GuestWriter:
    """Guest command output to one of our streams: raw when piped, escaped on a terminal."""

    def __init__(self, out: "TextIO") -> None:
        self._out = out
        self._tty = out.isatty()

    def write(self, text: str) -> None:
        if self._tty:
            self._out.write(safe_text(text, multiline=True))
        else:
            # The controller sends UTF-8 text (invalid guest bytes already replaced); a lone
            # surrogate from a JSON escape cannot be encoded, so it is replaced too.
            self._out.buffer.write(text.encode("utf-8", "replace"))
        self._out.flush()


def error_line(message: str, *, code: str = "") -> None:
    """``limiquantix: [code: ]message`` on stderr, escaped (messages may quote guest text)."""
    prefix = f"{code}: " if code else ""
    print(f"{PROG}: {prefix}{safe_text(message)}", file=sys.stderr, flush=True)


def say(text: str) -> None:
    """One line on stdout, escaped (it may quote guest text)."""
    print(safe_text(text), flush=True)


def progress_line(text: str) -> None:
    """A progress line on stderr (so stdout keeps only the result), escaped."""
    print(safe_text(text), file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A note on stderr that does not change the exit code."""
    print(f"{PROG}: {safe_text(message)}", file=sys.stderr, flush=True)


def short_time(value: object) -> str:
    """An RFC 3339 time as a table shows it, to the second in UTC (``2026-12-05 09:20:46``);
    anything else as it is (``--json`` keeps the API's full value)."""
    text = "" if value is None else str(value)
    if len(text) >= 19 and text[10] == "T" and text.endswith("Z"):
        return text[:10] + " " + text[11:19]
    return text


def print_json(value: "Any") -> None:
    """``value`` as indented JSON (controls and non-ASCII escaped: safe on any terminal)."""
    import json  # here: exec's path loads no json (see ._fast)

    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=True) + "\n")


def print_table(
    headers: "Sequence[str]",
    rows: "Sequence[Sequence[object]]",
    *,
    title: str = "",
    header: bool = True,
    widths: "list[int] | None" = None,
) -> None:
    """A table on stdout: boxed on a terminal, plain aligned columns in a pipe (one line per row,
    never wrapped, so ``grep``/``awk`` see whole rows). Every cell is escaped text.

    ``widths``: tables printed one after another as one (``audit --follow``): each column at
    least as wide as in the tables before, and the list updated with this one's widths.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    tty = sys.stdout.isatty()
    console = Console(highlight=False, soft_wrap=not tty, width=None if tty else 10_000)
    table = Table(
        box=box.SIMPLE_HEAD if tty else None,
        title=title or None,
        show_edge=False,
        pad_edge=False,
        collapse_padding=tty,
        header_style="bold" if tty else "",
        show_header=header,
    )
    cells = [[safe_text("" if cell is None else str(cell)) for cell in row] for row in rows]
    for i, name in enumerate(headers):
        widest = max(max((len(row[i]) for row in cells), default=0), len(name))
        # One line per row on a terminal too: a narrow one cuts long cells (…) rather than
        # wrapping rows, and short ones (ids, states: up to 10 columns) stay whole.
        least = min(widest, 10)
        if widths is not None:
            if len(widths) <= i:
                widths.append(0)
            widths[i] = max(widths[i], widest)
            # Followed rows stay under the first table's header (a pipe's columns are exact).
            least = widths[i] if not tty else max(least, min(widths[i], 10))
        table.add_column(name, min_width=least)
    for row in cells:
        table.add_row(*(Text(cell, no_wrap=True, overflow="ellipsis") for cell in row))
    if tty:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    # Rich pads every cell to its column's width: no trailing blanks for grep, awk and diff.
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
