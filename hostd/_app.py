"""hostd's HTTP app: the node API, /healthz (open) and /metrics (its Prometheus series)."""

from __future__ import annotations

import dataclasses
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from quart import Response, request
from quart_trio import QuartTrio

from limiquantix.protocol import PROMETHEUS_CONTENT_TYPE, RpcMetrics, __version__, errors
from limiquantix.protocol.rpc import error_body
from limiquantix.protocol.rpc.server import CallContext, InFlightBytes, Router, Service

from ._api import SERVICE, NodeAPI
from ._config import DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT
from ._discovery import VMRegistry
from ._vmconn import ConnectionCounters, VMState

__all__ = ["Metrics", "build_app", "make_authenticator"]


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
    """hostd's series: node API calls (:class:`~limiquantix.protocol.RpcMetrics`) and its VMs'."""

    def __init__(self, registry: VMRegistry) -> None:
        super().__init__("lqx_hostd", "Node API")
        self.registry.register(_VMCollector(registry))


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
