"""The character-device channel, over a real pty standing for the virtio port.

A pty is what the simulated VM gives the agent in place of
``/dev/virtio-ports/org.limiquantix.agent.0``: the same code path (open, raw
mode, poll, non-blocking I/O) runs unchanged. ``/dev/null`` stands for a port
with no host attached: it reports readable and reads 0 bytes, as virtio-serial
does then.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from limiquantix.agent import _channel
from limiquantix.agent._channel import ABSENT_BACKOFF_MAX_S
from limiquantix.protocol import AgentClient, ReadBuffer, encode_message, errors, new_message
from limiquantix.protocol._gen import agent_pb2 as pb


class Pty:
    """A pty pair; ``path`` is the guest's end, ``master`` the host's."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        os.close(slave)  # the agent opens it by path, as it would the port
        os.set_blocking(self.master, False)

    def stream(self) -> trio.lowlevel.FdStream:
        # FdStream owns a dup: closing it must not close our master.
        return trio.lowlevel.FdStream(os.dup(self.master))

    def close(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


@pytest.fixture
def quick_reopen(monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that went away is looked for again after 0.05 s instead of REOPEN_INTERVAL_S
    (1 s): these tests are about reopening, not about how long the agent waits first."""
    monkeypatch.setattr(_channel, "REOPEN_INTERVAL_S", 0.05)


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


async def wait_for_session(agent) -> None:  # type: ignore[no-untyped-def]
    """The agent has the device open (a pty master reads EIO before that)."""
    while not agent.sessions:
        await trio.sleep(0.01)


@pytest.mark.trio
async def test_hello_and_binary_ping_over_a_pty(start_agent, pty: Pty) -> None:
    agent = await start_agent(transport="virtio", device=pty.path)
    with trio.fail_after(10):
        await wait_for_session(agent)
        async with AgentClient.open(pty.stream()) as client:
            assert client.identity is not None
            # Every byte value crosses the tty unchanged (raw mode: no echo, no CR/LF mapping).
            blob = bytes(range(256)) * 64
            assert (await client.ping(blob)).payload == blob


@pytest.mark.trio
async def test_waits_for_the_device_and_reopens_when_it_returns(
    start_agent, short_tmp: Path, quick_reopen: None
) -> None:
    """The port is missing at start, appears, vanishes (hot-unplug), reappears."""
    link = short_tmp / "org.limiquantix.agent.0"
    agent = await start_agent(transport="virtio", device=str(link))
    first = Pty()
    second = Pty()
    try:
        with trio.fail_after(10):
            # Appears: a udev-style symlink to the device.
            link.symlink_to(first.path)
            await wait_for_session(agent)
            async with AgentClient.open(first.stream()) as client:
                assert (await client.ping(b"1")).payload == b"1"
            # Vanishes: the host side of the pty goes away, reads fail with EIO.
            os.unlink(link)
            first.close()
            while agent.sessions:
                await trio.sleep(0.01)
            # Reappears as another device.
            link.symlink_to(second.path)
            await wait_for_session(agent)
            async with AgentClient.open(second.stream()) as client:
                assert (await client.ping(b"2")).payload == b"2"
    finally:
        first.close()
        second.close()


@pytest.mark.trio
async def test_virtio_bounds_a_stalled_partial_frame_and_oversized_requests(
    start_agent, pty: Pty, quick_reopen: None
) -> None:
    """The single-peer device runs the same session code: a frame that never completes
    ends the session (the device is reopened), an oversized request is refused, and the
    next host is served."""
    agent = await start_agent(transport="virtio", device=pty.path, partial_frame_timeout_s=0.3)
    whole = encode_message(new_message(ping=pb.PingRequest(payload=b"s" * 3000)))
    with trio.fail_after(20):
        await wait_for_session(agent)
        [first] = agent.sessions
        async with pty.stream() as host:
            await host.send_all(whole[:1500])
            while first in agent.sessions or not agent.sessions:
                await trio.sleep(0.01)
        assert agent.buffered_bytes == 0
        async with AgentClient.open(pty.stream()) as client:
            with pytest.raises(errors.InvalidArgument, match="the limit is 128"):
                await client.request(cancel=pb.CancelRequest(target_message_id="t" * 1000))
            assert (await client.ping(b"after")).payload == b"after"


@pytest.mark.trio
async def test_no_host_attached_does_not_spin(
    start_agent, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """With reads returning 0 at once (no host), the agent backs off: its reads per
    second fall to 1 / ABSENT_BACKOFF_MAX_S. Counted on the virtual clock (a reader that
    never blocked would never let it advance); the reads are counted by a spy around
    the channel's one read call."""
    reads = 0
    real_read = ReadBuffer.__call__

    def counting_read(self: ReadBuffer, fd: int) -> bytes:
        nonlocal reads
        reads += 1
        return real_read(self, fd)

    monkeypatch.setattr(ReadBuffer, "__call__", counting_read)
    agent = await start_agent(transport="virtio", device="/dev/null")
    while not agent.sessions:
        await trio.sleep(0.01)
    await trio.sleep(1)  # the backoff reaches its ceiling within a second
    before = reads
    await trio.sleep(60)
    # /dev/null cannot be polled, so each read also waits the no-poll retry
    # (0.05 s): without the backoff that alone would be 1200 reads in 60 s.
    assert 60 * 0.8 / (ABSENT_BACKOFF_MAX_S + 0.05) <= reads - before <= 60 / ABSENT_BACKOFF_MAX_S + 1, reads - before
