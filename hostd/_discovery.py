"""Finding VMs: configured ones, and sockets that appear and disappear.

:class:`VMRegistry` keeps one :class:`~.vmconn.VMConnection` per VM, each
running in the registry's nursery. VMs come from three places, in this order of
precedence when they name the same id:

1. **configuration**: :class:`~.config.VMEntry` (id, name, labels, socket).
   Always listed; a missing socket shows as ``no_socket``.
2. **libvirt's channel layout**:
   ``<libvirt_channel_root>/domain-<N>-<name>/<channel_name>``, the socket
   libvirt creates for a ``<channel type='unix'>`` without a source path. The
   id and name are ``<name>`` from the directory; libvirt shortens it to 20
   characters there (``virDomainDefGetShortName``), so give long-named VMs a
   config entry. ``<N>`` is the domain's run id, new at every start: when the
   same name shows up under a new directory, the connection follows it, and of
   two directories of one name the higher ``<N>`` (the newer run) wins.
3. **a plain directory**: ``<socket_dir>/<vm-id>.agent.sock``.

The roots are rescanned every ``rescan_interval_s`` (polling: cheap for a few
hundred directory entries, and no inotify dependency). A discovered VM whose
socket is gone shows ``no_socket`` and reconnects when it comes back; after
``forget_after_s`` in ``no_socket`` and absent from the scan it is dropped from
the list. Configured VMs are never dropped.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, final

import trio

from limiquantix.protocol import errors

from ._config import SOCKET_SUFFIX, ConnectionConfig, DiscoveryConfig, VMEntry, vm_id_problem
from ._vmconn import VMConnection, VMState

__all__ = ["SOURCE_CONFIG", "SOURCE_DIRECTORY", "SOURCE_LIBVIRT", "FoundSocket", "VMRegistry", "scan_sockets"]

log = logging.getLogger(__name__)

SOURCE_CONFIG: Final = "config"
SOURCE_LIBVIRT: Final = "libvirt"
SOURCE_DIRECTORY: Final = "directory"
#: Lower wins when two sources name the same id.
_PRECEDENCE: Final = {SOURCE_CONFIG: 0, SOURCE_LIBVIRT: 1, SOURCE_DIRECTORY: 2}
_LIBVIRT_DIR_RE: Final = re.compile(r"domain-(\d+)-(.+)")


@final
@dataclass(frozen=True, slots=True)
class FoundSocket:
    """A VM socket found by a scan."""

    vm_id: str
    name: str
    path: str
    source: str
    #: libvirt's domain run id (0 for the plain directory): the newer run wins.
    run_id: int = 0


def _scan_libvirt(root: str, channel_name: str, refused: dict[str, str]) -> Iterator[FoundSocket]:
    try:
        entries = list(os.scandir(root))
    except OSError:
        return  # no libvirt on this host, or not yet
    for entry in entries:
        match = _LIBVIRT_DIR_RE.fullmatch(entry.name)
        if match is None:
            continue
        path = os.path.join(entry.path, channel_name)
        problem = vm_id_problem(match.group(2))
        if problem is not None:
            refused[entry.path] = problem
        elif os.path.exists(path):
            name = match.group(2)
            yield FoundSocket(name, name, path, SOURCE_LIBVIRT, int(match.group(1)))


def _scan_directory(directory: str, refused: dict[str, str]) -> Iterator[FoundSocket]:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not entry.name.endswith(SOCKET_SUFFIX):
            continue
        vm_id = entry.name[: -len(SOCKET_SUFFIX)]
        problem = vm_id_problem(vm_id)
        if problem is not None:
            refused[entry.path] = problem
        else:
            yield FoundSocket(vm_id, vm_id, entry.path, SOURCE_DIRECTORY)


def scan_sockets(config: DiscoveryConfig, refused: dict[str, str] | None = None) -> dict[str, FoundSocket]:
    """The VM sockets present under the configured roots, by VM id (blocking I/O).

    Of several sockets for one id, libvirt's beat the plain directory's, and a
    newer libvirt run (higher domain id) beats an older one.

    ``refused``: filled with the paths whose name is not a VM id hostd can list
    (too long, odd characters), each with why: no request could name that VM.
    """
    found: dict[str, FoundSocket] = {}
    candidates: list[FoundSocket] = []
    refused = {} if refused is None else refused
    if config.libvirt_channel_root:
        candidates += _scan_libvirt(config.libvirt_channel_root, config.channel_name, refused)
    if config.socket_dir:
        candidates += _scan_directory(config.socket_dir, refused)
    for sock in candidates:
        have = found.get(sock.vm_id)
        if have is None or (_PRECEDENCE[sock.source], -sock.run_id) < (_PRECEDENCE[have.source], -have.run_id):
            found[sock.vm_id] = sock
    return found


@final
class VMRegistry:
    """Every VM of this host, each with its running :class:`VMConnection`.

    Args:
        entries: configured VMs.
        discovery: socket patterns and rescan timing.
        connection: shared by every VMConnection.

    Run :meth:`run` in a nursery (or use :meth:`open`); read from anywhere.

    Raises:
        ValueError: two entries share an id.
    """

    def __init__(
        self,
        *,
        entries: Sequence[VMEntry] = (),
        discovery: DiscoveryConfig | None = None,
        connection: ConnectionConfig | None = None,
    ) -> None:
        ids = [e.id for e in entries]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"VM ids configured more than once: {', '.join(duplicates)}")
        self.entries = tuple(entries)
        self.discovery = discovery or DiscoveryConfig()
        self.connection_config = connection or ConnectionConfig()
        self._conns: dict[str, VMConnection] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        #: Ids already warned about (a discovered socket shadowed by config).
        self._shadow_warned: set[str] = set()
        #: Paths of the last scan whose name is no VM id (warned about once while present).
        self.refused: dict[str, str] = {}
        self.scans = 0

    # -- reading ---------------------------------------------------------------

    def get(self, vm_id: str) -> VMConnection:
        """The VM's connection.

        Raises:
            NotFound: no such VM on this host.
        """
        conn = self._conns.get(vm_id)
        if conn is None:
            raise errors.NotFound(f"no VM {vm_id!r} on this host", reason="vm_not_found")
        return conn

    def connections(self) -> list[VMConnection]:
        """Every VM's connection, sorted by id."""
        return [self._conns[k] for k in sorted(self._conns)]

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, vm_id: object) -> bool:
        return vm_id in self._conns

    async def wait_changed(self) -> None:
        """Return at the next VM added or removed (bounded by the caller)."""
        await self._changed.wait()

    async def wait_until(self, predicate: Callable[[VMRegistry], bool]) -> None:
        """Return once ``predicate(self)`` holds; re-checked whenever a VM comes,
        goes or changes (bounded by the caller's ``trio.fail_after``)."""
        while True:
            # The events are taken before the predicate is checked: a change
            # between the check and the watchers starting still wakes us.
            events = [self._changed, *(conn.changed_event for conn in self._conns.values())]
            if predicate(self):
                return
            async with trio.open_nursery() as nursery:

                async def watch(event: trio.Event) -> None:
                    await event.wait()
                    nursery.cancel_scope.cancel()

                for event in events:
                    nursery.start_soon(watch, event)

    # -- running ---------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        *,
        entries: Sequence[VMEntry] = (),
        discovery: DiscoveryConfig | None = None,
        connection: ConnectionConfig | None = None,
    ) -> AsyncIterator[VMRegistry]:
        """Run a registry for the duration of the block (configured VMs and a first scan done)."""
        registry = cls(entries=entries, discovery=discovery, connection=connection)
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)
            yield registry
            nursery.cancel_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every VM's connection; rescan until cancelled.

        ``task_status.started()`` once configured VMs are added and the first
        scan applied.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for entry in self.entries:
                    self._add(
                        VMConnection(
                            entry.id,
                            entry.socket,
                            name=entry.name,
                            labels=entry.labels,
                            config=self.connection_config,
                            enabled=entry.enabled,
                            source=SOURCE_CONFIG,
                        )
                    )
                await self.rescan()
                task_status.started()
                while True:
                    await trio.sleep(self.discovery.rescan_interval_s)
                    await self.rescan()
            finally:
                self._nursery = None

    async def rescan(self) -> None:
        """Scan the socket roots now and apply what changed."""
        refused: dict[str, str] = {}
        try:
            found = await trio.to_thread.run_sync(scan_sockets, self.discovery, refused)
        except Exception:
            # A scan that fails (a root replaced mid-scan) is retried next time.
            log.exception("scanning for VM sockets failed")
            return
        self.scans += 1
        for path, problem in refused.items():
            if path not in self.refused:
                # %r: the name is whatever the directory holds (controls included).
                log.warning("VM socket %r not listed: %s", path, problem)
        self.refused = refused
        self._apply(found)

    def _apply(self, found: dict[str, FoundSocket]) -> None:
        now = trio.current_time()
        for vm_id, sock in found.items():
            conn = self._conns.get(vm_id)
            if conn is None:
                log.info("vm %s found (%s): %s", vm_id, sock.source, sock.path)
                self._add(
                    VMConnection(vm_id, sock.path, name=sock.name, config=self.connection_config, source=sock.source)
                )
            elif conn.source == SOURCE_CONFIG:
                if sock.path != conn.socket_path and vm_id not in self._shadow_warned:
                    self._shadow_warned.add(vm_id)
                    log.warning("vm %s: configured socket %s wins over %s", vm_id, conn.socket_path, sock.path)
            else:
                conn.source = sock.source
                conn.set_socket_path(sock.path)
        forget = self.discovery.forget_after_s
        for vm_id, conn in list(self._conns.items()):
            if (
                conn.source != SOURCE_CONFIG
                and vm_id not in found
                and conn.state is VMState.NO_SOCKET
                and now - conn.state_since >= forget
            ):
                log.info("vm %s: socket gone for %.0f s: forgotten", vm_id, now - conn.state_since)
                self._remove(vm_id)

    def _add(self, conn: VMConnection) -> None:
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._conns[conn.vm_id] = conn
        self._scopes[conn.vm_id] = scope

        async def run_conn() -> None:
            with scope:
                await conn.run()

        self._nursery.start_soon(run_conn, name=f"vm:{conn.vm_id}")
        self._notify()

    def _remove(self, vm_id: str) -> None:
        self._conns.pop(vm_id)
        self._scopes.pop(vm_id).cancel()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
