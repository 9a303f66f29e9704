"""Workers replaced before they start leave no coroutine behind.

An exclusive worker cancels the one before it in its group; if that one had not
started yet and had been given a coroutine object, the coroutine was dropped
never awaited (``coroutine 'AuditScreen._load' was never awaited`` in the TUI
tests). The screens hand Textual the function instead. pyproject.toml turns that
warning (and its unraisable form, raised from a finalizer) into an error in every
test; this one provokes the case in the still demo app, whose controller is an
``httpx.MockTransport`` (no network: the test is about the workers).
"""

from __future__ import annotations

import gc

import httpx
import pytest
from textual.worker import WorkerState

from limiquantix.tui import ControllerClient, demo_data
from limiquantix.tui.screens.audit import AuditScreen

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("quick_pilot", "shared_css")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_an_exclusive_load_replaced_before_it_starts_leaves_no_coroutine() -> None:
    asked: list[httpx.Request] = []

    def controller(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(501, json={"code": "unimplemented", "message": "not in this test"})

    # insecure: controller.example is a MockTransport, no token leaves the process.
    client = ControllerClient(
        demo_data.CONTROLLER_URL, "demo-token", transport=httpx.MockTransport(controller), insecure=True
    )
    app, feed = demo_data.demo_app(client=client, history=3)
    async with app.run_test(size=(100, 30)) as pilot:
        feed()
        await pilot.press("u")
        await pilot.pause()
        audit = app.screen
        assert isinstance(audit, AuditScreen)
        # Three loads in one tick: the first two are replaced before they run.
        audit.action_load()
        audit.action_load()
        audit.action_load()
        loads = [w for w in app.workers if w.group == "audit"]
        for _ in range(500):  # bounded: a stuck load fails the assertion below, not the run
            if loads[-1].is_finished:
                break
            await pilot.pause(0.01)
        # (Textual leaves a worker cancelled before it started in state RUNNING: the
        # task never entered its body. Which is why the coroutine it held was never awaited.)
        assert [w.is_cancelled for w in loads] == [True, True, False]
        assert loads[-1].state == WorkerState.SUCCESS
    # A coroutine dropped never awaited warns when it is collected: here, inside
    # this test, where pyproject.toml's filter makes the warning fail it.
    gc.collect()
    assert [r.url.path for r in asked] == ["/limiquantix.compute.v1.AdminService/QueryAudit"], asked
