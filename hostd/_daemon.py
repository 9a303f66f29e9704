"""The hostd process: configuration, the HTTP app (node API, /healthz, /metrics), serving.

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

    [connection]                      # hostd.config.ConnectionConfig
    ping_interval_s = 5.0

    [discovery]                       # hostd.config.DiscoveryConfig
    socket_dir = "/run/limiquantix/vms"

    [[vm]]                            # hostd.config.VMEntry, any number
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

With ``controller_url`` set, hostd calls the controller's
``NodeRegistryService.RegisterNode`` at start (its node id, the URL of its
node API, its own bearer token so the controller can call it, and its VM
list), then ``Heartbeat`` every ``heartbeat_interval_s`` with the VM list.
A controller that is down or refuses is retried with capped backoff; hostd
keeps serving meanwhile. Without ``controller_url`` it runs standalone.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import hmac
import json
import logging
import os
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, final

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from quart import Response, request
from quart_trio import QuartTrio

from limiquantix.protocol import __version__, errors
from limiquantix.protocol._gen import vm_service_pb2 as api_pb
from limiquantix.protocol.configfile import read_toml
from limiquantix.protocol.daemon import PROMETHEUS_CONTENT_TYPE, RpcMetrics, stop_on_signals
from limiquantix.protocol.logs import setup_logging
from limiquantix.protocol.rpc import ClientTLS, RpcClient, Target, error_body
from limiquantix.protocol.rpc.server import (
    CallContext,
    InFlightBytes,
    Router,
    ServerTLS,
    Service,
    http_config,
    serve_http,
    server_ssl_context,
    transport_summary,
)
from limiquantix.protocol.tls import (
    InsecureTransportError,
    TLSConfigError,
    TLSFiles,
    check_token_transport,
    client_ssl_context,
)

from ._api import SERVICE, NodeAPI, heartbeat_status, vm_status
from ._config import ConfigError, ConnectionConfig, DiscoveryConfig, VMEntry
from ._discovery import VMRegistry
from ._vmconn import ConnectionCounters, VMState

__all__ = [
    "CONTROLLER_TOKEN_ENV",
    "DEFAULT_CONFIG_PATH",
    "TOKEN_ENV",
    "HostdConfig",
    "build_app",
    "load_config",
    "main",
    "serve",
]

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH: Final = Path("/etc/limiquantix/hostd.toml")
#: On SIGTERM, requests in flight get this long to finish.
GRACEFUL_TIMEOUT_S: Final = 5.0
#: Default seconds between heartbeats to the controller.
DEFAULT_HEARTBEAT_INTERVAL_S: Final = 5.0
#: First retry delay when the controller is down; doubles up to the interval
#: (capped at REGISTER_BACKOFF_MAX_S), with jitter so that the hosts of a
#: restarted controller do not all come back in the same instant.
REGISTER_BACKOFF_INITIAL_S: Final = 0.5
REGISTER_BACKOFF_MAX_S: Final = 30.0
#: Time allowed for one RegisterNode or Heartbeat call.
CONTROLLER_CALL_TIMEOUT_S: Final = 10.0
#: The environment variables that may hold hostd's token and its controller token.
TOKEN_ENV: Final = "LQX_HOSTD_TOKEN"
#: Request bytes the node API's calls in progress may hold (beyond: resource_exhausted).
#: Four 60 MiB file writes at once; each costs a small multiple of its body in memory.
DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT: Final = 256 * 1024 * 1024
CONTROLLER_TOKEN_ENV: Final = "LQX_HOSTD_CONTROLLER_TOKEN"
#: hostd's own bearer token guards every guest's root shell: a guessable one is refused.
MIN_TOKEN_CHARS: Final = 16
_REGISTRY_SERVICE: Final = "limiquantix.compute.v1.NodeRegistryService"
#: glibc's mallopt parameter, and the size from which allocations are mmapped.
_M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD_BYTES: Final = 128 * 1024


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class HostdConfig:
    """Every setting of hostd."""

    listen: str = "127.0.0.1:8081"
    """TCP address of the node API (host:port); empty: no TCP listener."""
    unix_socket: str = ""
    """Unix socket path of the node API; empty: none."""
    token: str = ""
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
    controller_token: str = ""
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
    discovery: DiscoveryConfig = dataclasses.field(default_factory=DiscoveryConfig)
    vms: tuple[VMEntry, ...] = ()

    def __post_init__(self) -> None:
        if not self.listen and not self.unix_socket:
            raise ConfigError("nothing to listen on: set listen and/or unix_socket")
        if self.listen:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"listen must be host:port, not {self.listen!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log_format must be text or json")
        if self.controller_url:
            if not self.controller_url.startswith(("http://", "https://")):
                raise ConfigError("controller_url must be http:// or https://")
            if not self.controller_token and not self.controller_token_file:
                raise ConfigError(f"controller_url needs controller_token_file (or {CONTROLLER_TOKEN_ENV})")
            try:
                check_token_transport(
                    self.controller_url, insecure=self.controller_insecure, what="the controller token",
                    flag="controller_insecure = true",
                )  # fmt: skip
            except InsecureTransportError as exc:
                raise ConfigError(str(exc)) from None
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if bool(self.controller_cert_file) != bool(self.controller_key_file):
            raise ConfigError("controller_cert_file and controller_key_file go together")
        if not self.heartbeat_interval_s > 0:
            raise ConfigError("heartbeat_interval_s must be > 0")
        if self.max_request_bytes_in_flight < 1:
            raise ConfigError("max_request_bytes_in_flight must be > 0")

    def bearer_token(self) -> str:
        """The token every call must carry.

        Raises:
            ConfigError: none configured, or the file is unreadable or empty.
        """
        return _secret(self.token, self.token_file, "token")

    def controller_bearer_token(self) -> str:
        """The token hostd presents to the controller.

        Raises:
            ConfigError: none configured, or the file is unreadable or empty.
        """
        return _secret(self.controller_token, self.controller_token_file, "controller_token")

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
        try:
            if (tls := self.server_tls()) is not None:
                server_ssl_context(tls)
            if self.controller_url.startswith("https://"):
                client_ssl_context(self.controller_tls())
        except TLSConfigError as exc:
            raise ConfigError(str(exc)) from None


def _secret(value: str, file: str, what: str) -> str:
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
        raise ConfigError(f"a {name} is required: set {what}_file or {_SECRET_KEYS[what]}")
    return value


_SCALARS: Final = (
    "listen",
    "unix_socket",
    "token",
    "token_file",
    "node_id",
    "log_format",
    "log_level",
    "controller_url",
    "controller_token",
    "controller_token_file",
    "advertise_url",
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "controller_ca_file",
    "controller_cert_file",
    "controller_key_file",
)
#: true/false keys (flags without a value turn them on).
_BOOLEANS: Final = ("metrics_open", "controller_insecure")
#: Keys that hold a secret: TOML or the environment only, never flags.
_SECRET_KEYS: Final = {"token": TOKEN_ENV, "controller_token": CONTROLLER_TOKEN_ENV}


def _sub(cls: type, data: Any, where: str) -> Any:
    """``cls`` from a TOML table.

    Raises:
        ConfigError: not a table, an unknown key (named, with the known ones), a bad value.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in [{where}] (known: {', '.join(known)})")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"[{where}]: {exc}") from exc


