"""Logging set-up shared by the daemons: human lines or one JSON object per line.

Log messages carry guest text (hostnames, OS names, reasons) and the log is
read in terminals: :class:`TextFormatter` shows every control character of a
message and its arguments escaped (:func:`~._safetext.safe_text`), so one record
is one line and a guest's escape sequences do nothing. JSON lines are safe by
construction: ``json.dumps`` escapes C0 controls, and :class:`JsonFormatter`
escapes the rest of :data:`~._safetext.ESCAPED` (C1, bidi, separators, lone
surrogates) as ``\\uXXXX``, still valid JSON, other non-ASCII text kept readable.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Final

from ._safetext import ESCAPED, safe_text
from ._throttle import Throttle

__all__ = ["JsonFormatter", "LogThrottle", "TextFormatter", "setup_logging"]

#: What ``json.dumps(ensure_ascii=False)`` leaves raw that a terminal may act on.
_JSON_ESCAPES: Final = {cp: f"\\u{cp:04x}" for cp in ESCAPED if cp >= 0x7F}


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message``, the message (with its arguments) on one line, controls escaped.

    A traceback keeps its line breaks; its other controls are escaped too (an
    exception's text may quote guest data).
    """

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # record.message is this formatter's own (format() has just set it from
        # getMessage()); other handlers compute theirs again.
        record.message = safe_text(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:
        return safe_text(super().formatException(ei), multiline=True)  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return safe_text(super().formatStack(stack_info), multiline=True)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (for journald's MESSAGE or a log shipper)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False).translate(_JSON_ESCAPES)


class LogThrottle:
    """One log line per key per ``interval_s``, saying how many it stands for: for what a peer
    can make happen at any rate (a refused connection, a bad frame from a guest). A
    :class:`._throttle.Throttle` on the monotonic clock: the keys are a fixed set of reasons,
    and at most 64 are remembered anyway.
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        self._throttle = Throttle(interval_s, max_keys=_LOG_KEYS, max_rows_per_interval=_LOG_KEYS)

    def due(self, key: str) -> str | None:
        """``None`` when this event is only counted, into the next line; else that line's
        suffix: ``" (12 more since the last line)"``, or empty."""
        held = self._throttle.hit(key, time.monotonic())
        if held is None:
            return None
        return f" ({held - 1} more since the last line)" if held > 1 else ""


#: Keys a LogThrottle remembers (and lines it lets through per interval over all of them).
_LOG_KEYS: Final = 64


def setup_logging(log_format: str, level: str) -> None:
    """Log to stderr (under systemd: the journal, which adds its own timestamp)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO: a line per forwarded call in the controller's log and one
    # per heartbeat in hostd's, which our own lines already cover (and each costs the call's
    # time). Kept for debug.
    logging.getLogger("httpx").setLevel(logging.NOTSET if level.upper() == "DEBUG" else logging.WARNING)
