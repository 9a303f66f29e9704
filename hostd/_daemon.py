"""The hostd process: ``serve`` (the app and the controller link until told to stop) and ``main``."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Sequence
from typing import Final

import trio

from limiquantix.protocol import __version__, run_daemon, setup_logging, stop_on_signals
from limiquantix.protocol.rpc.server import http_config, serve_http, transport_summary

from ._app import build_app
from ._config import MIN_TOKEN_CHARS, ConfigError, HostdConfig, load_config
from ._discovery import VMRegistry
from ._registration import controller_link

__all__ = ["main", "serve"]

log = logging.getLogger(__name__)

#: On SIGTERM, requests in flight get this long to finish.
GRACEFUL_TIMEOUT_S: Final = 5.0
#: glibc's mallopt parameter, and the size from which allocations are mmapped.
_M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD_BYTES: Final = 128 * 1024


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
                    background.start_soon(controller_link, config, registry, token, controller_token, advertise)
                task_status.started(binds)
                await stop.wait()
                background.cancel_scope.cancel()
            nursery.cancel_scope.deadline = trio.current_time() + GRACEFUL_TIMEOUT_S + 1


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
    return run_daemon("limiquantix-hostd", lambda: serve(config))
