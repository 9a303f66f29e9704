"""The controller process: configuration, the HTTP app (Connect API, /healthz, /metrics, /downloads/), serving.

Configuration is ``/etc/limiquantix/controller.toml`` (or ``--config``); every
key is also a flag (``--listen``, ``--db`` ...), and flags win::

    listen = "127.0.0.1:8080"
    db = "/var/lib/limiquantix/controller.db"
    heartbeat_timeout_s = 15.0     # a node silent this long is unreachable
    downloads_dir = "/var/lib/limiquantix/downloads"   # served read-only under /downloads/
    downloads_require_token = false                     # true: /downloads/ needs a bearer token
    max_request_bytes_in_flight = 268435456            # request bytes held by calls in progress, in total
    max_request_bytes_in_flight_per_user = 134217728   # ... and per user (beyond: resource_exhausted)
    log_format = "text"            # or "json"
    log_level = "info"

    # HTTPS (HTTP/2 and HTTP/1.1 by ALPN); without a certificate: plain HTTP, for loopback development.
    tls_cert_file = "/etc/limiquantix/pki/controller.pem"   # SANs: the names clients and hostds use
    tls_key_file = "/etc/limiquantix/pki/controller.key"
    tls_client_ca_file = "/etc/limiquantix/pki/ca.pem"  # client certificates from this CA verified when presented
    require_node_cert = true       # with tls_client_ca_file: hostds must present theirs (CN = node id)
    # Calls to hostd: verify its certificate against node_ca_file and present a client
    # certificate (mutual TLS, on by default once node_ca_file is set; node_mtls = false: off).
    node_ca_file = "/etc/limiquantix/pki/ca.pem"
    node_cert_file = "/etc/limiquantix/pki/controller-client.pem"
    node_key_file = "/etc/limiquantix/pki/controller-client.key"
    node_mtls = true
    insecure_nodes = false         # true: node tokens over plain http:// to other machines (never do this)

On first start with an empty database an admin token is created: the value
of ``LQX_ADMIN_TOKEN`` when set, else a new one printed once on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, final

import trio
from prometheus_client import Counter, Gauge
from quart import Response
from quart_trio import QuartTrio

from limiquantix.protocol import (
    PROMETHEUS_CONTENT_TYPE,
    RpcMetrics,
    TLSFiles,
    __version__,
    check_tls_files,
    errors,
    run_daemon,
    setup_logging,
    stop_on_signals,
)
from limiquantix.protocol import config as config_loader
from limiquantix.protocol.config import ConfigError
from limiquantix.protocol.rpc.server import (
    CallContext,
    InFlightBytes,
    Router,
    ServerTLS,
    Service,
    http_config,
    serve_http,
    transport_summary,
)

from ._admin import ADMIN_SERVICE, AdminAPI, authenticate_request, error_response, register_export_route
from ._auth import Principal
from ._authn import AUTH_FAILURE_REASONS, AuthFailures, make_authenticator
from ._downloads import DEFAULT_DOWNLOADS_DIR, Downloads, register_downloads_route
from ._fleet import FLEET_SERVICE, FleetAPI
from ._forward import NodeClient
from ._nodes import NODE_REGISTRY_SERVICE, NodeRegistryAPI, require_node_certificate
from ._vms import VM_SERVICE, VMAPI
from .store import DEFAULT_DB_PATH, DEFAULT_HEARTBEAT_TIMEOUT_S, SQLiteStore, Store

__all__ = [
    "ADMIN_TOKEN_ENV",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_HEARTBEAT_TIMEOUT_S",
    "ControllerConfig",
    "build_app",
    "load_config",
    "main",
    "serve",
]

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH: Final = Path("/etc/limiquantix/controller.toml")
#: The environment variable that names the first admin token.
ADMIN_TOKEN_ENV: Final = "LQX_ADMIN_TOKEN"
#: On SIGTERM, requests in flight get this long to finish.
GRACEFUL_TIMEOUT_S: Final = 5.0
#: Request bytes that calls in progress may hold, in total and per user. A 45 MiB
#: file is 60 MiB of base64 JSON: a user may send two at once, four users in total.
#: What a call costs in memory is a small multiple of its body (decoded message,
#: the forwarded copy), so these bound the controller's memory to about 1 GiB.
DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT: Final = 256 * 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT_PER_USER: Final = 128 * 1024 * 1024


@final
@dataclasses.dataclass(frozen=True, kw_only=True)
class ControllerConfig:
    """Every setting of the controller.

    Raises:
        ConfigError: a value is out of range.
    """

    listen: str = "127.0.0.1:8080"
    """TCP address of the API (host:port)."""
    db: str = str(DEFAULT_DB_PATH)
    """SQLite database (created mode 0600)."""
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S
    """A node without a heartbeat for this long is unreachable: calls for its VMs answer unavailable."""
    downloads_dir: str = str(DEFAULT_DOWNLOADS_DIR)
    """Files served read-only under /downloads/ (the agent's packages); "" or a missing directory: only install-agent.sh."""
    downloads_require_token: bool = False
    """Whether /downloads/ needs a bearer token (any role); open by default, for cloud-init."""
    max_request_bytes_in_flight: int = DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT
    """Request bytes all calls in progress may hold; beyond, calls answer resource_exhausted."""
    max_request_bytes_in_flight_per_user: int = DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT_PER_USER
    """Request bytes one user's calls in progress may hold (all its tokens together)."""
    log_format: str = "text"
    """text or json."""
    log_level: str = "info"
    """debug, info, warning or error."""
    tls_cert_file: str = ""
    """PEM certificate of the API (with tls_key_file: HTTPS); empty: plain HTTP, for loopback development."""
    tls_key_file: str = ""
    """Its private key."""
    tls_client_ca_file: str = ""
    """CA whose client certificates are verified when a client presents one (operators' clients need none)."""
    require_node_cert: bool = True
    """With tls_client_ca_file: RegisterNode and Heartbeat need the node's client certificate from it,
    its common name the node id (a node token alone cannot speak for a node)."""
    node_ca_file: str = ""
    """CA hostd certificates must chain to (https:// nodes); empty: the system's CAs."""
    node_cert_file: str = ""
    """The controller's client certificate for hostd (mutual TLS)."""
    node_key_file: str = ""
    """Its private key."""
    node_mtls: bool = True
    """With node_ca_file: present node_cert_file to every hostd (required then); false: no client certificate."""
    insecure_nodes: bool = False
    """Allow sending node tokens over plain http:// to other machines (anyone on the path reads them)."""

    def __post_init__(self) -> None:
        config_loader.check_server_tls(self)
        config_loader.check_together(self, "node_cert_file", "node_key_file")
        if self.node_ca_file and self.node_mtls and not self.node_cert_file:
            raise ConfigError(
                "node_ca_file turns on mutual TLS with hostd: set node_cert_file and node_key_file "
                "(limiquantix-controller pki client controller-client), or node_mtls = false"
            )
        config_loader.check_listen(self.listen)
        if not self.db:
            raise ConfigError("db must name a file")
        if not self.heartbeat_timeout_s > 0:
            raise ConfigError("heartbeat_timeout_s must be > 0")
        config_loader.check_log_format(self.log_format)
        if not 0 < self.max_request_bytes_in_flight_per_user <= self.max_request_bytes_in_flight:
            raise ConfigError(
                "max_request_bytes_in_flight_per_user must be > 0 and at most max_request_bytes_in_flight"
            )


def server_tls(config: ControllerConfig) -> ServerTLS | None:
    """The API's TLS settings; None: plain HTTP. Client certificates are asked for, not required:
    operators' clients (the TUI, curl) have none."""
    if not config.tls_cert_file:
        return None
    return ServerTLS(
        cert_file=config.tls_cert_file,
        key_file=config.tls_key_file,
        client_ca_file=config.tls_client_ca_file,
        require_client_cert=False,
    )


def node_tls(config: ControllerConfig) -> TLSFiles:
    """How the controller verifies each hostd and proves who it is."""
    if not config.node_mtls:
        return TLSFiles(ca_file=config.node_ca_file)
    return TLSFiles(ca_file=config.node_ca_file, cert_file=config.node_cert_file, key_file=config.node_key_file)


def check_tls(config: ControllerConfig) -> None:
    """Load every certificate and key once, so that a bad file stops the controller at start, named.

    Raises:
        ConfigError: a file cannot be used.
    """
    check_tls_files(server_tls(config), node_tls(config))


def build_arg_parser() -> argparse.ArgumentParser:
    """``limiquantix-controller serve`` flags."""
    p = argparse.ArgumentParser(
        prog="limiquantix-controller serve",
        description="Run the controller's HTTP API (VMService, NodeRegistryService, /healthz, /metrics).",
        formatter_class=config_loader.FieldHelpFormatter,
    )
    p.add_argument("--config", type=Path, help=f"TOML file (default {DEFAULT_CONFIG_PATH} when it exists)")
    config_loader.add_field_flags(p, ControllerConfig)
    return p


def load_config(argv: Sequence[str] | None = None) -> ControllerConfig:
    """Flags over the TOML file over the defaults.

    Raises:
        ConfigError: unreadable or invalid configuration.
    """
    return config_loader.load(ControllerConfig, build_arg_parser(), argv, DEFAULT_CONFIG_PATH)[0]


# ------------------------------------------------------------------ the app


@final
class Metrics(RpcMetrics):
    """The controller's series: API calls (:class:`~limiquantix.protocol.RpcMetrics`),
    refused authentications, request bytes in flight."""

    def __init__(self) -> None:
        super().__init__("lqx_controller", "API")
        self.auth_failures = Counter(
            "lqx_controller_auth_failures",
            "Requests refused 401 (missing, malformed, unknown or revoked token) by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in (*AUTH_FAILURE_REASONS, "other"):
            self.auth_failures.labels(reason)  # 0 until the first, so a rate() sees the first one

    def watch(self, in_flight: InFlightBytes) -> None:
        """Expose the request bytes calls in progress hold (read at scrape time)."""
        gauge = Gauge(
            "lqx_controller_request_bytes_in_flight",
            "Request bytes held by calls in progress (bounded by max_request_bytes_in_flight)",
            registry=self.registry,
        )
        gauge.set_function(lambda: in_flight.total)

    def auth_failure(self, reason: str) -> None:
        """:class:`~._authn.AuthFailures`' counting hook."""
        self.auth_failures.labels(reason).inc()


def _caller(ctx: CallContext) -> str:
    """Whose bytes a call's request counts against: its user (every token of theirs together)."""
    principal = ctx.auth
    return principal.user if isinstance(principal, Principal) else ""


def build_app(
    store: Store,
    nodes: NodeClient,
    *,
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
    downloads: Downloads | None = None,
    downloads_require_token: bool = False,
    max_request_bytes_in_flight: int = DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT,
    max_request_bytes_in_flight_per_user: int = DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT_PER_USER,
    require_node_cert: bool = False,
) -> QuartTrio:
    """The Connect services, ``/healthz`` (open), ``/metrics`` and ``/downloads/``
    (``downloads``; None serves only the built-in install-agent.sh). ``require_node_cert``:
    node registrations and heartbeats need the node's client certificate (served over TLS
    with a client CA)."""
    app = QuartTrio("limiquantix-controller")
    metrics = Metrics()
    failures = AuthFailures(store, metrics.auth_failure)
    in_flight = InFlightBytes(
        max_total_bytes=max_request_bytes_in_flight, max_bytes_per_key=max_request_bytes_in_flight_per_user, key=_caller
    )
    metrics.watch(in_flight)
    started = time.time()

    @app.get("/healthz")
    async def healthz() -> Response:
        body = {"status": "ok", "version": __version__, "uptime_s": round(time.time() - started, 1)}
        return Response(json.dumps(body), content_type="application/json")

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        # Every endpoint but /healthz needs a token (any role): Prometheus
        # sends one with `authorization: {credentials: ...}` in its scrape config.
        try:
            await authenticate_request(failures)
        except errors.AgentError as exc:
            return error_response(exc)
        return Response(metrics.exposition(), content_type=PROMETHEUS_CONTENT_TYPE)

    router = Router(
        [
            Service(VM_SERVICE, VMAPI(store, nodes, heartbeat_timeout_s=heartbeat_timeout_s)),
            Service(
                NODE_REGISTRY_SERVICE,
                NodeRegistryAPI(
                    store,
                    heartbeat_timeout_s=heartbeat_timeout_s,
                    check_node=require_node_certificate if require_node_cert else None,
                ),
            ),
            Service(ADMIN_SERVICE, AdminAPI(store, heartbeat_timeout_s=heartbeat_timeout_s)),
            # Fleet runs live in the app's background nursery, not in the request.
            Service(
                FLEET_SERVICE,
                FleetAPI(store, nodes, heartbeat_timeout_s=heartbeat_timeout_s, spawn=app.add_background_task),
            ),
        ],
        authenticate=make_authenticator(failures),
        observe=metrics.observe,
        in_flight=in_flight,
    )
    router.register(app)
    register_export_route(app, store, failures)
    register_downloads_route(
        app, failures, downloads or Downloads(None), registry=metrics.registry, require_token=downloads_require_token
    )
    app.config["LQX_METRICS"] = metrics
    return app


async def serve(
    config: ControllerConfig,
    *,
    admin_token: str | None = None,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the controller until ``shutdown`` is set (or SIGTERM/SIGINT when None).

    ``admin_token`` is what ``LQX_ADMIN_TOKEN`` says (``main`` passes it). On an
    empty database a generated admin token is printed once on stdout.
    ``task_status.started()`` gets the bound addresses.

    Raises:
        errors.InvalidArgument: ``admin_token`` is malformed.
        SchemaTooNew, errors.Unavailable: the database cannot be used.
    """
    stop = shutdown if shutdown is not None else trio.Event()
    nodes_client = NodeClient(tls=node_tls(config), insecure=config.insecure_nodes)
    async with await SQLiteStore.open(config.db) as store, nodes_client as nodes:
        # Runs a previous process left unfinished: their runner is gone.
        await store.recover_interrupted_commands()
        if config.downloads_dir and not os.path.isdir(config.downloads_dir):
            log.info("downloads_dir %s does not exist: /downloads/ serves only install-agent.sh", config.downloads_dir)
        app = build_app(
            store,
            nodes,
            heartbeat_timeout_s=config.heartbeat_timeout_s,
            downloads=Downloads(config.downloads_dir or None),
            downloads_require_token=config.downloads_require_token,
            max_request_bytes_in_flight=config.max_request_bytes_in_flight,
            max_request_bytes_in_flight_per_user=config.max_request_bytes_in_flight_per_user,
            require_node_cert=bool(config.tls_client_ca_file) and config.require_node_cert,
        )
        tls = server_tls(config)
        hc = http_config([config.listen], graceful_timeout_s=GRACEFUL_TIMEOUT_S, tls=tls)
        async with trio.open_nursery() as nursery:
            if shutdown is None:
                nursery.start_soon(stop_on_signals, stop)
            binds = await nursery.start(serve_http, app, hc, stop)
            # Only once the listener is bound: a first token printed by a run that then
            # failed on a port in use would never be shown again (only its hash is stored).
            created = await store.bootstrap_admin(admin_token)
            if created is not None and admin_token is None:
                print(
                    f"limiquantix-controller: created the first admin token (shown once, keep it now):\n{created}",
                    flush=True,
                )
            elif created is not None:
                log.info("created the first admin token from %s", ADMIN_TOKEN_ENV)
            log.info(
                "limiquantix-controller %s serving %s (db %s); %s",
                __version__, " ".join(binds), config.db, transport_summary(tls),
            )  # fmt: skip
            task_status.started(binds)
            await stop.wait()
            nursery.cancel_scope.deadline = trio.current_time() + GRACEFUL_TIMEOUT_S + 1


def main(argv: Sequence[str] | None = None) -> int:
    """``limiquantix-controller serve``: exit 0 when stopped, 1 when it cannot run, 2 on bad configuration."""
    try:
        config = load_config(argv)
        check_tls(config)
    except ConfigError as exc:
        print(f"limiquantix-controller: {exc}", file=sys.stderr)
        return 2
    parent = Path(config.db).parent
    if not parent.is_dir():
        # Not created silently: a typo in --db would start an empty control plane (a new
        # first admin token, no tokens, no audit log) somewhere nobody looks.
        print(
            f"limiquantix-controller: the database's directory {parent} does not exist (db {config.db}):"
            f" create it (install -d -m 0700 {parent}) or pass another --db",
            file=sys.stderr,
        )
        return 2
    setup_logging(config.log_format, config.log_level)
    return run_daemon("limiquantix-controller", lambda: serve(config, admin_token=os.environ.get(ADMIN_TOKEN_ENV)))
