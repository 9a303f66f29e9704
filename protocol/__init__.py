"""The protocol package: what the agent, hostd, the controller and the clients share.

The public surface is this package's exports and four modules; every other module is
private (its name starts with ``_``) and may change.

Public modules, each a namespace its callers use qualified:

* :mod:`.errors`: the error hierarchy of the whole stack and its one table of Connect,
  HTTP and gRPC codes (``errors.NotFound``, ``errors.CODES``);
* :mod:`.limits`: the bound of every request field, checked where a request is decoded
  (``limits.check_message``, ``limits.MAX_PATH_BYTES``);
* :mod:`.guestcaps`: what hostd keeps of what a guest reports (``guestcaps.cap_identity``);
* :mod:`.config`: the daemons' one configuration loader (a frozen dataclass, a TOML file,
  a flag per key);
* :mod:`.rpc` (the HTTP hops' codec and client) and :mod:`.rpc.server` (hostd's and the
  controller's server): packages of their own, never shipped to guests.

Exported here, by the private module that holds them:

* :mod:`._framing`: bytes <-> frames, pure: ``FrameDecoder``, ``encode_frame``, ``Frame``,
  ``FrameTooLarge``, ``MAGIC``, ``HEADER_SIZE``, ``FLAG_SYNC``, ``MAX_FRAME_BYTES``,
  ``FRAME_HEADROOM_BYTES``
* :mod:`._wire`: frames <-> ``AgentMessage``: ``parse_frame``, ``encode_message``,
  ``new_message``, ``new_message_id``, ``BadMessage``, ``enum_name``, ``set_timestamp``,
  ``set_timestamp_ns``
* :mod:`._transport`: trio streams of frames: ``MessageWriter``, ``ReadBuffer``,
  ``receive_frames``, ``direct_reader``, ``direct_writer``
* :mod:`._agentclient`: the host side of a connection: ``AgentClient``,
  ``EVENT_RATE_PER_S``, ``EVENT_BURST``
* :mod:`._backoff`: how long every retry loop waits: ``Backoff`` (capped, doubling, jittered)
* :mod:`._httpstack`: httpx imported without its command-line client: ``import_http_stack``,
  ``HTTPX_CLI`` (the rpc client and the TUI; never shipped to guests)
* :mod:`._safetext`: guest text made safe for terminals and logs: ``safe_text``,
  ``safe_bytes``, ``StreamEscaper``, ``ESCAPED``
* :mod:`._logs`: the daemons' log lines: ``setup_logging``, ``LogThrottle``
* :mod:`._throttle`: one record per key per interval for events that repeat: ``Throttle``
* :mod:`._daemon`: what hostd and the controller share as daemons: ``run_daemon``,
  ``stop_on_signals``, ``RpcMetrics``, ``PROMETHEUS_CONTENT_TYPE``, ``die_with_parent``,
  ``check_tls_files``
* :mod:`._tls`: every client's TLS: ``TLSFiles``, ``client_ssl_context``,
  ``TLSConfigError``, ``tls_failure``, ``refusal_message``
* :mod:`._sslcontext`: ssl alone, for the command line's https (no typing, no dataclasses):
  ``verifying_context``, ``TLSConfigError``
* :mod:`._configfile`: reading a TOML file, the one ``ConfigError``; where an operator's
  client finds its controller (profiles): ``resolve``, ``read_config``, ``ClientSettings``,
  ``DEFAULT_URL``, ``DEFAULT_REQUEST_TIMEOUT_S``, ``parse_request_timeout``,
  ``default_config_path``, ``refused_token_flag``; and a token over plain HTTP only to this
  machine: ``check_token_transport``, ``InsecureTransportError``, ``is_loopback_url``,
  ``split_url`` (the one reading of a URL's host, for the check and the connection)
* :mod:`._jsonupload`: a file upload's Connect JSON in pieces: ``write_file_parts``
* :mod:`._varint`: protocol buffers' varints written by hand: ``varint_bytes``
* :mod:`._exits`: how a guest command ended, in words (the TUI, the CLI): ``describe_exit``
* :mod:`._durations`: an uptime as an operator reads it (the TUI, the CLI): ``uptime_text``
* :mod:`._requestchecks`: request values the controller checks and the command line checks
  first: ``check_labels``, ``parse_max_errors``, ``MAX_CONCURRENCY_LIMIT``, ``MAX_LABELS``

``agent_pb2`` (the generated ``agent.proto`` module), ``PROTOCOL_VERSION``,
``__version__`` and ``import_lazily`` (how this package, hostd, the controller and the TUI
import their exports on first use) complete the exports, with the one rule for a guest
command's time budget, defined here: ``command_budget_s``, ``DEFAULT_COMMAND_TIMEOUT_S``,
``COMMAND_MARGIN_S``. Other generated modules are imported from
:mod:`._gen` by name (``from limiquantix.protocol._gen import vm_service_pb2``).

Every export is imported on first use (PEP 562), and only its own module: importing
this package costs almost nothing, and a name costs what its module imports. That
matters twice: ``limiquantix exec`` resolves its configuration and checks its URL on
every start, and its start-up time is measured (protobuf alone costs tens of
milliseconds, ``ssl`` and ``typing`` milliseconds each), so the names it uses live in
modules that import neither; and the agent's package leaves :mod:`._daemon` (Prometheus)
and :mod:`.rpc` (httpx, quart, hypercorn) out, which only works while nothing the agent
imports imports them.
"""

