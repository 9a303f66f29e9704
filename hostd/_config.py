"""hostd's configuration: :class:`HostdConfig`, read from TOML, every key a flag.

One :class:`ConnectionConfig` is shared by every VM connection, one
:class:`DiscoveryConfig` holds the socket patterns, and a :class:`VMEntry` stands
for each ``[[vm]]`` table. Every duration is in seconds and says so in its name.

Configuration is ``/etc/limiquantix/hostd.toml`` (or ``--config``)::

    listen = "127.0.0.1:8081"        # TCP; "" for none
    unix_socket = "/run/limiquantix/hostd.sock"   # optional
    token_file = "/etc/limiquantix/hostd.token"   # or token = "...", or LQX_HOSTD_TOKEN
    metrics_open = false              # true: /metrics without the bearer token
    max_request_bytes_in_flight = 268435456   # request bytes calls in progress may hold

    # HTTPS (HTTP/2 and HTTP/1.1 by ALPN) on the TCP listener; without: plain HTTP, for loopback development.
    tls_cert_file = "/etc/limiquantix/pki/hostd.pem"     # SANs: the names the controller calls it by
    tls_key_file = "/etc/limiquantix/pki/hostd.key"
    tls_client_ca_file = "/etc/limiquantix/pki/ca.pem"   # mutual TLS: callers need a certificate from this CA

    # Optional: register with a controller and heartbeat the VM list.
    controller_url = "https://controller:8080"
    controller_token_file = "/etc/limiquantix/controller.token"  # a token with the `node` role
    controller_ca_file = "/etc/limiquantix/pki/ca.pem"           # verifies the controller's certificate
    controller_cert_file = "/etc/limiquantix/pki/node-1-client.pem"   # hostd's client certificate (CN: node id)
    controller_key_file = "/etc/limiquantix/pki/node-1-client.key"
    controller_insecure = false       # true: a token over plain http:// to another machine is allowed
    advertise_url = "https://10.0.0.5:8081"       # default: from listen
    heartbeat_interval_s = 5

    [connection]                      # ConnectionConfig
    ping_interval_s = 5.0

    [discovery]                       # DiscoveryConfig
    socket_dir = "/run/limiquantix/vms"

    [[vm]]                            # VMEntry, any number
    id = "web-1"
    socket = "/var/lib/limiquantix/web-1.agent.sock"
    labels = { role = "web" }

Top-level keys are also flags (``--listen``, ``--token-file`` ...), as are
``--socket-dir``, ``--libvirt-channel-root`` and ``--vm ID=SOCKET``; flags win.
Secrets are never flags (a command line is visible to every user in ``ps``):
the tokens come from their files (``token_file``, ``controller_token_file``),
else the environment (``LQX_HOSTD_TOKEN``, ``LQX_HOSTD_CONTROLLER_TOKEN``), else
the TOML file's ``token`` / ``controller_token``. ``--token`` and
``--controller-token`` are refused with a message saying so.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, final

from limiquantix.protocol import (
    EVENT_BURST,
    EVENT_RATE_PER_S,
    MAX_FRAME_BYTES,
    InsecureTransportError,
    TLSFiles,
    __version__,
    check_token_transport,
    errors,
)
from limiquantix.protocol import config as config_loader
from limiquantix.protocol.config import (
    ConfigError,
    check_listen,
    check_log_format,
    check_server_tls,
    check_together,
)
from limiquantix.protocol.limits import check_id
from limiquantix.protocol.rpc.server import ServerTLS

__all__ = [
    "CHANNEL_NAME",
    "CONTROLLER_TOKEN_ENV",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_LIBVIRT_CHANNEL_ROOT",
    "DEFAULT_SOCKET_DIR",
    "MIN_TOKEN_CHARS",
    "SOCKET_SUFFIX",
    "TOKEN_ENV",
    "ConfigError",
    "ConnectionConfig",
    "DiscoveryConfig",
    "HostdConfig",
    "VMEntry",
    "load_config",
    "vm_id_problem",
]

#: The virtio-serial port name the agent opens in the guest, and the name of
#: the socket file libvirt creates for it on the host.
CHANNEL_NAME: Final = "org.limiquantix.agent.0"
#: Where libvirt puts a ``<channel type='unix'>`` socket whose path it chooses.
DEFAULT_LIBVIRT_CHANNEL_ROOT: Final = "/var/lib/libvirt/qemu/channel/target"
#: The plain layout: ``<dir>/<vm-id>.agent.sock``.
DEFAULT_SOCKET_DIR: Final = "/run/limiquantix/vms"
SOCKET_SUFFIX: Final = ".agent.sock"


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
    """Decoding work one VM's reader may do per second (protocol/_framing.py's
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
        # A VM id appears in URLs, metrics labels and file names: plain.
        _check_plain_id(self.id, "vm id")
        if not self.socket.startswith("/"):
            raise ConfigError(f"vm {self.id}: socket must be an absolute path")
        # A read-only copy: the entry is frozen, its labels should be too.
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))


