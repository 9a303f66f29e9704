"""The controller's storage: the :class:`Store` interface and its SQLite implementation.

The API layer sees only :class:`Store` (async methods taking and returning the
frozen records of :mod:`.._models`), never SQL, rows or connections, so that a
PostgreSQL backend can be added for installations that outgrow one machine
(several controllers behind a load balancer). It is not built; it would be a
second subclass of :class:`Store` passing the same tests.

Where things live:

* ``_interface.py``: :class:`Store`, its errors and the policy constants;
* ``_schema.py``: the SQLite schema as an ordered, append-only list of migrations;
* ``_engine.py``: the SQLite plumbing (open, WAL, migrations, the one connection and
  its worker thread, transactions, error translation);
* one module per domain, each a part of :class:`SQLiteStore` over the engine:
  ``_tokens.py`` (users, tokens), ``_auditlog.py`` (the audit log), ``_inventory.py``
  (nodes, VMs and their bindings), ``_commands.py`` (fleet runs);
* ``_sqlite.py``: :class:`SQLiteStore`, the domains put together.

:class:`SQLiteStore` is the embedded default:

* **One connection, one worker at a time.** Every call runs in a trio worker
  thread (``trio.to_thread.run_sync``) behind a ``CapacityLimiter(1)`` and a
  lock, so the connection (opened with ``check_same_thread=False``) is never
  used by two threads at once. Calls are not abandoned on cancellation: a
  cancelled caller waits for its transaction to commit or roll back, so a
  cancel never leaves one half-done. SQLite serializes writers anyway; one
  connection keeps the code obviously correct, and a call is ~0.1 ms.
* **WAL journal**, so the CLI (``token create`` while the controller runs)
  and readers never block each other; ``busy_timeout`` for the rare moment two
  processes write at once; every write is ``BEGIN IMMEDIATE`` so it takes the
  write lock up front instead of failing to upgrade a read lock.
* **Durability per transaction.** ``synchronous=FULL`` (fsync of the WAL at
  every commit) for the writes that must survive a power cut: the audit row
  written *before* an action is forwarded (the issue requires it), tokens,
  users, nodes, fleet-run creation and cancellation. ``synchronous=NORMAL``
  (no fsync at commit; WAL mode still cannot be corrupted, the last commits
  can only be lost) for high-rate bookkeeping: heartbeats, a token's
  ``last_used_at``, fleet-run target progress and an audit row's completion. A
  lost completion leaves the row ``pending``, which reads, truthfully, as
  "outcome unknown"; and because the WAL is one sequential file, the next FULL
  commit makes every earlier NORMAL one durable too.
* **Versioned migrations** (:mod:`._schema`) applied in one transaction at
  open; a database from a newer controller is refused (:class:`SchemaTooNew`).
* **Foreign keys on**, and the audit log is append-only by trigger.

The database holds credentials: token hashes, and each hostd's bearer token
in clear (the controller must present it). The file is created mode 0600 (and
tightened to it when found wider); SQLite gives its ``-wal`` and ``-shm`` files
the same mode.

Error handling: every :mod:`sqlite3` error crosses into the
:mod:`limiquantix.protocol.errors` hierarchy once, in :func:`._engine.translate`
(busy → ``Unavailable``, disk full → ``ResourceExhausted`` ...), chained
``from`` the original. :meth:`Store.audit_begin` raises
:class:`AuditWriteFailed` for any failure to write; the API must then refuse
the action.
"""

from __future__ import annotations

from ._engine import BUSY_TIMEOUT_S as BUSY_TIMEOUT_S
from ._engine import DEFAULT_DB_PATH as DEFAULT_DB_PATH
from ._interface import BOOTSTRAP_ADMIN_USER as BOOTSTRAP_ADMIN_USER
from ._interface import DEFAULT_HEARTBEAT_TIMEOUT_S as DEFAULT_HEARTBEAT_TIMEOUT_S
from ._interface import LAST_USED_RESOLUTION_S as LAST_USED_RESOLUTION_S
from ._interface import MAX_GONE_VMS_PER_NODE as MAX_GONE_VMS_PER_NODE
from ._interface import MAX_NODES_PER_TOKEN as MAX_NODES_PER_TOKEN
from ._interface import AuditWriteFailed as AuditWriteFailed
from ._interface import SchemaTooNew as SchemaTooNew
from ._interface import Store as Store
from ._schema import MIGRATIONS as MIGRATIONS
from ._schema import SCHEMA_VERSION as SCHEMA_VERSION
from ._schema import Migration as Migration
from ._sqlite import SQLiteStore as SQLiteStore

__all__ = [
    "BOOTSTRAP_ADMIN_USER",
    "BUSY_TIMEOUT_S",
    "DEFAULT_DB_PATH",
    "DEFAULT_HEARTBEAT_TIMEOUT_S",
    "LAST_USED_RESOLUTION_S",
    "MAX_GONE_VMS_PER_NODE",
    "MAX_NODES_PER_TOKEN",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AuditWriteFailed",
    "Migration",
    "SQLiteStore",
    "SchemaTooNew",
    "Store",
]
