"""The controller's HTTP API as the TUI uses it: Connect in ``application/proto`` over
the rpc layer's client (:class:`limiquantix.protocol.rpc.RpcClient`, httpx on asyncio).

Every answer is parsed here, once, into the generated message types
(``limiquantix.protocol._gen``), so that screens read typed attributes (``vm.agent_state``)
rather than string keys into JSON (a renamed field failed only at run time). Binary
protobuf, not JSON: a ListVMs of 5,000 VMs is ~6 ms of CPU to decode against ~0.9 s for
``json_format.ParseDict`` (bench/tui_bench.py's fleet refresh would not fit its budget),
and fields a newer controller adds are skipped by the decoder, as
``ignore_unknown_fields`` would.

Every call raises :class:`ApiError` with a Connect code and a message meant for
an operator (``unavailable``: the controller cannot be reached; ``unauthenticated``:
the token is wrong; ``permission_denied``: the token's role is too weak ...), never
an httpx exception, so that screens have one thing to catch and show.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import httpx
from google.protobuf.message import Message

from limiquantix.protocol import (
    DEFAULT_REQUEST_TIMEOUT_S,
    TLSFiles,
    check_token_transport,
    client_ssl_context,
    command_budget_s,
    errors,
    varint_bytes,
)
from limiquantix.protocol._gen import admin_pb2 as admin_pb
from limiquantix.protocol._gen import fleet_pb2 as fleet_pb
from limiquantix.protocol._gen import vm_service_pb2 as vm_pb
from limiquantix.protocol._gen.agent_pb2 import FileStat
from limiquantix.protocol.rpc import PROTO, ClientTLS, RpcClient, Target, deadline_after

__all__ = [
    "MAX_DOWNLOAD_BYTES",
    "MAX_UPLOAD_BYTES",
    "ApiError",
    "ControllerClient",
    "WhoAmI",
]

_VM: Final = "limiquantix.compute.v1.VMService"
_FLEET: Final = "limiquantix.compute.v1.FleetService"
_ADMIN: Final = "limiquantix.compute.v1.AdminService"

#: Largest file the TUI uploads in one WriteGuestFile (well below the controller's 64 MiB
#: message limit, and the TUI holds the file in memory while it is sent).
MAX_UPLOAD_BYTES: Final = 32 * 1024 * 1024
#: The largest guest file the TUI downloads (one ReadGuestFile with this length: the whole
#: file in one answer, under the rpc client's 64 MiB; larger: ``limiquantix cp`` streams it).
MAX_DOWNLOAD_BYTES: Final = 32 * 1024 * 1024
#: ListVMs page size (the API's maximum).
_PAGE_SIZE: Final = 1000
#: Upload body chunk: the progress callback is called after each.
_UPLOAD_CHUNK: Final = 256 * 1024
#: Budget of a file transfer (the controller allows 300 s; a TUI user waits less).
_FILE_TIMEOUT_S: Final = 120.0

_M = TypeVar("_M", bound=Message)
_E = TypeVar("_E", bound=Message)
#: WriteGuestFileRequest.content's key on the wire: field 3, length-delimited.
_CONTENT_KEY: Final = bytes([3 << 3 | 2])

_FRIENDLY: Final = {
    "unauthenticated": "the controller refused the token (wrong, revoked or missing)",
    "permission_denied": "your token's role does not allow this",
}


class ApiError(Exception):
    """A failed call: ``code`` is the Connect code, ``message`` the controller's words,
    ``reason`` its machine-readable why (``is_a_directory`` ...; "" when it gave none)."""

    def __init__(self, code: str, message: str, reason: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason = reason

    @classmethod
    def of(cls, exc: errors.AgentError) -> ApiError:
        return cls(exc.connect_code, exc.message, exc.reason)

    @property
    def summary(self) -> str:
        """One line for a notification."""
        hint = _FRIENDLY.get(self.code)
        if hint and self.message:
            return f"{hint} ({self.message})"
        return hint or self.message or self.code


@dataclass(frozen=True)
class WhoAmI:
    """The caller's token as the controller sees it."""

    user: str
    role: str
    token_id: str
    permissions: frozenset[str]
    label_scope: Mapping[str, str]

    def may(self, permission: str) -> bool:
        return permission in self.permissions