def _check_plain_id(value: str, what: str) -> None:
    """The one rule of ids (:func:`limiquantix.protocol.limits.check_id`), plain: the
    controller and every request take what hostd lists (at most MAX_ID_BYTES).

    Raises:
        ConfigError: naming ``what``, the id and the rule.
    """
    try:
        check_id(value, what, plain=True)
    except errors.InvalidArgument as exc:
        raise ConfigError(str(exc)) from None


def vm_id_problem(vm_id: str) -> str | None:
    """Why ``vm_id`` may not name a VM (discovered names are checked too), or None."""
    try:
        _check_plain_id(vm_id, "vm id")
    except ConfigError as exc:
        return str(exc)
    return None


# ------------------------------------------------------- the daemon's configuration

DEFAULT_CONFIG_PATH: Final = Path("/etc/limiquantix/hostd.toml")
#: Default seconds between heartbeats to the controller.
DEFAULT_HEARTBEAT_INTERVAL_S: Final = 5.0
#: The environment variables that may hold hostd's token and its controller token.
TOKEN_ENV: Final = "LQX_HOSTD_TOKEN"
#: Request bytes the node API's calls in progress may hold (beyond: resource_exhausted).
#: Four 60 MiB file writes at once; each costs a small multiple of its body in memory.
DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT: Final = 256 * 1024 * 1024
CONTROLLER_TOKEN_ENV: Final = "LQX_HOSTD_CONTROLLER_TOKEN"
#: hostd's own bearer token guards every guest's root shell: a guessable one is refused.
MIN_TOKEN_CHARS: Final = 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostdConfig:
    """Every setting of hostd."""

    listen: str = "127.0.0.1:8081"
    """TCP address of the node API (host:port); empty: no TCP listener."""
    unix_socket: str = ""
    """Unix socket path of the node API; empty: none."""
    token: str = dataclasses.field(default="", metadata={"secret_env": TOKEN_ENV})
    """Bearer token every RPC (and /metrics) must carry (prefer token_file; never a flag)."""
    token_file: str = ""
    """File holding the bearer token (first line)."""
    metrics_open: bool = False
    """Serve /metrics without the bearer token (it names every method's call counts)."""
    max_request_bytes_in_flight: int = DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT
    """Request bytes all calls in progress may hold; beyond, calls answer resource_exhausted."""
    node_id: str = dataclasses.field(default_factory=socket.gethostname)
    """This host's name in the controller."""
    controller_url: str = ""
    """The controller to register with (http://host:port); empty: standalone."""
    controller_token: str = dataclasses.field(default="", metadata={"secret_env": CONTROLLER_TOKEN_ENV})
    """Bearer token for the controller (a token with the ``node`` role; prefer controller_token_file; never a flag)."""
    controller_token_file: str = ""
    """File holding the controller token (first line)."""
    advertise_url: str = ""
    """URL of this node API as the controller should call it; default http(s)://<listen>."""
    tls_cert_file: str = ""
    """PEM certificate of the node API (with tls_key_file: HTTPS on ``listen``); empty: plain HTTP."""
    tls_key_file: str = ""
    """Its private key."""
    tls_client_ca_file: str = ""
    """CA whose client certificate every caller must present (mutual TLS); empty: none asked."""
    controller_ca_file: str = ""
    """CA the controller's certificate must chain to (https:// controller_url); empty: the system's."""
    controller_cert_file: str = ""
    """hostd's client certificate for the controller (its common name: the node id); empty: none."""
    controller_key_file: str = ""
    """Its private key."""
    controller_insecure: bool = False
    """Allow sending the controller token over plain http:// to another machine (never do this)."""
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    """Seconds between heartbeats to the controller."""
    log_format: str = "text"
    """text or json."""
    log_level: str = "info"
    """debug, info, warning or error."""
    connection: ConnectionConfig = dataclasses.field(default_factory=ConnectionConfig)
    """The ``[connection]`` table."""
    discovery: DiscoveryConfig = dataclasses.field(default_factory=DiscoveryConfig)
    """The ``[discovery]`` table."""
    vms: tuple[VMEntry, ...] = dataclasses.field(default=(), metadata={"key": "vm"})
    """The ``[[vm]]`` tables."""

    def __post_init__(self) -> None:
        if not self.listen and not self.unix_socket:
            raise ConfigError("nothing to listen on: set listen and/or unix_socket")
        if self.listen:
            check_listen(self.listen)
        check_log_format(self.log_format)
        if self.controller_url:
            if not self.controller_url.startswith(("http://", "https://")):
                raise ConfigError("controller_url must be http:// or https://")
            # The controller refuses any other node id at registration.
            _check_plain_id(self.node_id, "node_id")
            if not self.controller_token and not self.controller_token_file:
                raise ConfigError(f"controller_url needs controller_token_file (or {CONTROLLER_TOKEN_ENV})")
            try:
                check_token_transport(
                    self.controller_url, insecure=self.controller_insecure, what="the controller token",
                    flag="controller_insecure = true",
                )  # fmt: skip
            except InsecureTransportError as exc:
                raise ConfigError(str(exc)) from None
        check_server_tls(self)
        check_together(self, "controller_cert_file", "controller_key_file")
        if not self.heartbeat_interval_s > 0:
            raise ConfigError("heartbeat_interval_s must be > 0")
        if self.max_request_bytes_in_flight < 1:
            raise ConfigError("max_request_bytes_in_flight must be > 0")

    def bearer_token(self) -> str:
        """The token every call must carry.

        Raises:
            ConfigError: none configured, or the file is unreadable or empty.
        """
        return _secret(self.token, self.token_file, "token", TOKEN_ENV)

    def controller_bearer_token(self) -> str:
        """The token hostd presents to the controller.

        Raises:
            ConfigError: none configured, or the file is unreadable or empty.
        """
        return _secret(self.controller_token, self.controller_token_file, "controller_token", CONTROLLER_TOKEN_ENV)

    def server_tls(self) -> ServerTLS | None:
        """The node API's TLS settings; None: plain HTTP."""
        if not self.tls_cert_file:
            return None
        return ServerTLS(
            cert_file=self.tls_cert_file, key_file=self.tls_key_file, client_ca_file=self.tls_client_ca_file
        )

    def controller_tls(self) -> TLSFiles:
        """How hostd verifies the controller and proves who it is."""
        return TLSFiles(
            ca_file=self.controller_ca_file, cert_file=self.controller_cert_file, key_file=self.controller_key_file
        )

    def check_tls(self) -> None:
        """Load every certificate and key once, so that a bad file stops hostd at start with its name.

        Raises:
            ConfigError: a file cannot be used (named, with the reason).
        """
        # Imported here: protocol.daemon loads prometheus_client, which only a running hostd needs.
        from limiquantix.protocol import check_tls_files

        controller = self.controller_tls() if self.controller_url.startswith("https://") else None
        check_tls_files(self.server_tls(), controller)


