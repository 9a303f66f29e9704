"""Reading a daemon's TOML configuration file (agent, hostd, controller)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 guests
    import tomli as tomllib

__all__ = ["read_toml"]


def read_toml(path: Path | None, default: Path, error: type[Exception]) -> dict[str, Any]:
    """The parsed file at ``path``, else at ``default`` when it exists, else ``{}``.

    An explicitly named file must exist; the default one is optional.

    Raises:
        error: the file cannot be read or is not valid TOML (the message names it).
    """
    if path is None:
        if not default.exists():
            return {}
        path = default
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: {exc}") from exc
