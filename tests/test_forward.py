"""controller._forward.NodeClient's pools: the system's CAs are loaded for https nodes only.

(Mutual TLS end to end, and refused certificates, are tests/test_tls.py's.)
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from limiquantix.controller._forward import NodeClient
from limiquantix.controller._models import NodeInfo
from limiquantix.protocol import TLSConfigError, TLSFiles, errors
from limiquantix.protocol._gen import node_daemon_pb2 as node_pb


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port bound and not listening: every connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def system_ca_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts loads of the system's CAs (a spy: the real method still runs)."""
    loads: list[int] = []
    real = ssl.SSLContext.load_default_certs

    def counting(self: ssl.SSLContext, purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH) -> None:
        loads.append(1)
        real(self, purpose)

    monkeypatch.setattr(ssl.SSLContext, "load_default_certs", counting)
    return loads


def _node(url: str) -> NodeInfo:
    return NodeInfo(node_id="n", url=url, token="t", registered_at=0, last_heartbeat=None, reachable=True, vm_count=0)


async def _unreachable(nodes: NodeClient, url: str) -> None:
    with pytest.raises(errors.Unavailable) as info:
        await nodes.call(
            _node(url), "PingAgent", node_pb.PingAgentRequest(vm_id="v"), node_pb.AgentPingResponse, budget_s=5
        )
    assert info.value.reason == "node_unreachable"


@pytest.mark.trio
async def test_plain_http_nodes_never_load_the_system_cas(refusing_port: int, system_ca_loads: list[int]) -> None:
    async with NodeClient() as nodes:
        with trio.fail_after(10):
            await _unreachable(nodes, f"http://127.0.0.1:{refusing_port}")
            await _unreachable(nodes, f"http://127.0.0.1:{refusing_port}")
    assert system_ca_loads == []


@pytest.mark.trio
async def test_the_first_https_node_loads_the_system_cas_once(refusing_port: int, system_ca_loads: list[int]) -> None:
    async with NodeClient() as nodes:
        assert system_ca_loads == []  # not at start
        with trio.fail_after(10):
            await _unreachable(nodes, f"HTTPS://127.0.0.1:{refusing_port}")  # the scheme in any case
            await _unreachable(nodes, f"https://127.0.0.1:{refusing_port}")
            await _unreachable(nodes, f"http://127.0.0.1:{refusing_port}")
    assert system_ca_loads == [1]


def test_a_named_ca_file_is_loaded_at_start(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match="ca.pem"):
        NodeClient(tls=TLSFiles(ca_file=str(junk)))
