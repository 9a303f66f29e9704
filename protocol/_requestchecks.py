"""Request values the controller checks, in one place for it and for the command line.

The controller refuses these with ``invalid_argument`` (its callers wrap the ``ValueError``
raised here); ``limiquantix`` runs the same checks before it sends anything, so that a typo
(``--max-errors abc``) is a usage error with click's message, not a request refused by the
server, and so that it accepts exactly what the controller accepts: one rule, not two that
drift apart.

* labels (a fleet run's target selector, a token's label scope): keys and values as
  Kubernetes allows them, roughly (hostd passes them through), at most
  :data:`MAX_LABELS` of them;
* a fleet run's ``maxErrors`` (AWS SSM's ``MaxErrors``: a count, or a percentage of the
  targets) and the bound of its ``maxConcurrency`` (0: the controller's default; else
  1..:data:`MAX_CONCURRENCY_LIMIT`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "MAX_CONCURRENCY_LIMIT",
    "MAX_LABELS",
    "check_labels",
    "parse_max_errors",
]

#: The largest maxConcurrency of a fleet run (0 asks for the controller's default).
MAX_CONCURRENCY_LIMIT: Final = 1000
#: A label selector or scope wider than this is a mistake, not a policy.
MAX_LABELS: Final = 16

_LABEL_KEY_RE: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_./-]{0,126}[A-Za-z0-9])?")
_LABEL_VALUE_RE: Final = re.compile(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?")
# ASCII digits only: ``\d`` would take other scripts' digits ("٣"), which int() reads too.
_MAX_ERRORS_RE: Final = re.compile(r"([0-9]{1,6})(%?)")


def check_labels(labels: Mapping[Any, Any], *, what: str = "labels") -> dict[str, str]:
    """A plain copy of ``labels`` after checking keys and values.

    Raises:
        ValueError: a key or value is malformed (the message names ``what`` and the key),
            or there are more than :data:`MAX_LABELS`.
    """
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{what}: at most {MAX_LABELS} labels")
    out: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY_RE.fullmatch(key):
            raise ValueError(f"{what}: bad label key {key!r}")
        if not isinstance(value, str) or not _LABEL_VALUE_RE.fullmatch(value):
            raise ValueError(f"{what}: bad value for label {key!r}")
        out[key] = value
    return out


def parse_max_errors(value: str) -> tuple[int, bool]:
    """``"2"`` → ``(2, False)``, ``"10%"`` → ``(10, True)`` (surrounding spaces ignored).

    Raises:
        ValueError: not a count of at most 6 digits, or a percentage within 0..100.
    """
    match = _MAX_ERRORS_RE.fullmatch(value.strip())
    if not match:
        raise ValueError(f"maxErrors must be a count or a percentage (2, 10%), not {value[:32]!r}")
    number, percent = int(match.group(1)), bool(match.group(2))
    if percent and number > 100:
        raise ValueError("maxErrors percentage must be within 0..100")
    return number, percent
