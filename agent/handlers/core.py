"""Handshake, identity, liveness and on-demand telemetry."""

from __future__ import annotations

import trio

from limiquantix.protocol import __version__
from limiquantix.protocol._gen import agent_pb2 as pb

from ..dispatch import RequestContext, handler
from ..telemetry import system_uptime


@handler("hello", "hello_response")
async def hello(ctx: RequestContext, req: pb.HelloRequest) -> pb.HelloResponse:
    """Echo the host's sync id with our identity (the host discards all before it)."""
    return pb.HelloResponse(sync_id=req.sync_id, identity=ctx.agent.identity())


@handler("info", "info_response")
async def info(ctx: RequestContext, req: pb.InfoRequest) -> pb.AgentIdentity:
    return ctx.agent.identity()


@handler("ping", "pong")
async def ping(ctx: RequestContext, req: pb.PingRequest) -> pb.PongResponse:
    return pb.PongResponse(
        payload=req.payload,
        agent_uptime_seconds=ctx.agent.uptime(),
        system_uptime_seconds=system_uptime(),
        agent_version=__version__,
    )


@handler("get_telemetry", "telemetry_response")
async def get_telemetry(ctx: RequestContext, req: pb.TelemetryRequest) -> pb.TelemetryReport:
    return await trio.to_thread.run_sync(ctx.agent.collector.sample)