def _secret(value: str, file: str, what: str, env: str) -> str:
    """A token from its file (first word) when one is named, else ``value``.

    Raises:
        ConfigError: the file is unreadable or empty, or there is no token at all.
    """
    if file:
        try:
            words = Path(file).read_text().split()
        except OSError as exc:
            raise ConfigError(f"cannot read {what}_file {file}: {exc.strerror}") from exc
        value = words[0] if words else ""
        if not value:
            raise ConfigError(f"{what}_file {file} is empty")
    if not value:
        name = "bearer token" if what == "token" else what
        raise ConfigError(f"a {name} is required: set {what}_file or {env}")
    return value


#: The flags that set keys of [discovery] (the rest of it is for the file).
_DISCOVERY_FLAGS: Final = ("socket_dir", "libvirt_channel_root")


def _merge_flags(data: dict[str, Any], flags: dict[str, Any]) -> None:
    """--socket-dir and --libvirt-channel-root into [discovery], each --vm into [[vm]]."""
    discovery = dict(data.get("discovery", {}))
    for key in _DISCOVERY_FLAGS:
        if key in flags:
            discovery[key] = flags.pop(key)
    if discovery:
        data["discovery"] = discovery
    extra_vms = []
    for spec in flags.pop("vm"):
        vm_id, sep, sock = spec.partition("=")
        if not sep:
            raise ConfigError(f"--vm takes ID=SOCKET, not {spec!r}")
        extra_vms.append({"id": vm_id, "socket": sock})
    if extra_vms:
        data["vm"] = [*data.get("vm", []), *extra_vms]


def build_arg_parser() -> argparse.ArgumentParser:
    """hostd's command line: --config, --version, a flag per top-level key, --socket-dir,
    --libvirt-channel-root and --vm."""
    p = argparse.ArgumentParser(
        prog="limiquantix-hostd",
        description="LimiQuantix host daemon: the node API over every VM's agent. Every key of the TOML file is also a flag;"
        f" flags win. Tokens come from files or the environment ({TOKEN_ENV}, {CONTROLLER_TOKEN_ENV}), never flags.",
        formatter_class=config_loader.FieldHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"limiquantix-hostd {__version__}")
    p.add_argument("--config", type=Path, help=f"TOML file (default {DEFAULT_CONFIG_PATH} when it exists)")
    config_loader.add_field_flags(p, HostdConfig)
    config_loader.add_field_flags(p, DiscoveryConfig, only=_DISCOVERY_FLAGS)
    p.add_argument(
        "--vm", action="append", default=[], metavar="ID=SOCKET", help="a VM and its chardev socket (repeatable)"
    )
    return p


def load_config(argv: Sequence[str] | None = None) -> HostdConfig:
    """Flags and the TOML file; a token's environment variable over the file's value (a token
    file named anywhere wins over both: :meth:`HostdConfig.bearer_token`).

    Raises:
        ConfigError: unreadable or invalid configuration.
    """
    return config_loader.load(HostdConfig, build_arg_parser(), argv, DEFAULT_CONFIG_PATH, merge_flags=_merge_flags)[0]
