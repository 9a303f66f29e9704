"""The agent answers hello and ping over a real Unix socket."""

from __future__ import annotations

import pytest

from limiquantix.protocol import __version__


@pytest.mark.trio
async def test_hello_identity_and_ping(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        ident = client.identity
        assert ident is not None
        assert ident.agent_version == __version__
        assert ident.kernel and ident.architecture and ident.hostname
        assert "ping" in ident.capabilities
        pong = await client.ping(b"abc")
        assert pong.payload == b"abc"
        assert pong.agent_uptime_seconds >= 0
        assert pong.system_uptime_seconds > 0
