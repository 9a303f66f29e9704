"""The SQLite schema as an ordered list of migrations.

Each :class:`Migration` is a version number and the statements that take the
database from the previous version to it. They are applied in order, all
pending ones in one transaction, and recorded in ``schema_migrations``; a
released migration is never edited, only followed by a new one. A database
whose ``schema_migrations`` names a version above :data:`SCHEMA_VERSION` was
written by a newer controller and is refused (it may rely on columns or
invariants this code does not know).

Statements are listed one by one rather than as a script because
``sqlite3.executescript`` commits on its own, which would break the
all-or-nothing application.
"""

from __future__ import annotations

import dataclasses
from typing import Final, final

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration"]


@final
@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


_V1: Final = (
    # Users exist as owners of tokens; audit rows copy the name (no foreign key)
    # so the log outlives any user.
    """CREATE TABLE users (
        name        TEXT PRIMARY KEY,
        created_at  REAL NOT NULL
    )""",
    # Only the SHA-256 of a token is kept (auth.hash_token).
    """CREATE TABLE api_tokens (
        id           TEXT PRIMARY KEY,
        user_name    TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        role         TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
        label_scope  TEXT,            -- JSON object; NULL: every VM
        secret_hash  BLOB NOT NULL,
        description  TEXT NOT NULL DEFAULT '',
        created_at   REAL NOT NULL,
        last_used_at REAL,
        revoked_at   REAL
    )""",
    "CREATE INDEX api_tokens_user ON api_tokens(user_name)",
    # AUTOINCREMENT: ids never reused, even after a restore, so an id names one action forever.
    """CREATE TABLE audit_log (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at     REAL NOT NULL,
        completed_at   REAL,
        user_name      TEXT NOT NULL,
        token_id       TEXT NOT NULL,
        role           TEXT NOT NULL,
        source_address TEXT NOT NULL,
        action         TEXT NOT NULL,
        vm_id          TEXT NOT NULL DEFAULT '',
        node_id        TEXT NOT NULL DEFAULT '',
        detail         TEXT NOT NULL DEFAULT '{}',   -- models.AuditDetail as JSON
        outcome        TEXT NOT NULL DEFAULT 'pending',
        exit_code      INTEGER,
        duration_ms    INTEGER,
        error          TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX audit_started ON audit_log(started_at)",
    "CREATE INDEX audit_user ON audit_log(user_name, id)",
    "CREATE INDEX audit_vm ON audit_log(vm_id, id)",
    "CREATE INDEX audit_action ON audit_log(action, id)",
    # Append-only, enforced by the database itself: no deletes, and a row is
    # completed once, without touching what was recorded before the action.
    """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER audit_log_complete_once BEFORE UPDATE ON audit_log
    WHEN OLD.outcome <> 'pending'
      OR NEW.id IS NOT OLD.id OR NEW.started_at IS NOT OLD.started_at
      OR NEW.user_name IS NOT OLD.user_name OR NEW.token_id IS NOT OLD.token_id
      OR NEW.role IS NOT OLD.role OR NEW.source_address IS NOT OLD.source_address
      OR NEW.action IS NOT OLD.action OR NEW.vm_id IS NOT OLD.vm_id
      OR NEW.node_id IS NOT OLD.node_id OR NEW.detail IS NOT OLD.detail
    BEGIN SELECT RAISE(ABORT, 'an audit row is completed once and never rewritten'); END""",
    # token: the bearer token the controller presents to this hostd (a credential).
    """CREATE TABLE nodes (
        node_id        TEXT PRIMARY KEY,
        url            TEXT NOT NULL,
        token          TEXT NOT NULL,
        registered_at  REAL NOT NULL,
        last_heartbeat REAL
    )""",
    # The VM list of each node's last heartbeat (replaced whole each time).
    """CREATE TABLE node_vms (
        node_id TEXT NOT NULL REFERENCES nodes(node_id) ON DELETE CASCADE,
        vm_id   TEXT NOT NULL,
        name    TEXT NOT NULL DEFAULT '',
        labels  TEXT NOT NULL DEFAULT '{}',
        state   TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (node_id, vm_id)
    )""",
    "CREATE INDEX node_vms_vm ON node_vms(vm_id)",
    # seq orders commands for paging; id is what the API shows.
    """CREATE TABLE commands (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        id              TEXT NOT NULL UNIQUE,
        created_at      REAL NOT NULL,
        completed_at    REAL,
        user_name       TEXT NOT NULL,
        token_id        TEXT NOT NULL,
        spec            TEXT NOT NULL,   -- models.CommandSpec as JSON (no env values, no stdin)
        target_spec     TEXT NOT NULL,   -- models.TargetSpec as JSON
        max_concurrency INTEGER NOT NULL CHECK (max_concurrency >= 1),
        max_errors      TEXT NOT NULL,
        status          TEXT NOT NULL CHECK (status IN
            ('pending', 'in_progress', 'cancelling', 'success', 'failed', 'cancelled'))
    )""",
    "CREATE INDEX commands_status ON commands(status)",
    "CREATE INDEX commands_user ON commands(user_name, seq)",
    """CREATE TABLE command_targets (
        command_id       TEXT NOT NULL REFERENCES commands(id) ON DELETE CASCADE,
        position         INTEGER NOT NULL,
        vm_id            TEXT NOT NULL,
        node_id          TEXT NOT NULL DEFAULT '',
        status           TEXT NOT NULL CHECK (status IN ('pending', 'in_progress', 'success', 'failed',
                             'timed_out', 'cancelled', 'undeliverable', 'skipped')),
        exit_code        INTEGER,
        stdout           TEXT NOT NULL DEFAULT '',
        stderr           TEXT NOT NULL DEFAULT '',
        stdout_truncated INTEGER NOT NULL DEFAULT 0,
        stderr_truncated INTEGER NOT NULL DEFAULT 0,
        error            TEXT NOT NULL DEFAULT '',
        started_at       REAL,
        completed_at     REAL,
        duration_ms      INTEGER,
        PRIMARY KEY (command_id, vm_id)
    )""",
    "CREATE INDEX command_targets_status ON command_targets(command_id, status)",
)

# Version 2: the ``node`` role (a hostd's registration credential). SQLite
# cannot alter a CHECK constraint, so the table is rebuilt under the same name
# (nothing references api_tokens, so foreign keys are not disturbed).
_V2: Final = (
    """CREATE TABLE api_tokens_v2 (
        id           TEXT PRIMARY KEY,
        user_name    TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        role         TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin', 'node')),
        label_scope  TEXT,            -- JSON object; NULL: every VM
        secret_hash  BLOB NOT NULL,
        description  TEXT NOT NULL DEFAULT '',
        created_at   REAL NOT NULL,
        last_used_at REAL,
        revoked_at   REAL
    )""",
    "INSERT INTO api_tokens_v2 SELECT id, user_name, role, label_scope, secret_hash, description, created_at,"
    " last_used_at, revoked_at FROM api_tokens",
    "DROP TABLE api_tokens",
    "ALTER TABLE api_tokens_v2 RENAME TO api_tokens",
    "CREATE INDEX api_tokens_user ON api_tokens(user_name)",
)

# Version 3: the agent in brief (version, OS, addresses, CPU, memory, uptime)
# that hostd's heartbeats carry, as a JSON object, for ListVMs.
_V3: Final = ("ALTER TABLE node_vms ADD COLUMN agent TEXT NOT NULL DEFAULT '{}'",)

# Version 4: the node token that registered a node (NULL: an admin did, or before v4).
# Another node token may not register or heartbeat that node id while this one is valid.
_V4: Final = ("ALTER TABLE nodes ADD COLUMN owner_token_id TEXT",)

# Version 5: each VM id bound to the node that hosts it, as node ids are bound to
# node tokens (v4). Another node reporting the VM is refused while the owner still
# reports it and is reachable. Existing VMs are bound to the node that reported them
# last (a VM two nodes report, as mid-migration, to the freshest heartbeat; ties to
# the smaller node id), and the other node's row for it is dropped.
_V5: Final = (
    """CREATE TABLE vm_owners (
        vm_id    TEXT PRIMARY KEY,
        node_id  TEXT NOT NULL REFERENCES nodes(node_id) ON DELETE CASCADE,
        bound_at REAL NOT NULL
    )""",
    "CREATE INDEX vm_owners_node ON vm_owners(node_id)",
    """INSERT INTO vm_owners (vm_id, node_id, bound_at)
    SELECT v.vm_id, v.node_id, COALESCE(n.last_heartbeat, n.registered_at)
    FROM node_vms v JOIN nodes n ON n.node_id = v.node_id
    WHERE NOT EXISTS (
        SELECT 1 FROM node_vms v2 JOIN nodes n2 ON n2.node_id = v2.node_id
        WHERE v2.vm_id = v.vm_id AND v2.node_id <> v.node_id
          AND (COALESCE(n2.last_heartbeat, 0) > COALESCE(n.last_heartbeat, 0)
               OR (COALESCE(n2.last_heartbeat, 0) = COALESCE(n.last_heartbeat, 0) AND v2.node_id < v.node_id)))""",
    """DELETE FROM node_vms WHERE NOT EXISTS (
        SELECT 1 FROM vm_owners o WHERE o.vm_id = node_vms.vm_id AND o.node_id = node_vms.node_id)""",
)

# Version 6: the inventory keeps every VM it has seen (issue 13): one row per VM id
# with the node it is bound to (as v5's vm_owners), its last reported record (as
# node_vms), when a heartbeat last listed it, and whether its node's latest
# heartbeat still does. The row outlives both: a VM its node no longer reports, or
# whose node was removed, is listed as gone until an admin removes it. There is no
# foreign key to nodes for that reason (v5's cascade made such VMs vanish).
# VMs v5 bound but no longer listed are kept by id alone (v5 kept nothing else),
# last reported, as far as is known, when they were bound.
_V6: Final = (
    """CREATE TABLE vms (
        vm_id         TEXT PRIMARY KEY,
        node_id       TEXT NOT NULL,
        name          TEXT NOT NULL DEFAULT '',
        labels        TEXT NOT NULL DEFAULT '{}',
        state         TEXT NOT NULL DEFAULT '',   -- hostd's agent state as last reported
        agent         TEXT NOT NULL DEFAULT '{}',
        bound_at      REAL NOT NULL,
        last_reported REAL NOT NULL,
        reported      INTEGER NOT NULL DEFAULT 1 CHECK (reported IN (0, 1))
    )""",
    "CREATE INDEX vms_node ON vms(node_id, reported)",
    """INSERT INTO vms (vm_id, node_id, name, labels, state, agent, bound_at, last_reported, reported)
    SELECT v.vm_id, v.node_id, v.name, v.labels, v.state, v.agent, o.bound_at,
           COALESCE(n.last_heartbeat, n.registered_at), 1
    FROM node_vms v
    JOIN vm_owners o ON o.vm_id = v.vm_id AND o.node_id = v.node_id
    JOIN nodes n ON n.node_id = v.node_id""",
    """INSERT INTO vms (vm_id, node_id, bound_at, last_reported, reported)
    SELECT o.vm_id, o.node_id, o.bound_at, o.bound_at, 0 FROM vm_owners o
    WHERE NOT EXISTS (SELECT 1 FROM node_vms v WHERE v.vm_id = o.vm_id AND v.node_id = o.node_id)""",
    "DROP TABLE node_vms",
    "DROP TABLE vm_owners",
)

# Version 7: how a fleet target's command ended, as single commands say it (issue 13):
# the agent's exit reason and the signal, beside exit_code (which is NULL unless it exited).
_V7: Final = (
    "ALTER TABLE command_targets ADD COLUMN exit_reason TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE command_targets ADD COLUMN signal INTEGER NOT NULL DEFAULT 0",
)

# Version 8: one id rule (protocol.limits.check_id, issue 12): VM and node ids are at
# most 128 bytes of UTF-8, the bound of every request's id field. Ids of 129-255
# characters were taken before and could not be named in any request (not even to
# remove them): forgotten here, as hostd no longer lists them. Their audit rows stay.
_V8: Final = (
    "DELETE FROM vms WHERE length(CAST(vm_id AS BLOB)) > 128",
    "DELETE FROM nodes WHERE length(CAST(node_id AS BLOB)) > 128",
)

#: Every migration, in order. Append only.
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "users, tokens, audit log, nodes, fleet commands", _V1),
    Migration(2, "node role for hostd registration tokens", _V2),
    Migration(3, "each VM's agent in brief from the heartbeats", _V3),
    Migration(4, "nodes bound to the node token that registered them", _V4),
    Migration(5, "VM ids bound to the node that hosts them", _V5),
    Migration(6, "every VM seen kept, with when it was last reported, until an admin removes it", _V6),
    Migration(7, "fleet targets' exit reason and signal", _V7),
    Migration(8, "VM and node ids over 128 bytes, which no request could name, forgotten", _V8),
)

#: The version this code writes and understands.
SCHEMA_VERSION: Final = MIGRATIONS[-1].version
