"""The controller's HTTP API as the TUI uses it: Connect JSON over the rpc layer's
client (:class:`limiquantix.protocol.rpc.RpcClient`, httpx on asyncio).

Every call raises :class:`ApiError` with a Connect code and a message meant for
an operator (``unavailable``: the controller cannot be reached; ``unauthenticated``:
the token is wrong; ``permission_denied``: the token's role is too weak ...), never
an httpx exception, so that screens have one thing to catch and show.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

from limiquantix.protocol import errors
from limiquantix.protocol.rpc import JSON, ClientTLS, RpcClient, Target, command_budget_s, deadline_after
from limiquantix.protocol.tls import TLSFiles, check_token_transport, client_ssl_context

__all__ = [
    "MAX_UPLOAD_BYTES",
    "ApiError",
    "ControllerClient",
    "WhoAmI",
]

_VM: Final = "limiquantix.compute.v1.VMService"
_FLEET: Final = "limiquantix.compute.v1.FleetService"
_ADMIN: Final = "limiquantix.compute.v1.AdminService"
_NODES: Final = "limiquantix.compute.v1.NodeRegistryService"

#: Largest file the TUI uploads in one WriteGuestFile (base64 in JSON stays below
#: the controller's 64 MiB message limit).
MAX_UPLOAD_BYTES: Final = 32 * 1024 * 1024
#: ListVMs page size (the API's maximum).
_PAGE_SIZE: Final = 1000
#: Upload body chunk: the progress callback is called after each.
_UPLOAD_CHUNK: Final = 256 * 1024
#: Budget of a file transfer (the controller allows 300 s; a TUI user waits less).
_FILE_TIMEOUT_S: Final = 120.0

_FRIENDLY: Final = {
    "unauthenticated": "the controller refused the token (wrong, revoked or missing)",
    "permission_denied": "your token's role does not allow this",
}


class ApiError(Exception):
    """A failed call: ``code`` is the Connect code, ``message`` the controller's words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

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
        timeout_s: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_file: str = "",
        insecure: bool = False,
    ) -> None:
        """``ca_file``: the CA the controller's certificate must chain to (the system's when empty).

        Raises:
            InsecureTransportError: ``url`` is plain http:// to another machine and ``insecure`` is false.
            TLSConfigError: ``ca_file`` cannot be loaded.
        """
        check_token_transport(url, insecure=insecure)
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._target = Target(url=self.url, token=token, name="the controller")
        tls = ClientTLS(verify=client_ssl_context(TLSFiles(ca_file=ca_file)))
        self._rpc = RpcClient(transport=transport, tls=tls, insecure=insecure)

    async def aclose(self) -> None:
        await self._rpc.aclose()

    async def __aenter__(self) -> ControllerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing ------------------------------------------------------------------

    async def _unary(
        self, procedure: str, content: bytes | AsyncIterable[bytes], *, timeout_s: float, length: int | None = None
    ) -> dict[str, Any]:
        """One Connect unary call in JSON; the answer's object.

        Raises:
            ApiError: the controller's error, or ``unavailable`` / ``deadline_exceeded``.
        """
        try:
            data = await self._rpc.unary(
                self._target, procedure, content, codec=JSON, content_length=length, deadline=deadline_after(timeout_s)
            )
        except errors.AgentError as exc:
            raise ApiError(exc.connect_code, exc.message) from None
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ApiError("internal", "the controller answered something that is not a JSON object")
        return answer

    async def call(
        self, service: str, method: str, body: Mapping[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """One Connect unary call with a JSON body.

        Raises:
            ApiError: the controller's error, or ``unavailable`` / ``deadline_exceeded``.
        """
        content = json.dumps(dict(body or {})).encode()
        return await self._unary(
            f"{service}/{method}", content, timeout_s=timeout_s if timeout_s is not None else self.timeout_s
        )

    # -- caller and inventory --------------------------------------------------------

    async def whoami(self) -> WhoAmI:
        body = await self.call(_ADMIN, "WhoAmI")
        return WhoAmI(
            user=body.get("user", ""),
            role=body.get("role", ""),
            token_id=body.get("tokenId", ""),
            permissions=frozenset(body.get("permissions", ())),
            label_scope=dict(body.get("labelScope", {})),
        )

    async def list_vms(self) -> list[dict[str, Any]]:
        """Every VM the token may see (all pages)."""
        out: list[dict[str, Any]] = []
        token = ""
        while True:
            body = await self.call(_VM, "ListVMs", {"pageSize": _PAGE_SIZE, "pageToken": token})
            out.extend(body.get("vms", ()))
            token = body.get("nextPageToken", "")
            if not token:
                return out

    async def get_vm(self, vm_id: str) -> dict[str, Any]:
        return await self.call(_VM, "GetVM", {"vmId": vm_id})

    async def list_nodes(self) -> list[dict[str, Any]]:
        return (await self.call(_NODES, "ListNodes")).get("nodes", [])

    async def ping(self, vm_id: str) -> dict[str, Any]:
        return await self.call(_VM, "PingAgent", {"vmId": vm_id})

    # -- execution -------------------------------------------------------------------

    @staticmethod
    def _exec_body(vm_id: str, script: str, timeout_s: int, run_as: str, execution_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {"vmId": vm_id, "command": script, "timeoutSeconds": timeout_s}
        if run_as:
            body["runAsUser"] = run_as
        if execution_id:
            body["executionId"] = execution_id
        return body

    async def execute_stream(
        self, vm_id: str, script: str, *, timeout_s: int, run_as: str = ""
    ) -> AsyncIterator[dict[str, Any]]:
        """ExecuteScriptStream: yields the events (``executionId``, ``output``, ``result``).

        Closing the iterator early closes the HTTP stream, which cancels the
        command in the guest.

        Raises:
            ApiError: before or during the stream (an end-of-stream error included).
        """
        body = json.dumps(self._exec_body(vm_id, script, timeout_s, run_as, "")).encode()
        # The one rule for a command's time: its timeout plus the stated margin, the same
        # at every hop (the controller and hostd get this deadline in Connect-Timeout-Ms).
        deadline = deadline_after(command_budget_s(timeout_s))
        messages = self._rpc.stream(self._target, f"{_VM}/ExecuteScriptStream", body, codec=JSON, deadline=deadline)
        try:
            async for data in messages:
                try:
                    message = json.loads(data or b"{}")
                except ValueError:
                    raise ApiError("internal", "the controller streamed something that is not JSON") from None
                yield message
        except errors.AgentError as exc:
            raise ApiError(exc.connect_code, exc.message) from None
        finally:
            await messages.aclose()

    async def cancel_execution(self, vm_id: str, execution_id: str) -> bool:
        body = await self.call(_VM, "CancelExecution", {"vmId": vm_id, "executionId": execution_id})
        return bool(body.get("found"))

    # -- fleet runs ------------------------------------------------------------------

    async def run_command(
        self, vm_ids: list[str], script: str, *, timeout_s: int, run_as: str = "", max_errors: str = ""
    ) -> str:
        body: dict[str, Any] = {"vmIds": vm_ids, "command": script, "timeoutSeconds": timeout_s}
        if run_as:
            body["runAsUser"] = run_as
        if max_errors:
            body["maxErrors"] = max_errors
        return (await self.call(_FLEET, "RunCommand", body))["commandId"]

    async def get_command(self, command_id: str) -> dict[str, Any]:
        return await self.call(_FLEET, "GetCommand", {"commandId": command_id})

    async def cancel_command(self, command_id: str) -> None:
        await self.call(_FLEET, "CancelCommand", {"commandId": command_id})

    # -- files -----------------------------------------------------------------------

    async def stat(self, vm_id: str, path: str) -> dict[str, Any]:
        return (await self.call(_VM, "StatGuestFile", {"vmId": vm_id, "path": path})).get("stat", {})

    async def read_file(self, vm_id: str, path: str, *, length: int = 0) -> tuple[bytes, int, str]:
        """(content, the file's size, SHA-256 of what was read)."""
        body: dict[str, Any] = {"vmId": vm_id, "path": path}
        if length:
            body["length"] = length
        answer = await self.call(_VM, "ReadGuestFile", body, timeout_s=max(self.timeout_s, _FILE_TIMEOUT_S))
        content = base64.b64decode(answer.get("content", ""))
        return content, int(answer.get("size", len(content))), answer.get("sha256", "")

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
        head = json.dumps({"vmId": vm_id, "path": path, "createParents": create_parents})[:-1] + ', "content": "'
        encoded = base64.b64encode(content)
        tail = b'"}'
        total = len(head) + len(encoded) + len(tail)

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            for piece in (
                head.encode(),
                *(encoded[i : i + _UPLOAD_CHUNK] for i in range(0, len(encoded), _UPLOAD_CHUNK)),
                tail,
            ):
                yield piece
                sent += len(piece)
                if progress is not None:
                    progress(sent, total)

        answer = await self._unary(
            f"{_VM}/WriteGuestFile", body(), timeout_s=max(self.timeout_s, _FILE_TIMEOUT_S), length=total
        )
        return int(answer.get("bytesWritten", 0)), answer.get("sha256", "")

    # -- power and password ----------------------------------------------------------

    async def shutdown(self, vm_id: str, *, reboot: bool, delay_s: int = 0, message: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {"vmId": vm_id, "reboot": reboot}
        if delay_s:
            body["delaySeconds"] = delay_s
        if message:
            body["message"] = message
        return await self.call(_VM, "GuestShutdown", body)

    async def reset_password(self, vm_id: str, username: str, password: str, *, expire: bool = False) -> None:
        await self.call(
            _VM, "ResetGuestPassword", {"vmId": vm_id, "username": username, "password": password, "expire": expire}
        )

    # -- audit -----------------------------------------------------------------------

    async def query_audit(self, filt: Mapping[str, str] | None = None, *, page_size: int = 200) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"pageSize": page_size}
        if filt:
            body["filter"] = {k: v for k, v in filt.items() if v}
        return (await self.call(_ADMIN, "QueryAudit", body)).get("records", [])
