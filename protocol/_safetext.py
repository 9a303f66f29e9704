"""Guest text made safe for a terminal or a text log: data, never terminal control.

A guest's root chooses its hostname, OS name, interface names, file names and
command output. Written raw to a terminal, ``"\\x1b]0;pwned\\x07"`` sets the
window title, ``"\\x1b]52;c;...\\x07"`` writes the clipboard, ``"\\x1b[?1049l"``
leaves the alternate screen and ``"\\x1b[2J"`` clears it; a ``"\\n"`` in a log
argument forges a log line; a bidi override (U+202E) shows ``exe.txt`` as
``txt.exe``. :func:`safe_text` renders every such character visibly instead, so
an operator sees what the guest sent and the terminal does nothing with it.

The table (:data:`ESCAPED`), applied one code point at a time (so a sequence
such as ``ESC [ 2 J`` is defused by its ``ESC``, and text can be escaped chunk
by chunk):

=====================================  ===================  ==========================
code points                            what they are        shown as
=====================================  ===================  ==========================
U+0009 TAB, U+000A LF                  C0 (whitespace)      kept when ``multiline``, else ``\\t`` ``\\n``
U+000D CR                              C0                   ``\\r`` (always: it rewrites the line)
other U+0000-U+001F, U+007F            C0 controls, DEL     ``\\x1b``, ``\\x07``, ``\\x7f`` ...
U+0080-U+009F                          C1 controls          ``\\x9b`` (CSI), ``\\x9d`` (OSC) ...
U+061C, U+200E, U+200F                 bidi marks           ``\\u200e`` ...
U+202A-U+202E                          bidi embeddings,     ``\\u202e`` ...
                                       overrides
U+2066-U+2069                          bidi isolates        ``\\u2066`` ...
U+2028, U+2029                         line/paragraph sep.  ``\\u2028`` (text layout breaks lines there)
U+D800-U+DFFF                          lone surrogates      ``\\udcff`` (cannot be encoded for output)
=====================================  ===================  ==========================

Everything else, including a backslash, is kept: the result is for a human to
read, not to be decoded back (a guest that sends the six characters ``\\x1b``
shows the same six characters, which is harmless). JSON output needs none of
this: ``json.dumps`` escapes controls by construction (and with
``ensure_ascii=True``, every non-ASCII character).
"""

from __future__ import annotations

import codecs
from typing import Final

__all__ = ["ESCAPED", "StreamEscaper", "safe_bytes", "safe_text"]


def _escape(cp: int) -> str:
    if cp in (0x09, 0x0A, 0x0D):
        return {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}[cp]
    return f"\\x{cp:02x}" if cp <= 0xFF else f"\\u{cp:04x}"


def _table() -> dict[int, str]:
    points = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
    points += [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029]
    points += range(0xD800, 0xE000)
    return {cp: _escape(cp) for cp in points}


#: Code point → how it is shown (every character :func:`safe_text` replaces).
ESCAPED: Final[dict[int, str]] = _table()
_MULTILINE: Final = {cp: rep for cp, rep in ESCAPED.items() if cp not in (0x09, 0x0A)}


def safe_text(text: str, *, multiline: bool = False) -> str:
    """``text`` with every control, bidi and separator character of :data:`ESCAPED` shown escaped.

    Args:
        text: guest-supplied text.
        multiline: keep LF and TAB (command output, a file's content, shown as
            lines); otherwise (a name, a table cell, a log argument) they are
            escaped too, so the text stays on one line.
    """
    if text.isprintable():  # the usual case, in C: every character ESCAPED names is non-printable
        return text
    return text.translate(_MULTILINE if multiline else ESCAPED)


def safe_bytes(data: bytes, *, multiline: bool = True) -> str:
    """Guest bytes (command output, a file) as safe text: UTF-8, invalid bytes as U+FFFD."""
    return safe_text(data.decode("utf-8", "replace"), multiline=multiline)


class StreamEscaper:
    """:func:`safe_bytes` for a stream cut into chunks anywhere (a UTF-8
    sequence split across two chunks is decoded whole)."""

    def __init__(self, *, multiline: bool = True) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._multiline = multiline

    def feed(self, data: bytes, *, final: bool = False) -> str:
        """The safe text of ``data`` (and of what earlier chunks left incomplete)."""
        return safe_text(self._decoder.decode(data, final), multiline=self._multiline)
