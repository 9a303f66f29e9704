"""An uptime as an operator reads it, the same in every front end (the CLI, the TUI).

``limiquantix vm`` printed ``uptime 55510 s``: nobody reads that as fifteen and a half hours.
Seconds stay in the API and in ``--json`` (scripts compute with them); the words are for
people. Pure and cheap (no imports).
"""

# No ``from __future__ import annotations``: nothing here needs it, and the command line's
# start-up pays for every module it loads (bench/cli_bench.py).

__all__ = ["uptime_text"]

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_INFINITY = float("inf")


def uptime_text(seconds: "float | None", *, compact: bool = False) -> str:
    """``3d 4h 12m``, ``4h 12m 5s``, ``12m 5s``, ``5s``: the three largest units from the
    first that is not zero (whole seconds, rounded down); ``compact``: the two largest, fixed
    width, for a table column (``3d04h``, ``4h12m``, ``12m05s``, ``0m05s``). ``-`` for none,
    and for a value no uptime has (a guest reports the figure: negative, NaN or infinite)."""
    # NaN fails the comparison, infinity the bound (no math import).
    if seconds is None or not 0 < seconds < _INFINITY:
        return "-"
    left = int(seconds)
    amounts = []
    for _, size in _UNITS:
        amount, left = divmod(left, size)
        amounts.append(amount)
    first = next((i for i, amount in enumerate(amounts) if amount), len(_UNITS) - 1)
    if compact:
        first = min(first, len(_UNITS) - 2)  # at least minutes and seconds: "0m05s"
        (u1, _), (u2, _) = _UNITS[first], _UNITS[first + 1]
        return f"{amounts[first]}{u1}{amounts[first + 1]:02d}{u2}"
    return " ".join(f"{amounts[i]}{_UNITS[i][0]}" for i in range(first, min(first + 3, len(_UNITS))))