# No ``from __future__ import annotations``: limiquantix exec imports this module before its
# request leaves, and that statement loads the __future__ module (about 0.3 ms of CPU on the
# project's machine: bench/cli_bench.py); annotations naming what only type checkers
# import are strings instead.

# Not typing.TYPE_CHECKING: importing typing costs ``limiquantix exec`` milliseconds.
TYPE_CHECKING = False
if TYPE_CHECKING:  # for type checkers and readers; at run time, imported on first use
    from collections.abc import Mapping
    from typing import Any, Final

    from ._agentclient import EVENT_BURST as EVENT_BURST
    from ._agentclient import EVENT_RATE_PER_S as EVENT_RATE_PER_S
    from ._agentclient import MAX_PAYLOAD_BYTES as MAX_PAYLOAD_BYTES
    from ._agentclient import MAX_PAYLOAD_FIELDS as MAX_PAYLOAD_FIELDS
    from ._agentclient import AgentClient as AgentClient
    from ._backoff import Backoff as Backoff
    from ._configfile import DEFAULT_REQUEST_TIMEOUT_S as DEFAULT_REQUEST_TIMEOUT_S
    from ._configfile import DEFAULT_URL as DEFAULT_URL
    from ._configfile import ClientSettings as ClientSettings
    from ._configfile import ConfigError as ConfigError
    from ._configfile import InsecureTransportError as InsecureTransportError
    from ._configfile import check_token_transport as check_token_transport
    from ._configfile import default_config_path as default_config_path
    from ._configfile import is_loopback_url as is_loopback_url
    from ._configfile import parse_request_timeout as parse_request_timeout
    from ._configfile import read_config as read_config
    from ._configfile import refused_token_flag as refused_token_flag
    from ._configfile import resolve as resolve
    from ._configfile import split_url as split_url
    from ._daemon import PROMETHEUS_CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
    from ._daemon import RpcMetrics as RpcMetrics
    from ._daemon import check_tls_files as check_tls_files
    from ._daemon import die_with_parent as die_with_parent
    from ._daemon import run_daemon as run_daemon
    from ._daemon import stop_on_signals as stop_on_signals
    from ._durations import uptime_text as uptime_text
    from ._exits import describe_exit as describe_exit
    from ._framing import FLAG_SYNC as FLAG_SYNC
    from ._framing import FRAME_HEADROOM_BYTES as FRAME_HEADROOM_BYTES
    from ._framing import HEADER_SIZE as HEADER_SIZE
    from ._framing import MAGIC as MAGIC
    from ._framing import MAX_FRAME_BYTES as MAX_FRAME_BYTES
    from ._framing import Frame as Frame
    from ._framing import FrameDecoder as FrameDecoder
    from ._framing import FrameTooLarge as FrameTooLarge
    from ._framing import encode_frame as encode_frame
    from ._gen import agent_pb2 as agent_pb2
    from ._httpstack import HTTPX_CLI as HTTPX_CLI
    from ._httpstack import import_http_stack as import_http_stack
    from ._jsonupload import write_file_parts as write_file_parts
    from ._logs import LogThrottle as LogThrottle
    from ._logs import setup_logging as setup_logging
    from ._requestchecks import MAX_CONCURRENCY_LIMIT as MAX_CONCURRENCY_LIMIT
    from ._requestchecks import MAX_LABELS as MAX_LABELS
    from ._requestchecks import check_labels as check_labels
    from ._requestchecks import parse_max_errors as parse_max_errors
    from ._safetext import ESCAPED as ESCAPED
    from ._safetext import StreamEscaper as StreamEscaper
    from ._safetext import safe_bytes as safe_bytes
    from ._safetext import safe_text as safe_text
    from ._sslcontext import TLSConfigError as TLSConfigError
    from ._sslcontext import verifying_context as verifying_context
    from ._throttle import Throttle as Throttle
    from ._tls import TLSFiles as TLSFiles
    from ._tls import client_ssl_context as client_ssl_context
    from ._tls import refusal_message as refusal_message
    from ._tls import tls_failure as tls_failure
    from ._transport import MessageWriter as MessageWriter
    from ._transport import ReadBuffer as ReadBuffer
    from ._transport import direct_reader as direct_reader
    from ._transport import direct_writer as direct_writer
    from ._transport import receive_frames as receive_frames
    from ._varint import varint_bytes as varint_bytes
    from ._version import PROTOCOL_VERSION as PROTOCOL_VERSION
    from ._version import __version__ as __version__
    from ._wire import BadMessage as BadMessage
    from ._wire import encode_message as encode_message
    from ._wire import enum_name as enum_name
    from ._wire import new_message as new_message
    from ._wire import new_message_id as new_message_id
    from ._wire import parse_frame as parse_frame
    from ._wire import set_timestamp as set_timestamp
    from ._wire import set_timestamp_ns as set_timestamp_ns

