import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import agent_pb2 as _agent_pb2
from . import node_daemon_pb2 as _node_daemon_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VM(_message.Message):
    __slots__ = ("vm_id", "name", "labels", "node_id", "agent_state", "node_reachable", "agent_version", "ip_addresses", "hostname", "os", "kernel", "last_seen", "last_disconnect_reason", "cpu_percent", "memory_percent", "uptime_seconds", "identity", "telemetry", "state", "last_reported")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_DISCONNECT_REASON_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORTED_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    name: str
    labels: _containers.ScalarMap[str, str]
    node_id: str
    agent_state: str
    node_reachable: bool
    agent_version: str
    ip_addresses: _containers.RepeatedScalarFieldContainer[str]
    hostname: str
    os: str
    kernel: str
    last_seen: _timestamp_pb2.Timestamp
    last_disconnect_reason: str
    cpu_percent: float
    memory_percent: float
    uptime_seconds: float
    identity: _agent_pb2.AgentIdentity
    telemetry: _agent_pb2.TelemetryReport
    state: str
    last_reported: _timestamp_pb2.Timestamp
    def __init__(self, vm_id: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., node_id: _Optional[str] = ..., agent_state: _Optional[str] = ..., node_reachable: _Optional[bool] = ..., agent_version: _Optional[str] = ..., ip_addresses: _Optional[_Iterable[str]] = ..., hostname: _Optional[str] = ..., os: _Optional[str] = ..., kernel: _Optional[str] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_disconnect_reason: _Optional[str] = ..., cpu_percent: _Optional[float] = ..., memory_percent: _Optional[float] = ..., uptime_seconds: _Optional[float] = ..., identity: _Optional[_Union[_agent_pb2.AgentIdentity, _Mapping]] = ..., telemetry: _Optional[_Union[_agent_pb2.TelemetryReport, _Mapping]] = ..., state: _Optional[str] = ..., last_reported: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListVMsRequest(_message.Message):
    __slots__ = ("node_id", "state", "labels", "page_size", "page_token")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    state: str
    labels: _containers.ScalarMap[str, str]
    page_size: int
    page_token: str
    def __init__(self, node_id: _Optional[str] = ..., state: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVMsResponse(_message.Message):
    __slots__ = ("vms", "next_page_token")
    VMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[VM]
    next_page_token: str
    def __init__(self, vms: _Optional[_Iterable[_Union[VM, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetVMRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class PingAgentRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class PingAgentResponse(_message.Message):
    __slots__ = ("connected", "version", "latency_ms", "uptime_seconds", "error")
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    connected: bool
    version: str
    latency_ms: float
    uptime_seconds: float
    error: str
    def __init__(self, connected: _Optional[bool] = ..., version: _Optional[str] = ..., latency_ms: _Optional[float] = ..., uptime_seconds: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class ExecuteScriptRequest(_message.Message):
    __slots__ = ("vm_id", "command", "args", "timeout_seconds", "working_directory", "environment", "run_as_user", "stdin", "execution_id")
    class EnvironmentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    RUN_AS_USER_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    command: str
    args: _containers.RepeatedScalarFieldContainer[str]
    timeout_seconds: int
    working_directory: str
    environment: _containers.ScalarMap[str, str]
    run_as_user: str
    stdin: bytes
    execution_id: str
    def __init__(self, vm_id: _Optional[str] = ..., command: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., timeout_seconds: _Optional[int] = ..., working_directory: _Optional[str] = ..., environment: _Optional[_Mapping[str, str]] = ..., run_as_user: _Optional[str] = ..., stdin: _Optional[bytes] = ..., execution_id: _Optional[str] = ...) -> None: ...

class ExecuteScriptResponse(_message.Message):
    __slots__ = ("exit_code", "stdout", "stderr", "timed_out", "duration_ms", "stdout_truncated", "stderr_truncated", "exit_reason", "signal", "error", "execution_id")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDERR_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    EXIT_REASON_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    duration_ms: int
    stdout_truncated: bool
    stderr_truncated: bool
    exit_reason: str
    signal: int
    error: str
    execution_id: str
    def __init__(self, exit_code: _Optional[int] = ..., stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., timed_out: _Optional[bool] = ..., duration_ms: _Optional[int] = ..., stdout_truncated: _Optional[bool] = ..., stderr_truncated: _Optional[bool] = ..., exit_reason: _Optional[str] = ..., signal: _Optional[int] = ..., error: _Optional[str] = ..., execution_id: _Optional[str] = ...) -> None: ...

class ReadGuestFileRequest(_message.Message):
    __slots__ = ("vm_id", "path", "offset", "length")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    path: str
    offset: int
    length: int
    def __init__(self, vm_id: _Optional[str] = ..., path: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class ReadGuestFileChunk(_message.Message):
    __slots__ = ("offset", "content", "eof", "size", "sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    EOF_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    content: bytes
    eof: bool
    size: int
    sha256: str
    def __init__(self, offset: _Optional[int] = ..., content: _Optional[bytes] = ..., eof: _Optional[bool] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ReadGuestFileResponse(_message.Message):
    __slots__ = ("content", "size", "sha256")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    size: int
    sha256: str
    def __init__(self, content: _Optional[bytes] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class WriteGuestFileRequest(_message.Message):
    __slots__ = ("vm_id", "path", "content", "mode", "append", "create_parents")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    CREATE_PARENTS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    path: str
    content: bytes
    mode: int
    append: bool
    create_parents: bool
    def __init__(self, vm_id: _Optional[str] = ..., path: _Optional[str] = ..., content: _Optional[bytes] = ..., mode: _Optional[int] = ..., append: _Optional[bool] = ..., create_parents: _Optional[bool] = ...) -> None: ...

class WriteGuestFileResponse(_message.Message):
    __slots__ = ("bytes_written", "sha256")
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    bytes_written: int
    sha256: str
    def __init__(self, bytes_written: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class GuestShutdownRequest(_message.Message):
    __slots__ = ("vm_id", "reboot", "delay_seconds", "message")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    REBOOT_FIELD_NUMBER: _ClassVar[int]
    DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    reboot: bool
    delay_seconds: int
    message: str
    def __init__(self, vm_id: _Optional[str] = ..., reboot: _Optional[bool] = ..., delay_seconds: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GuestShutdownResponse(_message.Message):
    __slots__ = ("accepted", "scheduled_at")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    scheduled_at: _timestamp_pb2.Timestamp
    def __init__(self, accepted: _Optional[bool] = ..., scheduled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExecuteScriptEvent(_message.Message):
    __slots__ = ("execution_id", "output", "result")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    output: ExecuteScriptOutput
    result: ExecuteScriptResponse
    def __init__(self, execution_id: _Optional[str] = ..., output: _Optional[_Union[ExecuteScriptOutput, _Mapping]] = ..., result: _Optional[_Union[ExecuteScriptResponse, _Mapping]] = ...) -> None: ...

class ExecuteScriptOutput(_message.Message):
    __slots__ = ("seq", "stream", "text")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    stream: str
    text: str
    def __init__(self, seq: _Optional[int] = ..., stream: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class CancelExecutionRequest(_message.Message):
    __slots__ = ("vm_id", "execution_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    execution_id: str
    def __init__(self, vm_id: _Optional[str] = ..., execution_id: _Optional[str] = ...) -> None: ...

class CancelExecutionResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class StatGuestFileRequest(_message.Message):
    __slots__ = ("vm_id", "path")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    path: str
    def __init__(self, vm_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class StatGuestFileResponse(_message.Message):
    __slots__ = ("stat",)
    STAT_FIELD_NUMBER: _ClassVar[int]
    stat: _agent_pb2.FileStat
    def __init__(self, stat: _Optional[_Union[_agent_pb2.FileStat, _Mapping]] = ...) -> None: ...

class ListGuestDirectoryRequest(_message.Message):
    __slots__ = ("vm_id", "path", "page_size", "page_token")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    path: str
    page_size: int
    page_token: str
    def __init__(self, vm_id: _Optional[str] = ..., path: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListGuestDirectoryResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_agent_pb2.FileStat]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[_agent_pb2.FileStat, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ResetGuestPasswordRequest(_message.Message):
    __slots__ = ("vm_id", "username", "password", "expire")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    username: str
    password: str
    expire: bool
    def __init__(self, vm_id: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ..., expire: _Optional[bool] = ...) -> None: ...

class ResetGuestPasswordResponse(_message.Message):
    __slots__ = ("expired",)
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    expired: bool
    def __init__(self, expired: _Optional[bool] = ...) -> None: ...

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node_id", "url", "token", "vms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    url: str
    token: str
    vms: _containers.RepeatedCompositeFieldContainer[_node_daemon_pb2.VMStatus]
    def __init__(self, node_id: _Optional[str] = ..., url: _Optional[str] = ..., token: _Optional[str] = ..., vms: _Optional[_Iterable[_Union[_node_daemon_pb2.VMStatus, _Mapping]]] = ...) -> None: ...

class RegisterNodeResponse(_message.Message):
    __slots__ = ("heartbeat_timeout_seconds",)
    HEARTBEAT_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    heartbeat_timeout_seconds: float
    def __init__(self, heartbeat_timeout_seconds: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "vms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    vms: _containers.RepeatedCompositeFieldContainer[_node_daemon_pb2.VMStatus]
    def __init__(self, node_id: _Optional[str] = ..., vms: _Optional[_Iterable[_Union[_node_daemon_pb2.VMStatus, _Mapping]]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Node(_message.Message):
    __slots__ = ("node_id", "url", "registered_at", "last_heartbeat", "reachable", "vm_count")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    VM_COUNT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    url: str
    registered_at: _timestamp_pb2.Timestamp
    last_heartbeat: _timestamp_pb2.Timestamp
    reachable: bool
    vm_count: int
    def __init__(self, node_id: _Optional[str] = ..., url: _Optional[str] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_heartbeat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reachable: _Optional[bool] = ..., vm_count: _Optional[int] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...
