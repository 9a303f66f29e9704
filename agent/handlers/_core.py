"""Handshake, identity, liveness and on-demand telemetry."""

from __future__ import annotations

import trio

from limiquantix.protocol import __version__
from limiquantix.protocol._gen import agent_pb2 as pb

from .._dispatch import AgentState, RequestContext, handler
from .._telemetry import system_uptime


@handler("hello", "hello_response")
async def hello(ctx: RequestContext, req: pb.HelloRequest) -> pb.HelloResponse:
    """Echo the host's sync id with our identity (the host discards all before it)."""
    return pb.HelloResponse(sync_id=req.sync_id, identity=ctx.agent.identity())


@handler("info", "info_response")
async def info(ctx: RequestContext, req: pb.InfoRequest) -> pb.AgentIdentity:
    return ctx.agent.identity()


@handler("ping", "pong", inline=True)
def ping(agent: AgentState, req: pb.PingRequest) -> pb.PongResponse:
    """Liveness: answered by the reader itself, so it is never queued behind work."""
    return pb.PongResponse(
        payload=req.payload,
        agent_uptime_seconds=agent.uptime(),
        system_uptime_seconds=system_uptime(),
        agent_version=__version__,
    )


@handler("get_telemetry", "telemetry_response")
async def get_telemetry(ctx: RequestContext, req: pb.TelemetryRequest) -> pb.TelemetryReport:
    return await trio.to_thread.run_sync(ctx.agent.collector.sample)
