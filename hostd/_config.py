"""hostd's settings for VM connections and discovery: frozen dataclasses.

These are the pieces the daemon's configuration is built from (the TOML file
``/etc/limiquantix/hostd.toml`` and its flags come with the node API): one
:class:`ConnectionConfig` shared by every VM connection, one
:class:`DiscoveryConfig` for the socket patterns, and a :class:`VMEntry` per
``[[vm]]`` table. Every duration is in seconds and says so in its name.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, final

from limiquantix.protocol.client import EVENT_BURST, EVENT_RATE_PER_S
from limiquantix.protocol.framing import MAX_FRAME_BYTES

__all__ = [
    "CHANNEL_NAME",
    "DEFAULT_LIBVIRT_CHANNEL_ROOT",
    "DEFAULT_SOCKET_DIR",
    "SOCKET_SUFFIX",
    "ConfigError",
    "ConnectionConfig",
    "DiscoveryConfig",
    "VMEntry",
    "valid_vm_id",
]

#: The virtio-serial port name the agent opens in the guest, and the name of
#: the socket file libvirt creates for it on the host.
CHANNEL_NAME: Final = "org.limiquantix.agent.0"
#: Where libvirt puts a ``<channel type='unix'>`` socket whose path it chooses.
DEFAULT_LIBVIRT_CHANNEL_ROOT: Final = "/var/lib/libvirt/qemu/channel/target"
#: The plain layout: ``<dir>/<vm-id>.agent.sock``.
DEFAULT_SOCKET_DIR: Final = "/run/limiquantix/vms"
SOCKET_SUFFIX: Final = ".agent.sock"

#: A VM id appears in URLs, metrics labels and file names: keep it plain.
_VM_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,254}")


class ConfigError(ValueError):
    """A setting is out of range."""


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class ConnectionConfig:
    """How hostd keeps one VM's agent connection. Shared by every VM."""

    ping_interval_s: float = 5.0
    """Seconds between pings of a connected agent."""
    ping_timeout_s: float = 5.0
    """A ping not answered within this many seconds is a miss."""
    unresponsive_after_misses: int = 3
    """Consecutive missed pings after which the agent is marked unresponsive."""
    connect_grace_s: float = 3.0
    """Seconds the socket may be open without a hello answer before the state
    says waiting_for_agent rather than connecting (a booting guest, or no agent)."""
    backoff_initial_s: float = 0.2
    """First delay before reconnecting after a failed or lost connection."""
    backoff_max_s: float = 15.0
    """Cap of the doubling reconnect delay."""
    backoff_jitter: float = 0.5
    """Fraction of each delay drawn at random (0..1), so that the VMs of a host
    restarted at once do not reconnect in lockstep."""
    socket_poll_s: float = 1.0
    """How often a missing socket is looked for (and a stale one re-checked while backing off)."""
    default_deadline_s: float = 30.0
    """Time allowed for a call whose caller names none."""
    deadline_margin_s: float = 5.0
    """Added to every call's own time budget: transfer and agent overhead, so a
    command that uses its whole timeout still gets its answer back."""
    max_frame_bytes: int = MAX_FRAME_BYTES
    """Largest frame accepted from or sent to an agent."""
    event_rate_per_s: float = EVENT_RATE_PER_S
    """Events (telemetry, ip_changed, ...) taken from one agent per second on
    average; over it, telemetry is coalesced to the newest and the rest dropped
    (counted in /metrics as rate_limited_events)."""
    event_burst: int = EVENT_BURST
    """Events taken at once after a quiet spell."""
    reader_work_per_s: float = 250_000_000
    """Decoding work one VM's reader may do per second (protocol/framing.py's
    units, ~1 ns each: a quarter of a core). Beyond it the reader pauses and
    the guest's writes wait, so a flooding guest gets a bounded share of hostd.
    Bulk transfers cost about one unit per byte (~250 MB/s per VM)."""

    def __post_init__(self) -> None:
        positive = (
            "ping_interval_s",
            "ping_timeout_s",
            "backoff_initial_s",
            "backoff_max_s",
            "socket_poll_s",
            "default_deadline_s",
            "event_rate_per_s",
            "reader_work_per_s",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0")
        if self.connect_grace_s < 0 or self.deadline_margin_s < 0:
            raise ConfigError("connect_grace_s and deadline_margin_s must be >= 0")
        if self.event_burst < 1:
            raise ConfigError("event_burst must be >= 1")
        if self.unresponsive_after_misses < 1:
            raise ConfigError("unresponsive_after_misses must be >= 1")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("backoff_max_s must be >= backoff_initial_s")
        if not 0 <= self.backoff_jitter <= 1:
            raise ConfigError("backoff_jitter must be within 0..1")
        if not 1024 <= self.max_frame_bytes <= MAX_FRAME_BYTES:
            raise ConfigError(f"max_frame_bytes must be within 1024..{MAX_FRAME_BYTES}")


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class DiscoveryConfig:
    """Where hostd looks for VM sockets besides its configured VMs."""

    libvirt_channel_root: str = DEFAULT_LIBVIRT_CHANNEL_ROOT
    """libvirt's channel directory (``domain-<N>-<name>/<channel_name>`` inside); empty: not scanned."""
    socket_dir: str = DEFAULT_SOCKET_DIR
    """Directory of ``<vm-id>.agent.sock`` sockets; empty: not scanned."""
    channel_name: str = CHANNEL_NAME
    """Socket file name inside a libvirt domain directory (the port's name)."""
    rescan_interval_s: float = 1.0
    """Seconds between scans for sockets that appeared or disappeared."""
    forget_after_s: float = 300.0
    """A discovered VM whose socket has been gone this long is dropped from the
    list (configured VMs stay listed, as no_socket)."""

    def __post_init__(self) -> None:
        if not self.rescan_interval_s > 0:
            raise ConfigError("rescan_interval_s must be > 0")
        if self.forget_after_s < 0:
            raise ConfigError("forget_after_s must be >= 0")
        if not self.channel_name or "/" in self.channel_name:
            raise ConfigError("channel_name must be a plain file name")


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class VMEntry:
    """A VM named in the configuration (a ``[[vm]]`` table)."""

    id: str
    """Stable id the API uses (``vm_id``)."""
    socket: str
    """Path of the VM's chardev socket (QEMU listens, hostd connects)."""
    name: str = ""
    """Display name; the id when empty."""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Free-form labels reported in VMStatus."""
    enabled: bool = True
    """False: listed as disabled, never connected."""

    def __post_init__(self) -> None:
        if not _VM_ID_RE.fullmatch(self.id):
            raise ConfigError(f"vm id {self.id!r} must be 1-255 letters, digits or _.:@+- (not first)")
        if not self.socket.startswith("/"):
            raise ConfigError(f"vm {self.id}: socket must be an absolute path")
        # A read-only copy: the entry is frozen, its labels should be too.
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))


def valid_vm_id(vm_id: str) -> bool:
    """Whether ``vm_id`` may name a VM (discovered names are checked too)."""
    return _VM_ID_RE.fullmatch(vm_id) is not None