def config_from_mapping(data: dict[str, Any]) -> HostdConfig:
    """Build a HostdConfig from parsed TOML (plus flag overrides).

    Raises:
        ConfigError: unknown keys, wrong types or values.
    """
    data = dict(data)
    known = {
        *_SCALARS,
        *_BOOLEANS,
        "heartbeat_interval_s",
        "max_request_bytes_in_flight",
        "connection",
        "discovery",
        "vm",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for key in _SCALARS:
        if key in data:
            if not isinstance(data[key], str):
                raise ConfigError(f"{key} must be a string")
            kwargs[key] = data[key]
    if "heartbeat_interval_s" in data:
        try:
            kwargs["heartbeat_interval_s"] = float(data["heartbeat_interval_s"])
        except (TypeError, ValueError):
            raise ConfigError("heartbeat_interval_s must be a number") from None
    if "max_request_bytes_in_flight" in data:
        if isinstance(data["max_request_bytes_in_flight"], bool) or not isinstance(
            data["max_request_bytes_in_flight"], int
        ):
            raise ConfigError("max_request_bytes_in_flight must be a whole number of bytes")
        kwargs["max_request_bytes_in_flight"] = data["max_request_bytes_in_flight"]
    for key in _BOOLEANS:
        if key in data:
            if not isinstance(data[key], bool):
                raise ConfigError(f"{key} must be true or false")
            kwargs[key] = data[key]
    if "connection" in data:
        kwargs["connection"] = _sub(ConnectionConfig, data["connection"], "connection")
    if "discovery" in data:
        kwargs["discovery"] = _sub(DiscoveryConfig, data["discovery"], "discovery")
    vms = data.get("vm", [])
    if not isinstance(vms, list):
        raise ConfigError("[[vm]] must be an array of tables")
    kwargs["vms"] = tuple(_sub(VMEntry, v, "[vm]") for v in vms)
    return HostdConfig(**kwargs)


class _RefuseSecret(argparse.Action):
    """``--token`` / ``--controller-token``: a secret on the command line is visible in ``ps``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
        key = self.dest
        parser.error(
            f"{option} is refused: a token on the command line is visible to every user (ps); "
            f"use --{key.replace('_', '-')}-file FILE or the environment variable {_SECRET_KEYS[key]}"
        )


def _field_docs(cls: type) -> dict[str, str]:
    """A dataclass's attribute docstrings (the string under each field): --help's texts,
    written once beside the field they describe."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # pragma: no cover - no source shipped
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for stmt, after in zip(body, body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)
        ):  # fmt: skip
            docs[stmt.target.id] = " ".join(after.value.value.split()).replace("``", "")
    return docs


