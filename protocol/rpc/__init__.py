"""The rpc layer: one codec, one error table, one client, one server.

::

    protocol/rpc/
      _codec.py      sans-IO: JSON/proto codecs, bounded gzip, envelopes (incremental)
      _errors.py     Connect error bodies <-> errors.AgentError (reason as a typed detail)
      _deadline.py   timeout headers, the caller's remaining time (trio or asyncio)
      _client.py     RpcClient on httpx: one exception mapping, deadlines sent on
      server/        Router over pluggable protocols (Connect unary and streaming),
                     CallContext, InFlightBytes, serve_http (quart-trio, hypercorn)

The code table (Connect code, HTTP status, grpc-status) is
:data:`limiquantix.protocol.errors.CODES`; a command's time budget at every hop is
:func:`limiquantix.protocol.command_budget_s`. Neither needs this package,
which is why the agent's package can leave all of ``protocol/rpc/`` out: the agent
speaks frames over virtio-serial, never HTTP.

This module imports the client side only (httpx); the server is
:mod:`limiquantix.protocol.rpc.server` (quart, hypercorn).
"""

from ._client import CONNECT_TIMEOUT_S as CONNECT_TIMEOUT_S
from ._client import MAX_RESPONSE_BYTES as MAX_RESPONSE_BYTES
from ._client import OUTCOME_UNKNOWN as OUTCOME_UNKNOWN
from ._client import TRANSPORT_ERRORS as TRANSPORT_ERRORS
from ._client import ClientTLS as ClientTLS
from ._client import OutcomeUnknown as OutcomeUnknown
from ._client import OutcomeUnknownDeadline as OutcomeUnknownDeadline
from ._client import RpcClient as RpcClient
from ._client import Target as Target
from ._client import outcome_unknown as outcome_unknown
from ._codec import ENVELOPE_HEADER as ENVELOPE_HEADER
from ._codec import FLAG_COMPRESSED as FLAG_COMPRESSED
from ._codec import FLAG_END_STREAM as FLAG_END_STREAM
from ._codec import JSON as JSON
from ._codec import PROTO as PROTO
from ._codec import SAMPLE_BYTES as SAMPLE_BYTES
from ._codec import SAMPLE_FROM_BYTES as SAMPLE_FROM_BYTES
from ._codec import Codec as Codec
from ._codec import EnvelopeReader as EnvelopeReader
from ._codec import accepts_gzip as accepts_gzip
from ._codec import compressible as compressible
from ._codec import encode_envelope as encode_envelope
from ._codec import gunzip as gunzip
from ._codec import gzip_bytes as gzip_bytes
from ._codec import request_gzipped as request_gzipped
from ._deadline import CONNECT_TIMEOUT_HEADER as CONNECT_TIMEOUT_HEADER
from ._deadline import GRPC_TIMEOUT_HEADER as GRPC_TIMEOUT_HEADER
from ._deadline import deadline_after as deadline_after
from ._deadline import encode_grpc_timeout as encode_grpc_timeout
from ._deadline import parse_connect_timeout_ms as parse_connect_timeout_ms
from ._deadline import parse_grpc_timeout as parse_grpc_timeout
from ._deadline import remaining_s as remaining_s
from ._deadline import timeout_headers as timeout_headers
from ._errors import ERROR_DETAIL_TYPE as ERROR_DETAIL_TYPE
from ._errors import error_body as error_body
from ._errors import error_from_body as error_from_body
from ._errors import error_from_json as error_from_json
from ._errors import error_json as error_json
from ._errors import error_reason as error_reason

__all__ = [
    "CONNECT_TIMEOUT_HEADER",
    "CONNECT_TIMEOUT_S",
    "ENVELOPE_HEADER",
    "ERROR_DETAIL_TYPE",
    "FLAG_COMPRESSED",
    "FLAG_END_STREAM",
    "GRPC_TIMEOUT_HEADER",
    "JSON",
    "MAX_RESPONSE_BYTES",
    "OUTCOME_UNKNOWN",
    "PROTO",
    "SAMPLE_BYTES",
    "SAMPLE_FROM_BYTES",
    "TRANSPORT_ERRORS",
    "ClientTLS",
    "Codec",
    "EnvelopeReader",
    "OutcomeUnknown",
    "OutcomeUnknownDeadline",
    "RpcClient",
    "Target",
    "accepts_gzip",
    "compressible",
    "deadline_after",
    "encode_envelope",
    "encode_grpc_timeout",
    "error_body",
    "error_from_body",
    "error_from_json",
    "error_json",
    "error_reason",
    "gunzip",
    "gzip_bytes",
    "outcome_unknown",
    "parse_connect_timeout_ms",
    "parse_grpc_timeout",
    "remaining_s",
    "request_gzipped",
    "timeout_headers",
]
