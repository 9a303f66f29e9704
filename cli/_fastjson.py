"""JSON for the Connect calls without importing :mod:`json`: ``import json`` loads ``re``
(json.decoder, json.scanner and json.encoder compile patterns at import), with enum,
functools and collections under it: about 15 ms, half of what ``limiquantix exec`` may
spend starting (``bench/cli_bench.py``).

The work is done by :mod:`json`'s own C accelerator, ``_json`` (its scanner and its string
encoder), which imports nothing. Anything outside the common case goes to :mod:`json`
itself, so that every answer and every error is exactly the standard library's: a value
that is not plain dicts, lists, strings, ints, bools and None is encoded by ``json.dumps``;
text the scanner refuses (or that has something after its value) is handed to
``json.loads``, which raises its ``JSONDecodeError`` (``_json`` needs ``json.decoder`` loaded
to build that error).
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:  # for type checkers only (start-up time)
    from typing import Any

__all__ = ["dumps", "loads"]


class _Context:
    """What ``_json.make_scanner`` reads from a ``json.JSONDecoder``: its defaults (``int`` and
    ``float`` are the C scanner's fast paths; ``float`` reads NaN and Infinity as json does)."""

    __slots__ = ()
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


# typeshed types the context as a scanner; the C code reads the attributes above.
_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]
_quote = _json.encode_basestring_ascii
#: JSON's whitespace (json.decoder's WHITESPACE), around a value.
_BLANKS = " \t\n\r"


def loads(data: bytes | str) -> Any:
    """``json.loads(data)``.

    Raises:
        ValueError: not one JSON value (``json.JSONDecodeError``), or bytes in no encoding
            JSON allows (``UnicodeDecodeError``).
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        stripped = text.strip(_BLANKS)
        value, end = _scan(stripped, 0)
        if end == len(stripped):
            return value
    except (StopIteration, SystemError, ValueError, RecursionError):
        # Not UTF-8 (json also reads UTF-16 and 32, and a BOM), no value, or an error the
        # scanner can only describe with json.decoder loaded (a SystemError on 3.11 when it
        # is not): json says what it is.
        pass
    import json

    return json.loads(data)


def _encode(value: Any, out: list[str]) -> None:
    """Raises: TypeError: a value :func:`dumps` leaves to json."""
    kind = type(value)
    if kind is str:
        out.append(_quote(value))
    elif kind is dict:
        out.append("{")
        first = True
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError("a key that is not a str")
            if not first:
                out.append(", ")
            first = False
            out.append(_quote(key))
            out.append(": ")
            _encode(item, out)
        out.append("}")
    elif kind is list or kind is tuple:
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(", ")
            _encode(item, out)
        out.append("]")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif kind is int:
        out.append(int.__repr__(value))
    else:
        raise TypeError(f"{kind.__name__} is left to json")


def dumps(value: object) -> str:
    """``json.dumps(value)``: the same text (ASCII, ``", "`` and ``": "`` separators).

    Raises:
        TypeError, ValueError: what ``json.dumps`` raises for ``value``.
    """
    out: list[str] = []
    try:
        _encode(value, out)
    except (TypeError, RecursionError):
        # Floats, int keys, subclasses, a circular structure ...: json's rules, and its errors.
        import json

        return json.dumps(value)
    return "".join(out)
