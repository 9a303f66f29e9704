"""The TUI's structure (issue 13): its modules import each other without a cycle, its state
is plain data, the fleet refresh is one replaceable Textual message, and the API's answers
are parsed once, in the client, into the generated message types."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.protobuf.message import Message
from textual.message import Message as TextualMessage

from limiquantix.protocol._gen import vm_service_pb2 as vm_pb
from limiquantix.tui import ApiError, ControllerClient, demo_data
from limiquantix.tui.messages import FleetUpdated
from limiquantix.tui.screens.fleet import FleetScreen
from limiquantix.tui.screens.vm import VMScreen

TUI = Path(__file__).resolve().parent.parent / "tui"
PACKAGE = "limiquantix.tui"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ----------------------------------------------------------------------------- imports


def _module(path: Path) -> str:
    parts = list(path.relative_to(TUI).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import run when the module is (lazy ones in functions included), leaving out
    ``if TYPE_CHECKING:`` blocks: those are for the type checker, never executed."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in _runtime_imports(child))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _runtime_imports(node)


def _graph() -> dict[str, set[str]]:
    """Module → the modules of the TUI it imports at run time."""
    modules = {_module(p): p for p in TUI.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                origin = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
                if node.level == 0:
                    origin = node.module or ""
                # "from . import x" imports module x; "from .m import y" imports m.
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def test_the_tui_modules_import_each_other_without_a_cycle() -> None:
    graph = _graph()
    assert {"limiquantix.tui._app", "limiquantix.tui.screens.fleet", "limiquantix.tui.state"} <= set(graph)
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = path[path.index(name) :] + [name]
            raise AssertionError("import cycle: " + " → ".join(cycle))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    # Screens never import the app that composes them (it imports them).
    assert not any("limiquantix.tui._app" in graph[m] for m in graph if ".screens." in m or ".widgets." in m)


def test_state_is_plain_data() -> None:
    """state.py imports no Textual (nor any other part of the TUI)."""
    tree = ast.parse((TUI / "state.py").read_text())
    imported = [ast.unparse(node) for node in _runtime_imports(tree)]
    assert not any("textual" in line or "rich" in line for line in imported), imported
    assert not any(line.startswith("from .") for line in imported), imported


# ----------------------------------------------------------------------------- FleetUpdated


def test_fleet_updated_is_replaceable() -> None:
    assert FleetUpdated().can_replace(FleetUpdated())
    assert not FleetUpdated().can_replace(TextualMessage())


@pytest.mark.anyio
@pytest.mark.usefixtures("quick_pilot", "shared_css")
async def test_every_screen_on_the_stack_redraws_from_fleet_updated() -> None:
    """A poll's answer reaches the fleet under the VM screen and the VM screen on top, in
    their own message loops; a screen that is gone gets nothing (no "app quitting" guard)."""
    refuse = httpx.MockTransport(lambda request: httpx.Response(501, json={"code": "unimplemented"}))
    app, feed = demo_data.demo_app(history=2, client=_client(refuse))
    async with app.run_test(size=(100, 30)) as pilot:
        feed()
        await pilot.pause()
        fleet = app.screen
        assert isinstance(fleet, FleetScreen)
        await pilot.press("enter")
        await pilot.pause()
        vm_screen = app.screen
        assert isinstance(vm_screen, VMScreen)
        drawn: list[str] = []
        fleet.fleet_updated = lambda: drawn.append("fleet")  # type: ignore[method-assign]
        vm_screen.fleet_updated = lambda: drawn.append("vm")  # type: ignore[method-assign]
        app.apply_fleet(demo_data.fleet(12, 5))
        await pilot.pause()
        assert sorted(drawn) == ["fleet", "vm"]  # once each (a base class's handler runs too, unless prevented)
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is fleet
        # The popped screen is closed: Textual drops what is posted to it, draws nothing.
        assert not vm_screen.post_message(FleetUpdated())
        assert not vm_screen.post_message(VMScreen.Loaded(demo_data.vm_detail(0)))
        drawn.clear()
        app.apply_fleet(demo_data.fleet(12, 6))
        await pilot.pause()
        assert drawn == ["fleet"]


# ----------------------------------------------------------------------------- the client


def _client(handler: httpx.MockTransport) -> ControllerClient:
    # insecure: "controller" is a MockTransport, the token never leaves the process.
    return ControllerClient("http://controller", "t", transport=handler, insecure=True)


def _proto(message: Message | bytes) -> httpx.Response:
    content = message if isinstance(message, bytes) else message.SerializeToString()
    return httpx.Response(200, content=content, headers={"Content-Type": "application/proto"})


@pytest.mark.anyio
async def test_list_vms_asks_in_proto_reads_every_page_and_skips_unknown_fields() -> None:
    """A newer controller's fields (unknown to this TUI) are skipped, not an error."""
    pages = [demo_data.fleet(3), demo_data.fleet(5)[3:]]
    # Field 99 of VM, a length-delimited field this schema does not have.
    newer = b"\x9a\x06\x05later"
    asked: list[vm_pb.ListVMsRequest] = []

    def controller(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == "application/proto"
        body = vm_pb.ListVMsRequest.FromString(request.content)
        asked.append(body)
        page = 0 if not body.page_token else 1
        answer = vm_pb.ListVMsResponse(vms=pages[page], next_page_token="p2" if page == 0 else "")
        raw = b"".join(
            b"\x0a" + _len(vm.SerializeToString() + newer) + vm.SerializeToString() + newer for vm in answer.vms
        )
        return _proto(raw + vm_pb.ListVMsResponse(next_page_token=answer.next_page_token).SerializeToString())

    async with _client(httpx.MockTransport(controller)) as client:
        vms = await client.list_vms()
    assert [vm.vm_id for vm in vms] == [vm.vm_id for vm in demo_data.fleet(5)]
    assert vms[0].agent_state == "connected" and vms[0].HasField("last_seen")
    assert [a.page_token for a in asked] == ["", "p2"] and asked[0].page_size == 1000


def _len(data: bytes) -> bytes:
    out, n = bytearray(), len(data)
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


@pytest.mark.anyio
async def test_an_answer_that_is_not_the_message_is_an_api_error() -> None:
    def controller(request: httpx.Request) -> httpx.Response:
        return _proto(b"\xff\xff\xff\xff not protobuf")

    async with _client(httpx.MockTransport(controller)) as client:
        with pytest.raises(ApiError) as info:
            await client.get_vm("web-1")
    assert info.value.code == "internal" and "GetVM" in info.value.message


@pytest.mark.anyio
async def test_the_controllers_error_is_an_api_error_with_its_code() -> None:
    def controller(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"code": "not_found", "message": "no VM 'web-9'"})

    async with _client(httpx.MockTransport(controller)) as client:
        with pytest.raises(ApiError) as info:
            await client.get_vm("web-9")
    assert (info.value.code, info.value.message) == ("not_found", "no VM 'web-9'")
