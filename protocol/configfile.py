"""Reading a daemon's or a client's TOML configuration file (agent, hostd, controller, the
TUI and the command line)."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["read_toml"]


def read_toml(
    path: str | os.PathLike[str] | None, default: str | os.PathLike[str], error: type[Exception]
) -> dict[str, Any]:
    """The parsed file at ``path``, else at ``default`` when it exists, else ``{}``.

    An explicitly named file must exist; the default one is optional.

    Raises:
        error: the file cannot be read or is not valid TOML (the message names it).
    """
    if path is None:
        if not os.path.exists(default):
            return {}
        path = default
    # Imported here: ``limiquantix exec`` without a config file does not pay for a TOML parser.
    if sys.version_info >= (3, 11):
        import tomllib  # novermin - the 3.11 branch of a version check
    else:  # pragma: no cover - Python 3.10 guests
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise error(f"cannot read {os.fspath(path)}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{os.fspath(path)}: {exc}") from exc