#: Each lazy export and the module that defines it (the defining one, not one that
#: re-exports it: ``check_token_transport`` from ``_configfile``, which needs no ``ssl``).
_LAZY: dict[str, str] = {
    "agent_pb2": "._gen",
    **dict.fromkeys(
        ("AgentClient", "EVENT_BURST", "EVENT_RATE_PER_S", "MAX_PAYLOAD_BYTES", "MAX_PAYLOAD_FIELDS"), "._agentclient"
    ),
    "Backoff": "._backoff",
    **dict.fromkeys(("HTTPX_CLI", "import_http_stack"), "._httpstack"),
    **dict.fromkeys(
        (
            "ClientSettings",
            "ConfigError",
            "DEFAULT_REQUEST_TIMEOUT_S",
            "DEFAULT_URL",
            "InsecureTransportError",
            "check_token_transport",
            "default_config_path",
            "is_loopback_url",
            "parse_request_timeout",
            "read_config",
            "refused_token_flag",
            "resolve",
            "split_url",
        ),
        "._configfile",
    ),
    **dict.fromkeys(
        (
            "PROMETHEUS_CONTENT_TYPE",
            "RpcMetrics",
            "check_tls_files",
            "die_with_parent",
            "run_daemon",
            "stop_on_signals",
        ),
        "._daemon",
    ),
    "describe_exit": "._exits",
    "uptime_text": "._durations",
    **dict.fromkeys(
        ("MAX_CONCURRENCY_LIMIT", "MAX_LABELS", "check_labels", "parse_max_errors"),
        "._requestchecks",
    ),
    **dict.fromkeys(
        (
            "FLAG_SYNC",
            "FRAME_HEADROOM_BYTES",
            "HEADER_SIZE",
            "MAGIC",
            "MAX_FRAME_BYTES",
            "Frame",
            "FrameDecoder",
            "FrameTooLarge",
            "encode_frame",
        ),
        "._framing",
    ),
    **dict.fromkeys(("PROTOCOL_VERSION", "__version__"), "._version"),
    "write_file_parts": "._jsonupload",
    "varint_bytes": "._varint",
    **dict.fromkeys(("LogThrottle", "setup_logging"), "._logs"),
    "Throttle": "._throttle",
    **dict.fromkeys(("ESCAPED", "StreamEscaper", "safe_bytes", "safe_text"), "._safetext"),
    **dict.fromkeys(("TLSFiles", "client_ssl_context", "refusal_message", "tls_failure"), "._tls"),
    **dict.fromkeys(("TLSConfigError", "verifying_context"), "._sslcontext"),
    **dict.fromkeys(("MessageWriter", "ReadBuffer", "direct_reader", "direct_writer", "receive_frames"), "._transport"),
    **dict.fromkeys(
        (
            "BadMessage",
            "encode_message",
            "enum_name",
            "new_message",
            "new_message_id",
            "parse_frame",
            "set_timestamp",
            "set_timestamp_ns",
        ),
        "._wire",
    ),
}

