"""gRPC server reflection (``grpc.reflection.v1`` and ``v1alpha``), sans-IO: one request in, one
answer out, the descriptors taken from the generated code (protocol/_gen) in protobuf's default pool.

What ``buf curl --list-methods`` and grpcurl ask: ``list_services`` (the services served),
``file_containing_symbol`` (a service, method, message or enum) and ``file_by_filename``; each file
answer carries the file and every file it imports, transitively, so that a client that knows nothing
can decode everything (the spec lets a server send more than asked; nothing here is large).
Extensions are not used by these schemas: ``all_extension_numbers_of_type`` answers an empty list
for a known message and ``file_containing_extension`` ``not_found``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, final

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorProto

from ..._gen import grpc_reflection_v1_pb2 as v1
from ..._gen import grpc_reflection_v1alpha_pb2 as v1alpha

__all__ = ["MAX_REFLECTION_REQUEST_BYTES", "REFLECTION_SERVICES", "Reflection"]

#: The reflection services' full names, both versions (grpcurl asks v1 first, then v1alpha;
#: buf curl asks v1).
REFLECTION_SERVICES: Final = (
    v1.DESCRIPTOR.services_by_name["ServerReflection"].full_name,
    v1alpha.DESCRIPTOR.services_by_name["ServerReflection"].full_name,
)
#: A reflection request names one symbol or file: anything larger is not one.
MAX_REFLECTION_REQUEST_BYTES: Final = 64 * 1024
# gRPC status codes of the error answers (they travel inside a message, not as grpc-status).
_NOT_FOUND: Final = 5
_INVALID_ARGUMENT: Final = 3
# A name quoted back in an error answer is cut to this many characters.
_MAX_NAME_CHARS: Final = 200


@final
class Reflection:
    """Answers reflection requests about ``services`` (full names) from the default pool.

    Args:
        services: the services the server serves (the reflection services are added).
    """

    def __init__(self, services: Iterable[str]) -> None:
        self._pool = descriptor_pool.Default()
        self.services = tuple(sorted({*services, *REFLECTION_SERVICES}))

    def answer(self, data: bytes, *, alpha: bool) -> bytes:
        """The serialized answer to one serialized request (``alpha``: of v1alpha).

        A request that cannot be decoded or asks nothing gets an ``error_response``
        (the stream goes on, as grpc-go's does), never an exception.
        """
        mod = v1alpha if alpha else v1
        # v1alpha's messages are v1's in another package: typed as v1's (mod is a ModuleType).
        request: v1.ServerReflectionRequest = mod.ServerReflectionRequest()
        response: v1.ServerReflectionResponse = mod.ServerReflectionResponse()
        try:
            request.ParseFromString(data)
        except Exception:  # DecodeError: a client's garbage
            response.error_response.error_code = _INVALID_ARGUMENT
            response.error_response.error_message = "undecodable ServerReflectionRequest"
            return response.SerializeToString()
        response.valid_host = request.host
        response.original_request.CopyFrom(request)
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            for name in self.services:
                response.list_services_response.service.add(name=name)
        elif kind in ("file_by_filename", "file_containing_symbol"):
            name = getattr(request, kind)
            found = self._file(name) if kind == "file_by_filename" else self._file_of_symbol(name)
            if found is None:
                what = "file" if kind == "file_by_filename" else "symbol"
                response.error_response.error_code = _NOT_FOUND
                response.error_response.error_message = f"{what} not found: {name[:_MAX_NAME_CHARS]}"
            else:
                response.file_descriptor_response.file_descriptor_proto.extend(_serialized_closure(found))
        elif kind == "all_extension_numbers_of_type":
            name = request.all_extension_numbers_of_type
            try:
                self._pool.FindMessageTypeByName(name)
            except KeyError:
                response.error_response.error_code = _NOT_FOUND
                response.error_response.error_message = f"type not found: {name[:_MAX_NAME_CHARS]}"
            else:
                response.all_extension_numbers_response.base_type_name = name
        elif kind == "file_containing_extension":
            response.error_response.error_code = _NOT_FOUND
            response.error_response.error_message = "no extensions are defined"
        else:
            response.error_response.error_code = _INVALID_ARGUMENT
            response.error_response.error_message = "the request asks nothing (no message_request set)"
        return response.SerializeToString()

    def _file(self, name: str) -> FileDescriptor | None:
        try:
            return self._pool.FindFileByName(name)
        except KeyError:
            return None

    def _file_of_symbol(self, symbol: str) -> FileDescriptor | None:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            pass
        # A method (``pkg.Service.Method``): the pool finds only its service.
        parent, _, method = symbol.rpartition(".")
        try:
            service = self._pool.FindServiceByName(parent)
        except KeyError:
            return None
        return service.file if method in service.methods_by_name else None


def _serialized_closure(root: FileDescriptor) -> list[bytes]:
    """``root`` and every file it imports (transitively), serialized, ``root`` first."""
    out: list[bytes] = []
    seen: set[str] = set()
    todo = [root]
    while todo:
        file = todo.pop()
        if file.name in seen:
            continue
        seen.add(file.name)
        proto = FileDescriptorProto()
        file.CopyToProto(proto)
        out.append(proto.SerializeToString())
        todo.extend(file.dependencies)
    return out
