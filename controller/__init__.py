"""controller: the control plane (issue #4, in progress).

Built: the storage and identity layer (:mod:`.store`, :mod:`.auth`,
:mod:`.models`, :mod:`.schema`), the ``token`` commands, and the HTTP API
(:mod:`.api`: VMService and NodeRegistryService; :mod:`.forward`: the client
for hostd's node API; :mod:`.daemon`: ``limiquantix-controller serve``).
Fleet runs (RunCommand ...) come next.
"""

from __future__ import annotations

from .auth import GLOBAL_PERMISSIONS as GLOBAL_PERMISSIONS
from .auth import ROLE_PERMISSIONS as ROLE_PERMISSIONS
from .auth import Permission as Permission
from .auth import Principal as Principal
from .auth import Role as Role
from .auth import require as require
from .models import AuditAction as AuditAction
from .models import AuditDetail as AuditDetail
from .models import AuditOutcome as AuditOutcome
from .models import AuditQuery as AuditQuery
from .models import CommandSpec as CommandSpec
from .models import CommandStatus as CommandStatus
from .models import TargetSpec as TargetSpec
from .models import TargetStatus as TargetStatus
from .models import VMInfo as VMInfo
from .store import AuditWriteFailed as AuditWriteFailed
from .store import SchemaTooNew as SchemaTooNew
from .store import SQLiteStore as SQLiteStore
from .store import Store as Store

__all__ = [
    "AuditAction",
    "AuditDetail",
    "AuditOutcome",
    "AuditQuery",
    "AuditWriteFailed",
    "CommandSpec",
    "CommandStatus",
    "GLOBAL_PERMISSIONS",
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
    "require",
]
