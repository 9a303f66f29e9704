"""What hostd and the controller share as daemons (never imported by the agent): their
API calls counted for Prometheus, stopping on SIGTERM or SIGINT, the file descriptors they may
open, and (for the scripts and benchmarks that start them) children that die with their parent.
"""

from __future__ import annotations

import ctypes
import logging
import resource
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = [
    "LATENCY_BUCKETS",
    "PROMETHEUS_CONTENT_TYPE",
    "RpcMetrics",
    "check_tls_files",
    "die_with_parent",
    "raise_fd_limit",
    "run_daemon",
    "stop_on_signals",
]

if TYPE_CHECKING:
    from ._tls import TLSFiles
    from .rpc.server import ServerTLS

log = logging.getLogger(__name__)

#: Call latency buckets (seconds): a ping is about a millisecond, a command up to its timeout.
LATENCY_BUCKETS: Final = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: The text exposition format's content type (what ``/metrics`` answers).
PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: prctl's option that signals a process when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG: Final = 1


class RpcMetrics:
    """A daemon's Prometheus registry (one per app, so tests can run several) with its API
    calls counted by method and code (``<prefix>_rpcs``) and their latency
    (``<prefix>_rpc_seconds``). Daemons subclass it to add their own series."""

    def __init__(self, prefix: str, api: str) -> None:
        """``prefix``: of every series name (``lqx_hostd``); ``api``: what the help texts call the calls."""
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            f"{prefix}_rpcs", f"{api} calls by method and code", ["method", "code"], registry=self.registry
        )
        self.latency = Histogram(
            f"{prefix}_rpc_seconds", f"{api} call latency", ["method"], buckets=LATENCY_BUCKETS, registry=self.registry
        )

    def observe(self, procedure: str, code: str, seconds: float) -> None:
        """The Connect router's ``observe`` hook."""
        method = procedure.rpartition("/")[2]
        self.rpcs.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def exposition(self) -> bytes:
        """Every series, in the text format (:data:`PROMETHEUS_CONTENT_TYPE`)."""
        return generate_latest(self.registry)


async def stop_on_signals(stop: trio.Event) -> None:
    """Set ``stop`` at the first SIGTERM or SIGINT (a daemon then drains and exits)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s: stopping", signal.Signals(signum).name)
            stop.set()
            return


def die_with_parent(signum: int) -> None:
    """In a child before exec (``preexec_fn``): ``signum`` is sent to it when its parent dies.

    For the processes a script or benchmark starts, so that none outlives it when it dies
    without stopping them. Linux only. The signal fires when the *thread* that forked exits:
    start children from the main thread, not a trio worker thread.
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit, as Go's runtime does for every
    program; returns the limit now in force.

    Every connection a daemon serves holds a descriptor, as does each of hostd's VM sockets and
    each call it makes. The soft limit is 1,024 by default (systemd's too, under a hard limit
    of 524,288): a few hundred clients then exhaust it. The soft limit is kept low for programs
    that still use ``select()`` (which cannot watch a descriptor above 1,023); trio uses epoll.
    A child process started later inherits the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:  # the kernel refuses more than nr_open (2**20 by default)
        hard = 2**20
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # a hard limit the kernel caps lower (nr_open)
            log.debug("keeping RLIMIT_NOFILE %s: %s", soft, exc)
            return soft
    return hard


def run_daemon(prog: str, main: Callable[[], Awaitable[object]]) -> int:
    """``trio.run(main)`` for a daemon's command: its exit status (0 when it ended, else 1).

    A known failure (a port in use: one :class:`~limiquantix.protocol.errors.AgentError`)
    is one line on stderr naming it, not the nurseries' traceback. One connection's
    error is contained where it happens (protocol/rpc/server/_serving.py); whatever still
    ends the daemon is logged (JSON logs too) and ends it with a failure status, so that
    a supervisor restarts it.

    The soft limit of open files is raised to the hard one first (:func:`raise_fd_limit`).
    """
    from . import errors

    raise_fd_limit()
    try:
        trio.run(main)
    except Exception as exc:
        err = errors.sole_error(exc)
        if err is not None:
            print(f"{prog}: {err.connect_code}: {err.message}", file=sys.stderr)
            return 1
        log.critical("%s stopped by an unexpected error", prog, exc_info=True)
        return 1
    return 0


def check_tls_files(server: ServerTLS | None, client: TLSFiles | None) -> None:
    """Load every certificate and key a daemon will use (its server's, its client's) once, at
    start, so that a bad file stops it there, named, rather than at its first connection.

    Raises:
        ConfigError: a file cannot be used (named, with the reason).
    """
    from ._tls import TLSConfigError, client_ssl_context
    from .config import ConfigError
    from .rpc.server import server_ssl_context

    try:
        if server is not None:
            server_ssl_context(server)
        # A client that names no file uses the system's CAs: nothing of the operator's to
        # check, and loading them costs tens of milliseconds of every start.
        if client is not None and (client.ca_file or client.cert_file):
            client_ssl_context(client)
    except TLSConfigError as exc:
        raise ConfigError(str(exc)) from None
