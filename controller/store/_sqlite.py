"""The embedded :class:`~._interface.Store`: its domains over one SQLite file."""

from __future__ import annotations

from typing import final

from ._auditlog import SQLiteAudit
from ._commands import SQLiteCommands
from ._interface import Store
from ._inventory import SQLiteInventory
from ._tokens import SQLiteTokens

__all__ = ["SQLiteStore"]


@final
class SQLiteStore(SQLiteTokens, SQLiteAudit, SQLiteInventory, SQLiteCommands, Store):
    """:class:`~._interface.Store` on one SQLite file. Open with ``await SQLiteStore.open(path)``."""
