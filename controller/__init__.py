"""controller: the control plane (issue #4): the HTTP API (VMService, NodeRegistryService,
AdminService, FleetService) over a store of users, tokens, the audit log, the nodes and
their VMs, and fleet runs; ``limiquantix-controller`` (serve, token, pki).

The public surface is what this module exports; every other module is private (its name
starts with ``_``) and may change. Where things live (see README.md):

* serving: :mod:`._daemon` (config, app, ``serve``), :mod:`._authn` (bearer tokens);
* the services: :mod:`._vms`, :mod:`._nodes`, :mod:`._admin`, :mod:`._fleet`, with
  :mod:`._exec` (guest commands), :mod:`._vmview` (hostd's VMStatus mapped once),
  :mod:`._audit` (the audit trail), :mod:`._context` (the caller), :mod:`._forward`
  (calls into hostd), :mod:`._downloads` (``/downloads/``);
* identity and records: :mod:`._auth` (roles, permissions), :mod:`._models`
  (repeating events are throttled by ``protocol.Throttle``);
* storage: :mod:`.store` (a package: the interface, the SQLite engine, one module per
  domain, the schema);
* :mod:`.pki`: the small CA of ``limiquantix-controller pki``.

``serve``, ``ControllerConfig`` and ``load_config`` are imported on first use: the web
stack they need costs ``token`` commands most of their start-up time. ``ConfigError``
(an invalid configuration) is the one of every daemon, :mod:`limiquantix.protocol`'s.
"""

from __future__ import annotations

from typing import Any

from limiquantix.protocol import import_lazily

from ._auth import GLOBAL_PERMISSIONS as GLOBAL_PERMISSIONS
from ._auth import ROLE_PERMISSIONS as ROLE_PERMISSIONS
from ._auth import Permission as Permission
from ._auth import Principal as Principal
from ._auth import Role as Role
from ._auth import require as require
from ._models import AuditAction as AuditAction
from ._models import AuditDetail as AuditDetail
from ._models import AuditOutcome as AuditOutcome
from ._models import AuditQuery as AuditQuery
from ._models import AuditRecord as AuditRecord
from ._models import CommandSpec as CommandSpec
from ._models import CommandStatus as CommandStatus
from ._models import InventoryState as InventoryState
from ._models import NodeInfo as NodeInfo
from ._models import TargetSpec as TargetSpec
from ._models import TargetStatus as TargetStatus
from ._models import VMInfo as VMInfo
from .store import AuditWriteFailed as AuditWriteFailed
from .store import SchemaTooNew as SchemaTooNew
from .store import SQLiteStore as SQLiteStore
from .store import Store as Store

#: Exported from :mod:`._daemon`, imported when first asked for (see the module docstring).
_LAZY = {
    **dict.fromkeys(("ControllerConfig", "load_config", "serve"), "._daemon"),
    "ConfigError": "limiquantix.protocol",
}

__all__ = [
    "AuditAction",
    "AuditDetail",
    "AuditOutcome",
    "AuditQuery",
    "AuditRecord",
    "AuditWriteFailed",
    "CommandSpec",
    "CommandStatus",
    "ConfigError",
    "ControllerConfig",
    "GLOBAL_PERMISSIONS",
    "InventoryState",
    "NodeInfo",
    "Permission",
    "Principal",
    "ROLE_PERMISSIONS",
    "Role",
    "SQLiteStore",
    "SchemaTooNew",
    "Store",
    "TargetSpec",
    "TargetStatus",
    "VMInfo",
    "load_config",
    "require",
    "serve",
]


def __getattr__(name: str) -> Any:
    return import_lazily(__name__, _LAZY, name)
