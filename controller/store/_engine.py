"""SQLite plumbing shared by the store's domains: opening the file (mode 0600), WAL,
migrations (:mod:`._schema`), one connection used by one worker thread at a time,
transactions, and the one translation of sqlite3 errors into the error hierarchy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import trio

from limiquantix.protocol import errors

from ._interface import SchemaTooNew
from ._schema import MIGRATIONS, Migration

__all__ = ["BUSY_TIMEOUT_S", "DEFAULT_DB_PATH", "SQLiteEngine", "json_text", "snapshot", "transaction", "translate"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_E = TypeVar("_E", bound="SQLiteEngine")


DEFAULT_DB_PATH: Final = Path("/var/lib/limiquantix/controller.db")


#: How long a write waits for another process's write lock before giving up
#: with ``Unavailable``: long enough for any single transaction here, short
#: enough that a wedged second process is reported rather than hung on.
BUSY_TIMEOUT_S: Final = 5.0


_DB_FILE_MODE: Final = 0o600


_DB_DIR_MODE: Final = 0o700


#: SQLite primary result code → (error class, reason). The whole policy.
_SQLITE_ERRORS: Final[dict[str, tuple[type[errors.AgentError], str]]] = {
    "BUSY": (errors.Unavailable, "database_busy"),
    "LOCKED": (errors.Unavailable, "database_busy"),
    "FULL": (errors.ResourceExhausted, "disk_full"),
    "READONLY": (errors.Unavailable, "database_read_only"),
    "IOERR": (errors.Unavailable, "io_error"),
    "CANTOPEN": (errors.Unavailable, "cannot_open_database"),
    "PERM": (errors.Unavailable, "database_permission"),
    "CORRUPT": (errors.Internal, "database_corrupt"),
    "NOTADB": (errors.Internal, "database_corrupt"),
    "CONSTRAINT": (errors.FailedPrecondition, "constraint"),
}


def translate(exc: sqlite3.Error) -> errors.AgentError:
    """The hierarchy's error for a sqlite3 error (the caller chains it)."""
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
        return errors.Unavailable("the store is closed", reason="store_closed")
    name = getattr(exc, "sqlite_errorname", "") or ""
    primary = name.split("_")[1] if name.startswith("SQLITE_") and "_" in name else ""
    cls, reason = _SQLITE_ERRORS.get(primary, (errors.Internal, "database_error"))
    return cls(f"database: {exc}", reason=reason)


def json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class SQLiteEngine:
    """One SQLite file and the one connection to it: opening, migrating, closing, and
    running a function on the connection in a worker thread (:meth:`_run`). The domain
    modules add the :class:`~._interface.Store` methods on top."""

    def __init__(self, conn: sqlite3.Connection, path: Path, clock: Callable[[], float]) -> None:
        """Use :meth:`open`."""
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._limiter = trio.CapacityLimiter(1)

    @property
    def path(self) -> Path:
        return self._path

    @classmethod
    async def open(
        cls: type[_E],
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> _E:
        """Open (creating it mode 0600, and its directory 0700) and migrate.

        ``clock`` gives unix seconds (tests pass a fake). ``migrations`` is for
        tests of the migration machinery.

        Raises:
            SchemaTooNew: written by a newer controller.
            errors.Unavailable: cannot create or open the file, or it is locked.
            errors.Internal: not a database, or WAL mode could not be enabled.
        """
        db = Path(path)
        conn = await trio.to_thread.run_sync(_open_connection, db, tuple(migrations), clock)
        return cls(conn, db, clock)

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    conn, self._conn = self._conn, None
                    conn.close()

        await trio.to_thread.run_sync(close, limiter=self._limiter)

    # ---- plumbing

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await trio.to_thread.run_sync(self._call, fn, args, limiter=self._limiter)

    def _call(self, fn: Callable[..., _T], args: tuple[Any, ...]) -> _T:
        with self._lock:
            if self._conn is None:
                raise errors.Unavailable("the store is closed", reason="store_closed")
            try:
                return fn(self._conn, *args)
            except sqlite3.Error as exc:
                raise translate(exc) from exc


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, durable: bool) -> Iterator[None]:
    """One write transaction; ``durable`` fsyncs the WAL at commit (see the module docstring)."""
    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """A consistent snapshot across several SELECTs."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _open_connection(path: Path, migrations: tuple[Migration, ...], clock: Callable[[], float]) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=_DB_DIR_MODE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _DB_FILE_MODE)
        try:
            mode = os.fstat(fd).st_mode & 0o777
            if mode & 0o077:
                log.warning("%s was mode %o; tightening to %o (it holds credentials)", path, mode, _DB_FILE_MODE)
                os.fchmod(fd, _DB_FILE_MODE)
        finally:
            os.close(fd)
    except OSError as exc:
        raise errors.Unavailable(f"cannot create {path}: {exc.strerror}", reason="cannot_open_database") from exc
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise translate(exc) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        journal = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(journal).lower() != "wal":
            raise errors.Internal(f"{path}: cannot enable WAL mode (journal_mode is {journal})")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        _migrate(conn, path, migrations, clock())
    except sqlite3.Error as exc:
        conn.close()
        raise translate(exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path, migrations: tuple[Migration, ...], now: float) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or not versions or versions[0] < 1:  # pragma: no cover - a code bug
        raise errors.Internal("migrations must have increasing versions from 1")
    latest = versions[-1]
    with transaction(conn, durable=True):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
        if current > latest:
            raise SchemaTooNew(
                f"{path} has schema version {current}, newer than this controller's {latest}: "
                "upgrade limiquantix-controller (or restore a backup from before the upgrade)",
                reason="schema_too_new",
            )
        for migration in migrations:
            if migration.version <= current:
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.description, now),
            )
            log.info("%s: applied schema migration %d (%s)", path, migration.version, migration.description)