__all__ = [
    "COMMAND_MARGIN_S",
    "DEFAULT_COMMAND_TIMEOUT_S",
    "command_budget_s",
    "import_lazily",
    *sorted(_LAZY),
]

# -------------------------------------------------------------- a command's time budget
#
# The one rule for a guest command's time budget at every hop. A command runs in the guest for
# at most its own ``timeout_seconds`` (the agent's DEFAULT_COMMAND_TIMEOUT_S when 0). Every hop
# above it (hostd, the controller, the TUI and the CLI) waits for it the same
# command_budget_s(): that timeout plus one COMMAND_MARGIN_S for carrying the result back. The
# caller's deadline travels down with the call (``Connect-Timeout-Ms`` / ``grpc-timeout``) and
# each hop waits ``min(command_budget_s(...), what the caller has left)``, so all hops end at
# the same instant and raising a command's timeout raises every hop's deadline with it.
#
# Here rather than in a module of its own, as import_lazily is: ``limiquantix exec`` needs it
# before its request can leave, and each module on that path costs its start-up about 0.2 ms
# (found, read, unmarshalled, run: bench/cli_bench.py). Pure: the agent uses the default.

#: A command's timeout when the request names none (``timeout_seconds`` 0).
DEFAULT_COMMAND_TIMEOUT_S: "Final" = 60.0
#: What every hop allows beyond a command's own timeout: the agent killing the process
#: group and reaping it, the result's frame over virtio-serial, and two HTTP hops back.
COMMAND_MARGIN_S: "Final" = 10.0
_INFINITY: "Final" = float("inf")


def command_budget_s(timeout_seconds: float) -> float:
    """How long any hop waits for a command whose own timeout is ``timeout_seconds``
    (0: the default): that timeout plus :data:`COMMAND_MARGIN_S`.

    Raises:
        ValueError: ``timeout_seconds`` is negative or not a number.
    """
    # A comparison rather than math.isinf: math is a shared library to load, and
    # ``limiquantix exec`` calls this at start. NaN fails both comparisons.
    if not 0 <= timeout_seconds < _INFINITY:
        raise ValueError(f"a command timeout must be a finite number >= 0, not {timeout_seconds}")
    return (timeout_seconds or DEFAULT_COMMAND_TIMEOUT_S) + COMMAND_MARGIN_S


def import_lazily(package: str, where: "Mapping[str, str]", name: str) -> "Any":
    """What a package's ``__getattr__`` answers for ``name`` (PEP 562): imported from the
    module ``where[name]`` names (relative to ``package``), or that module's submodule ``name``.
    This package's own exports, hostd's, the controller's and the TUI's are imported by it on
    first use: their whole imports cost more than most of their users need (protobuf for the
    CLI's start-up, the web stack for the simulated VM, the hostile guest and the ``token``
    commands). Here, not in a module of its own: every program imports this package, and
    ``limiquantix exec`` pays for each module it loads before its request leaves.

    Raises:
        AttributeError: ``name`` is not one of ``where``'s (as for any missing attribute).
    """
    module = where.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    # __import__, not importlib: limiquantix exec asks for names at every start (ConfigError,
    # resolve), and a bare interpreter has not loaded importlib (tests/test_cli_http.py). A
    # non-empty fromlist returns the module itself, and imports ``name`` from it when it is
    # a submodule its package does not import itself (protocol._gen's agent_pb2).
    target = package + module if module.startswith(".") else module
    return getattr(__import__(target, fromlist=(name,)), name)


def __getattr__(name: str) -> object:
    # Not an export: AttributeError, and a submodule (``from limiquantix.protocol import
    # errors``) is found by the import system after it.
    value = import_lazily(__name__, _LAZY, name)
    globals()[name] = value  # the next access is a plain attribute
    return value