class ControllerClient:
    """One controller, one token; the rpc client (httpx) under it.

    ``timeout_s`` bounds calls that do not name their own (an execute waits for
    its command's timeout plus a margin).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_file: str = "",
        insecure: bool = False,
    ) -> None:
        """``ca_file``: the CA the controller's certificate must chain to (the system's when empty;
        for an ``https://`` URL).

        Raises:
            InsecureTransportError: ``url`` is plain http:// to another machine and ``insecure`` is false.
            TLSConfigError: ``ca_file`` cannot be loaded.
        """
        check_token_transport(url, insecure=insecure)
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._target = Target(url=self.url, token=token, name="the controller")
        if self.url.startswith("https:") or ca_file:
            verify = client_ssl_context(TLSFiles(ca_file=ca_file))
        else:
            # Plain http: this client calls only its one URL (and follows no redirects), so no
            # certificate is ever checked, and the system's CAs are not loaded (~50 ms of a start,
            # as the command line's client does). httpx wants a context all the same: one that
            # trusts no CA would refuse any server it were ever used for.
            verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls = ClientTLS(verify=verify)
        self._rpc = RpcClient(transport=transport, tls=tls, insecure=insecure)

    async def aclose(self) -> None:
        await self._rpc.aclose()

    async def __aenter__(self) -> ControllerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing ------------------------------------------------------------------

    async def call(
        self,
        service: str,
        method: str,
        request: Message | list[bytes],
        response_cls: type[_M],
        *,
        timeout_s: float | None = None,
    ) -> _M:
        """One Connect unary call: ``request`` (or its serialized parts) out, a ``response_cls`` back.

        Raises:
            ApiError: the controller's error, ``unavailable`` / ``deadline_exceeded``, or
                ``internal`` for an answer that is not a ``response_cls``.
        """
        deadline = deadline_after(timeout_s if timeout_s is not None else self.timeout_s)
        try:
            return await self._rpc.unary_message(
                self._target, f"{service}/{method}", request, response_cls, deadline=deadline
            )
        except errors.AgentError as exc:
            raise ApiError.of(exc) from None

    # -- caller and inventory --------------------------------------------------------

    async def whoami(self) -> WhoAmI:
        body = await self.call(_ADMIN, "WhoAmI", admin_pb.WhoAmIRequest(), admin_pb.WhoAmIResponse)
        return WhoAmI(
            user=body.user,
            role=body.role,
            token_id=body.token_id,
            permissions=frozenset(body.permissions),
            label_scope=dict(body.label_scope),
        )

    async def list_vms(self) -> list[vm_pb.VM]:
        """Every VM the token may see (all pages)."""
        out: list[vm_pb.VM] = []
        request = vm_pb.ListVMsRequest(page_size=_PAGE_SIZE)
        while True:
            body = await self.call(_VM, "ListVMs", request, vm_pb.ListVMsResponse)
            out.extend(body.vms)
            if not body.next_page_token:
                return out
            request.page_token = body.next_page_token

    async def get_vm(self, vm_id: str) -> vm_pb.VM:
        return await self.call(_VM, "GetVM", vm_pb.GetVMRequest(vm_id=vm_id), vm_pb.VM)

    async def ping(self, vm_id: str) -> vm_pb.PingAgentResponse:
        return await self.call(_VM, "PingAgent", vm_pb.PingAgentRequest(vm_id=vm_id), vm_pb.PingAgentResponse)

    # -- execution -------------------------------------------------------------------

    async def execute_stream(
        self, vm_id: str, script: str, *, timeout_s: int, run_as: str = ""
    ) -> AsyncIterator[vm_pb.ExecuteScriptEvent]:
        """ExecuteScriptStream: yields the events (``execution_id``, ``output``, ``result``:
        ``event.WhichOneof("event")`` says which).

        Closing the iterator early closes the HTTP stream, which cancels the
        command in the guest.

        Raises:
            ApiError: before or during the stream (an end-of-stream error included).
        """
        request = vm_pb.ExecuteScriptRequest(vm_id=vm_id, command=script, timeout_seconds=timeout_s, run_as_user=run_as)
        # The one rule for a command's time: its timeout plus the stated margin, the same
        # at every hop (the controller and hostd get this deadline in Connect-Timeout-Ms).
        deadline = deadline_after(command_budget_s(timeout_s))
        async for event in self._stream(f"{_VM}/ExecuteScriptStream", request, vm_pb.ExecuteScriptEvent, deadline):
            yield event

    async def _stream(
        self, procedure: str, request: Message, event_cls: type[_E], deadline: float
    ) -> AsyncIterator[_E]:
        """A server-streaming call in proto: each event as it arrives.

        Raises:
            ApiError: before or during the stream (an end-of-stream error included).
        """
        messages = self._rpc.stream(
            self._target, procedure, request.SerializeToString(), codec=PROTO, deadline=deadline
        )
        try:
            async for data in messages:
                try:
                    event = event_cls.FromString(data)
                except Exception:  # DecodeError: a controller speaking another schema
                    raise ApiError("internal", "the controller streamed something that is not an event") from None
                yield event
        except errors.AgentError as exc:
            raise ApiError.of(exc) from None
        finally:
            await messages.aclose()

    async def cancel_execution(self, vm_id: str, execution_id: str) -> bool:
        request = vm_pb.CancelExecutionRequest(vm_id=vm_id, execution_id=execution_id)
        return (await self.call(_VM, "CancelExecution", request, vm_pb.CancelExecutionResponse)).found

    # -- fleet runs ------------------------------------------------------------------

    async def run_command(
        self, vm_ids: list[str], script: str, *, timeout_s: int, run_as: str = "", max_errors: str = ""
    ) -> str:
        request = fleet_pb.RunCommandRequest(
            vm_ids=vm_ids, command=script, timeout_seconds=timeout_s, run_as_user=run_as, max_errors=max_errors
        )
        return (await self.call(_FLEET, "RunCommand", request, fleet_pb.RunCommandResponse)).command_id

    async def get_command(self, command_id: str) -> fleet_pb.FleetCommand:
        request = fleet_pb.GetCommandRequest(command_id=command_id)
        return await self.call(_FLEET, "GetCommand", request, fleet_pb.FleetCommand)

    async def cancel_command(self, command_id: str) -> None:
        request = fleet_pb.CancelCommandRequest(command_id=command_id)
        await self.call(_FLEET, "CancelCommand", request, fleet_pb.CancelCommandResponse)

    async def watch_command(self, command_id: str, *, budget_s: float) -> AsyncIterator[fleet_pb.FleetCommandEvent]:
        """WatchCommand: yields the events (``target``, ``output``, lastly ``command``:
        ``event.WhichOneof("event")`` says which).

        Raises:
            ApiError: before or during the stream (``unimplemented`` from a controller
                without it).
        """
        request = fleet_pb.WatchCommandRequest(command_id=command_id)
        async for event in self._stream(
            f"{_FLEET}/WatchCommand", request, fleet_pb.FleetCommandEvent, deadline_after(budget_s)
        ):
            yield event

    # -- files -----------------------------------------------------------------------

    async def read_file(self, vm_id: str, path: str, *, length: int = 0) -> tuple[bytes, int, str]:
        """(content, the file's size, SHA-256 of what was read)."""
        request = vm_pb.ReadGuestFileRequest(vm_id=vm_id, path=path, length=length)
        timeout_s = max(self.timeout_s, _FILE_TIMEOUT_S)
        answer = await self.call(_VM, "ReadGuestFile", request, vm_pb.ReadGuestFileResponse, timeout_s=timeout_s)
        return answer.content, answer.size or len(answer.content), answer.sha256

    async def list_directory(self, vm_id: str, path: str, *, limit: int) -> tuple[list[FileStat], bool]:
        """A guest directory's entries, sorted by name, page after page up to ``limit``; (entries,
        whether there were more)."""
        out: list[FileStat] = []
        request = vm_pb.ListGuestDirectoryRequest(vm_id=vm_id, path=path, page_size=min(limit, _PAGE_SIZE))
        while True:
            body = await self.call(_VM, "ListGuestDirectory", request, vm_pb.ListGuestDirectoryResponse)
            out.extend(body.entries)
            if len(out) >= limit:
                return out[:limit], len(out) > limit or bool(body.next_page_token)
            if not body.next_page_token:
                return out, False
            request.page_token = body.next_page_token

    async def write_file(
        self,
        vm_id: str,
        path: str,
        content: bytes,
        *,
        create_parents: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[int, str]:
        """Upload ``content`` (atomically replaced in the guest): (bytes written, the
        guest's SHA-256). ``progress(sent, total)`` follows the body as it is sent.

        Raises:
            ApiError: ``invalid_argument`` above :data:`MAX_UPLOAD_BYTES`, or the controller's error.
        """
        if len(content) > MAX_UPLOAD_BYTES:
            raise ApiError(
                "invalid_argument", f"files above {MAX_UPLOAD_BYTES >> 20} MiB are not uploaded from the TUI"
            )
        # The request without its content, then the content field written after it (a
        # message's fields may come in any order), sent in chunks: the progress follows them.
        head = vm_pb.WriteGuestFileRequest(vm_id=vm_id, path=path, create_parents=create_parents).SerializeToString()
        parts = [head + _CONTENT_KEY + varint_bytes(len(content))]
        parts += [content[i : i + _UPLOAD_CHUNK] for i in range(0, len(content), _UPLOAD_CHUNK)]
        total = sum(map(len, parts))
        sent = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            for piece in parts:
                yield piece
                sent += len(piece)
                if progress is not None:
                    progress(sent, total)

        try:
            data = await self._rpc.unary(
                self._target,
                f"{_VM}/WriteGuestFile",
                body(),
                codec=PROTO,
                content_length=total,
                deadline=deadline_after(max(self.timeout_s, _FILE_TIMEOUT_S)),
            )
        except errors.AgentError as exc:
            raise ApiError.of(exc) from None
        try:
            answer = vm_pb.WriteGuestFileResponse.FromString(data)
        except Exception:  # DecodeError: a controller speaking another schema
            raise ApiError("internal", "the controller's WriteGuestFile answer is not one") from None
        return answer.bytes_written, answer.sha256

    # -- power and password ----------------------------------------------------------

    async def shutdown(
        self, vm_id: str, *, reboot: bool, delay_s: int = 0, message: str = ""
    ) -> vm_pb.GuestShutdownResponse:
        request = vm_pb.GuestShutdownRequest(vm_id=vm_id, reboot=reboot, delay_seconds=delay_s, message=message)
        return await self.call(_VM, "GuestShutdown", request, vm_pb.GuestShutdownResponse)

    async def reset_password(self, vm_id: str, username: str, password: str, *, expire: bool = False) -> None:
        request = vm_pb.ResetGuestPasswordRequest(vm_id=vm_id, username=username, password=password, expire=expire)
        await self.call(_VM, "ResetGuestPassword", request, vm_pb.ResetGuestPasswordResponse)

    # -- audit -----------------------------------------------------------------------

    async def query_audit(
        self, filt: Mapping[str, str] | None = None, *, page_size: int = 200
    ) -> list[admin_pb.AuditRecord]:
        """The newest ``page_size`` records matching ``filt`` (AuditFilter's fields: ``user``,
        ``action``, ``vm_id``, ``node_id``, ``outcome``; empty values match anything)."""
        # Any: the filter's string fields only, but the stub's keywords also take its Timestamps.
        fields: dict[str, Any] = {k: v for k, v in (filt or {}).items() if v}
        request = admin_pb.QueryAuditRequest(page_size=page_size, filter=admin_pb.AuditFilter(**fields))
        return list((await self.call(_ADMIN, "QueryAudit", request, admin_pb.QueryAuditResponse)).records)