def build_arg_parser() -> argparse.ArgumentParser:
    docs = {**_field_docs(HostdConfig), **_field_docs(DiscoveryConfig)}
    p = argparse.ArgumentParser(
        prog="limiquantix-hostd",
        description="LimiQuantix host daemon: the node API over every VM's agent. Every key of the TOML file is also a flag;"
        f" flags win. Tokens come from files or the environment ({TOKEN_ENV}, {CONTROLLER_TOKEN_ENV}), never flags.",
    )
    p.add_argument("--version", action="version", version=f"limiquantix-hostd {__version__}")
    p.add_argument("--config", type=Path, help=f"TOML file (default {DEFAULT_CONFIG_PATH} when it exists)")
    for key in _SCALARS:
        if key in _SECRET_KEYS:
            # Refused with a reason rather than "unrecognized arguments".
            p.add_argument(
                "--" + key.replace("_", "-"),
                dest=key,
                action=_RefuseSecret,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
        else:
            p.add_argument("--" + key.replace("_", "-"), dest=key, default=argparse.SUPPRESS, help=docs.get(key))
    p.add_argument(
        "--metrics-open", action="store_true", default=argparse.SUPPRESS, help="serve /metrics without the bearer token"
    )
    p.add_argument(
        "--controller-insecure",
        action="store_true",
        default=argparse.SUPPRESS,
        help="allow the controller token over plain http:// to another machine (anyone on the path reads it)",
    )
    p.add_argument(
        "--heartbeat-interval-s", type=float, default=argparse.SUPPRESS, help=docs.get("heartbeat_interval_s")
    )
    p.add_argument(
        "--max-request-bytes-in-flight",
        type=int,
        default=argparse.SUPPRESS,
        help=docs.get("max_request_bytes_in_flight"),
    )
    p.add_argument("--socket-dir", default=argparse.SUPPRESS, help=docs.get("socket_dir"))
    p.add_argument("--libvirt-channel-root", default=argparse.SUPPRESS, help=docs.get("libvirt_channel_root"))
    p.add_argument(
        "--vm", action="append", default=[], metavar="ID=SOCKET", help="a VM and its chardev socket (repeatable)"
    )
    return p


def load_config(argv: Sequence[str] | None = None) -> HostdConfig:
    """Flags and the TOML file.

    Raises:
        ConfigError: unreadable or invalid configuration.
    """
    ns = vars(build_arg_parser().parse_args(argv))
    data = read_toml(ns.pop("config"), DEFAULT_CONFIG_PATH, ConfigError)
    discovery = dict(data.get("discovery", {}))
    for key in ("socket_dir", "libvirt_channel_root"):
        if key in ns:
            discovery[key] = ns.pop(key)
    if discovery:
        data["discovery"] = discovery
    extra_vms = []
    for spec in ns.pop("vm"):
        vm_id, sep, sock = spec.partition("=")
        if not sep:
            raise ConfigError(f"--vm takes ID=SOCKET, not {spec!r}")
        extra_vms.append({"id": vm_id, "socket": sock})
    if extra_vms:
        data["vm"] = [*data.get("vm", []), *extra_vms]
    data.update(ns)
    # The environment over the TOML value; a file named anywhere over both.
    for key, env in _SECRET_KEYS.items():
        if os.environ.get(env):
            data[key] = os.environ[env]
    return config_from_mapping(data)


# ------------------------------------------------------------------ metrics


@final
class _VMCollector:
    """VMs by state and the connections' counters, read at scrape time."""

    def __init__(self, registry: VMRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Any]:
        states = GaugeMetricFamily("lqx_hostd_vms", "VMs by agent connection state", labels=["state"])
        counts = {state.value: 0 for state in VMState}
        for conn in self._registry.connections():
            counts[conn.state.value] += 1
        for state, n in sorted(counts.items()):
            states.add_metric([state], n)
        yield states
        totals = ConnectionCounters()
        for conn in self._registry.connections():
            totals = totals + conn.counters()
        for name, value in sorted(dataclasses.asdict(totals).items()):
            yield CounterMetricFamily(
                f"lqx_hostd_agent_{name}", f"Sum over VMs of {name.replace('_', ' ')}", value=value
            )


@final
class Metrics(RpcMetrics):
    """hostd's series: node API calls (:class:`~limiquantix.protocol.daemon.RpcMetrics`) and its VMs'."""

    def __init__(self, registry: VMRegistry) -> None:
        super().__init__("lqx_hostd", "Node API")
        self.registry.register(_VMCollector(registry))  # type: ignore[arg-type]


# ---------------------------------------------------------------------- app


def make_authenticator(token: str) -> Callable[[CallContext], Awaitable[None]]:
    expected = token.encode()

    async def authenticate(ctx: CallContext) -> None:
        bearer = ctx.bearer_token
        if bearer is None:
            # The same reasons as the controller's (its error bodies carry them as details).
            raise errors.Unauthenticated("an Authorization: Bearer token is required", reason="missing_token")
        # Constant time: the comparison must not tell how much of a guess was right.
        if not hmac.compare_digest(bearer.encode(), expected):
            raise errors.Unauthenticated("invalid bearer token", reason="invalid_token")

    return authenticate


def build_app(
    registry: VMRegistry,
    *,
    token: str,
    metrics_open: bool = False,
    max_request_bytes_in_flight: int = DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT,
) -> QuartTrio:
    """The node API, /healthz (open) and /metrics (the bearer token unless ``metrics_open``)."""
    app = QuartTrio("limiquantix-hostd")
    metrics = Metrics(registry)
    started = time.time()

    @app.get("/healthz")
    async def healthz() -> Response:
        body = {
            "status": "ok",
            "version": __version__,
            "vms": len(registry),
            "uptime_s": round(time.time() - started, 1),
        }
        return Response(json.dumps(body), content_type="application/json")

    authenticate = make_authenticator(token)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        # Per-method counts (password resets included) are the operator's business:
        # the same token as the node API, unless the operator opened it.
        if not metrics_open:
            try:
                await authenticate(CallContext(procedure="/metrics", headers=request.headers))
            except errors.Unauthenticated as exc:
                return Response(error_body(exc), status=exc.http_status, content_type="application/json")
        return Response(metrics.exposition(), content_type=PROMETHEUS_CONTENT_TYPE)

    # One caller (the controller): the bound is the total.
    in_flight = InFlightBytes(
        max_total_bytes=max_request_bytes_in_flight, max_bytes_per_key=max_request_bytes_in_flight
    )
    router = Router(
        [Service(SERVICE, NodeAPI(registry))], authenticate=authenticate, observe=metrics.observe, in_flight=in_flight
    )
    router.register(app)
    app.config["LQX_METRICS"] = metrics
    return app


async def serve(
    config: HostdConfig,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run hostd until ``shutdown`` is set (or SIGTERM/SIGINT when None).

    ``task_status.started()`` gets the bound addresses (``http://...``, ``unix:...``).
    """
    token = config.bearer_token()
    controller_token = config.controller_bearer_token() if config.controller_url else ""
    stop = shutdown if shutdown is not None else trio.Event()
    async with VMRegistry.open(
        entries=config.vms, discovery=config.discovery, connection=config.connection
    ) as registry:
        app = build_app(
            registry,
            token=token,
            metrics_open=config.metrics_open,
            max_request_bytes_in_flight=config.max_request_bytes_in_flight,
        )
        bind = []
        if config.listen:
            bind.append(config.listen)
        if config.unix_socket:
            if os.path.exists(config.unix_socket):
                os.unlink(config.unix_socket)
            bind.append(f"unix:{config.unix_socket}")
        tls = config.server_tls()
        hc = http_config(bind, graceful_timeout_s=GRACEFUL_TIMEOUT_S, tls=tls)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve_http, app, hc, stop)
            if config.unix_socket:
                os.chmod(config.unix_socket, 0o600)
            log.info(
                "limiquantix-hostd %s serving %s, %d VMs; %s",
                __version__, " ".join(binds), len(registry), transport_summary(tls),
            )  # fmt: skip
            # The signal watcher and the controller link never end by themselves:
            # they are cancelled at shutdown, so that only requests in flight are
            # waited for (at most GRACEFUL_TIMEOUT_S).
            async with trio.open_nursery() as background:
                if shutdown is None:
                    background.start_soon(stop_on_signals, stop)
                if config.controller_url:
                    advertise = config.advertise_url or next((b for b in binds if b.startswith("http")), "")
                    background.start_soon(_controller_link, config, registry, token, controller_token, advertise)
                task_status.started(binds)
                await stop.wait()
                background.cancel_scope.cancel()
            nursery.cancel_scope.deadline = trio.current_time() + GRACEFUL_TIMEOUT_S + 1


# ---------------------------------------------------------------- controller


async def _controller_call(
    client: RpcClient,
    config: HostdConfig,
    controller_token: str,
    method: str,
    request: api_pb.RegisterNodeRequest | api_pb.HeartbeatRequest,
) -> None:
    """One NodeRegistryService call (Connect, proto), within ``CONTROLLER_CALL_TIMEOUT_S``.

    Raises:
        errors.AgentError: the controller's answer, its code kept; ``unavailable`` when
            it cannot be reached, ``deadline_exceeded`` when it does not answer in time.
    """
    target = Target(url=config.controller_url, token=controller_token, name=f"controller {config.controller_url}")
    await client.unary_message(
        target,
        f"{_REGISTRY_SERVICE}/{method}",
        request,
        api_pb.RegisterNodeResponse if method == "RegisterNode" else api_pb.HeartbeatResponse,
        deadline=trio.current_time() + CONTROLLER_CALL_TIMEOUT_S,
    )


async def _controller_link(
    config: HostdConfig, registry: VMRegistry, token: str, controller_token: str, advertise_url: str
) -> None:
    """Register with the controller, then heartbeat forever; never raises.

    A controller that is down, or answers an error, is retried with capped,
    jittered exponential backoff. A heartbeat answered ``not_found`` (the
    controller lost or never had this node) registers again.
    """
    delay = REGISTER_BACKOFF_INITIAL_S
    registered = False
    failing = False
    # No keep-alive: one call every few seconds gains nothing from it.
    tls = ClientTLS(verify=client_ssl_context(config.controller_tls()))
    async with RpcClient(keepalive=False, tls=tls, insecure=config.controller_insecure) as client:
        while True:
            try:
                vms = [heartbeat_status(vm_status(conn)) for conn in registry.connections()]
                if not registered:
                    await _controller_call(
                        client,
                        config,
                        controller_token,
                        "RegisterNode",
                        api_pb.RegisterNodeRequest(node_id=config.node_id, url=advertise_url, token=token, vms=vms),
                    )
                    registered = True
                    log.info("registered with %s as %s (%s)", config.controller_url, config.node_id, advertise_url)
                else:
                    await _controller_call(
                        client,
                        config,
                        controller_token,
                        "Heartbeat",
                        api_pb.HeartbeatRequest(node_id=config.node_id, vms=vms),
                    )
                if failing:
                    log.info("controller %s reachable again", config.controller_url)
                failing = False
                delay = REGISTER_BACKOFF_INITIAL_S
                await trio.sleep(config.heartbeat_interval_s)
                continue
            except errors.NotFound:
                registered = False  # the controller forgot us: register again at once
                continue
            except (errors.AgentError, OSError) as exc:
                # Logged once per outage, not once per retry (a failed TLS handshake says why:
                # the rpc client names it).
                if not failing:
                    log.warning(
                        "controller %s: %s: retrying with backoff",
                        config.controller_url,
                        str(exc) or type(exc).__name__,
                    )
                failing = True
            except Exception:  # never let the link take hostd down
                log.exception("controller link failed: retrying")
                failing = True
            await trio.sleep(delay * (1 + random.random() * 0.5))
            delay = min(delay * 2, max(config.heartbeat_interval_s, REGISTER_BACKOFF_INITIAL_S), REGISTER_BACKOFF_MAX_S)


def return_big_buffers_to_the_os() -> bool:
    """Have glibc serve every allocation from 128 KiB up by mmap (True if it took).

    A guest can make hostd buffer a frame's worth (16 MiB) on its connection.
    glibc raises its mmap threshold each time such a buffer is freed, so later
    ones come from the heap, where freed memory stays in hostd's RSS after the
    VM has gone. With a fixed threshold they are mapped and unmapped: hostd's
    RSS goes back down when a VM leaves. Elsewhere than glibc: nothing.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
        config.bearer_token()
        if config.controller_url:
            config.controller_bearer_token()
        config.check_tls()
        if len(config.bearer_token()) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"the bearer token is too short ({len(config.bearer_token())} characters; at least {MIN_TOKEN_CHARS}:"
                " e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )
    except ConfigError as exc:
        print(f"limiquantix-hostd: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_format, config.log_level)
    return_big_buffers_to_the_os()
    for key in ("socket_dir", "libvirt_channel_root"):
        path = getattr(config.discovery, key)
        if path and not os.path.isdir(path):
            # Not fatal (libvirt may create it later: it is rescanned), but said at start.
            log.warning(
                '%s %s does not exist: no VM is found there until it does (set %s = "" to not scan it)', key, path, key
            )
    try:
        trio.run(serve, config)
    except Exception as exc:
        err = errors.sole_error(exc)
        if err is not None:
            # A known failure (a port in use): one line naming it, not the nurseries' traceback.
            print(f"limiquantix-hostd: {err.connect_code}: {err.message}", file=sys.stderr)
            return 1
        # One connection's error is contained where it happens (protocol/rpc/server/_serving.py); whatever
        # still ends the daemon is logged (JSON logs too) and ends it with a failure status,
        # so that a supervisor restarts it.
        log.critical("limiquantix-hostd stopped by an unexpected error", exc_info=True)
        return 1
    return 0
