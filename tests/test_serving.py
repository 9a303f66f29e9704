"""serve_http (protocol/rpc/server/_serving.py): how hostd and the controller serve HTTP.

A real hypercorn on a loopback port the OS picks, a small Quart-Trio app and real HTTP clients.
The graceful timeout is set far beyond the tests' deadline, so a shutdown that waited for it
(as hypercorn alone does with an idle keep-alive connection open) fails the test instead of
passing slowly; with hypercorn's own serve in serve_http's place, all of them fail.
"""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from quart_trio import QuartTrio

from limiquantix.hostd import daemon as hostd_daemon
from limiquantix.hostd.config import DiscoveryConfig
from limiquantix.hostd.daemon import HostdConfig
from limiquantix.protocol.rpc.server import serve_http

DEADLINE_S = 30
FOREVER_S = 3600.0
TOKEN = "serving-test-token-0123456789abcdef"


def _app(release: trio.Event, entered: trio.Event) -> QuartTrio:
    app = QuartTrio(__name__)

    @app.route("/quick")
    async def quick() -> str:
        return "quick"

    @app.route("/slow")
    async def slow() -> str:
        entered.set()
        await release.wait()
        return "slow"

    return app


def _serving(app: QuartTrio, stop: trio.Event, returned: trio.Event, config: Config | None = None):  # type: ignore[no-untyped-def]
    """serve_http for nursery.start(); sets ``returned`` when it returns."""

    async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
        await serve_http(app, config or _config(), stop, task_status=task_status)
        returned.set()

    return serve


def _config(keep_alive_timeout_s: float = FOREVER_S) -> Config:
    config = Config()
    config.keep_alive_timeout = keep_alive_timeout_s
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = FOREVER_S
    config.accesslog = None
    return config


@pytest.mark.trio
async def test_idle_keep_alive_connection_does_not_hold_the_shutdown() -> None:
    stop, release, entered, returned = trio.Event(), trio.Event(), trio.Event(), trio.Event()
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(_serving(_app(release, entered), stop, returned))
            async with httpx.AsyncClient(base_url=binds[0]) as client:
                response = await client.get("/quick")
                assert response.text == "quick"
                # The connection stays open in the client's pool, idle, while the server stops.
                stop.set()
                await returned.wait()


@pytest.mark.trio
async def test_idle_connection_is_closed_after_the_keep_alive_timeout() -> None:
    """After a request (the case hypercorn misses with Quart-Trio, see serving.py's docstring)."""
    stop, release, entered, returned = trio.Event(), trio.Event(), trio.Event(), trio.Event()
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(_serving(_app(release, entered), stop, returned, _config(0.2)))
            host, _, port = binds[0].removeprefix("http://").rpartition(":")
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"GET /quick HTTP/1.1\r\nHost: test\r\n\r\n")
            received = b""
            while not received.endswith(b"quick"):
                received += await stream.receive_some()
            assert received.startswith(b"HTTP/1.1 200")
            # Idle now: the server closes the connection (no timer here: the deadline bounds it).
            assert await stream.receive_some() == b""
            await stream.aclose()
            stop.set()


@pytest.mark.trio
async def test_requests_in_flight_finish_before_the_server_stops() -> None:
    stop, release, entered, returned = trio.Event(), trio.Event(), trio.Event(), trio.Event()
    results: list[httpx.Response] = []
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(_serving(_app(release, entered), stop, returned))
            async with httpx.AsyncClient(base_url=binds[0]) as idle, httpx.AsyncClient(base_url=binds[0]) as busy:
                assert (await idle.get("/quick")).status_code == 200

                async def slow_request() -> None:
                    results.append(await busy.get("/slow"))

                nursery.start_soon(slow_request)
                await entered.wait()
                stop.set()
                await trio.testing.wait_all_tasks_blocked()
                assert not returned.is_set()  # the slow request is still being answered
                release.set()
                await returned.wait()
            assert [r.text for r in results] == ["slow"]


@pytest.mark.trio
async def test_hostd_stops_at_once_with_a_clients_connection_open(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The controller keeps a pooled connection to each hostd: a stop must not wait on it."""
    monkeypatch.setattr(hostd_daemon, "GRACEFUL_TIMEOUT_S", FOREVER_S)
    stop = trio.Event()
    config = HostdConfig(
        listen="127.0.0.1:0", token=TOKEN, discovery=DiscoveryConfig(socket_dir=str(tmp_path), libvirt_channel_root="")
    )
    returned = trio.Event()

    async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
        await hostd_daemon.serve(config, shutdown=stop, task_status=task_status)
        returned.set()

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve)
            async with httpx.AsyncClient(base_url=binds[0], headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                response = await client.post("/limiquantix.node.v1.NodeDaemonService/ListVMs", json={})
                assert response.status_code == 200, response.text
                stop.set()
                await returned.wait()  # with the client's connection still open
