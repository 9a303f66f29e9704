import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import agent_pb2 as _agent_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATE_UNSPECIFIED: _ClassVar[AgentState]
    AGENT_STATE_NO_SOCKET: _ClassVar[AgentState]
    AGENT_STATE_CONNECTING: _ClassVar[AgentState]
    AGENT_STATE_WAITING_FOR_AGENT: _ClassVar[AgentState]
    AGENT_STATE_CONNECTED: _ClassVar[AgentState]
    AGENT_STATE_UNRESPONSIVE: _ClassVar[AgentState]
    AGENT_STATE_DISABLED: _ClassVar[AgentState]
AGENT_STATE_UNSPECIFIED: AgentState
AGENT_STATE_NO_SOCKET: AgentState
AGENT_STATE_CONNECTING: AgentState
AGENT_STATE_WAITING_FOR_AGENT: AgentState
AGENT_STATE_CONNECTED: AgentState
AGENT_STATE_UNRESPONSIVE: AgentState
AGENT_STATE_DISABLED: AgentState

class GuestAgentInfo(_message.Message):
    __slots__ = ("state", "connected", "version", "identity", "last_seen", "last_disconnect_reason", "ip_addresses", "ip_addresses_truncated")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_DISCONNECT_REASON_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESSES_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    state: AgentState
    connected: bool
    version: str
    identity: _agent_pb2.AgentIdentity
    last_seen: _timestamp_pb2.Timestamp
    last_disconnect_reason: str
    ip_addresses: _containers.RepeatedScalarFieldContainer[str]
    ip_addresses_truncated: bool
    def __init__(self, state: _Optional[_Union[AgentState, str]] = ..., connected: _Optional[bool] = ..., version: _Optional[str] = ..., identity: _Optional[_Union[_agent_pb2.AgentIdentity, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_disconnect_reason: _Optional[str] = ..., ip_addresses: _Optional[_Iterable[str]] = ..., ip_addresses_truncated: _Optional[bool] = ...) -> None: ...

class GuestResourceUsage(_message.Message):
    __slots__ = ("telemetry",)
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    telemetry: _agent_pb2.TelemetryReport
    def __init__(self, telemetry: _Optional[_Union[_agent_pb2.TelemetryReport, _Mapping]] = ...) -> None: ...

class VMStatus(_message.Message):
    __slots__ = ("vm_id", "name", "labels", "socket_path", "agent", "resource_usage")
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
    SOCKET_PATH_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_USAGE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    name: str
    labels: _containers.ScalarMap[str, str]
    socket_path: str
    agent: GuestAgentInfo
    resource_usage: GuestResourceUsage
    def __init__(self, vm_id: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., socket_path: _Optional[str] = ..., agent: _Optional[_Union[GuestAgentInfo, _Mapping]] = ..., resource_usage: _Optional[_Union[GuestResourceUsage, _Mapping]] = ...) -> None: ...

class ListVMsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVMsResponse(_message.Message):
    __slots__ = ("vms",)
    VMS_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[VMStatus]
    def __init__(self, vms: _Optional[_Iterable[_Union[VMStatus, _Mapping]]] = ...) -> None: ...

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

class AgentPingResponse(_message.Message):
    __slots__ = ("connected", "version", "latency_ms", "agent_uptime_seconds", "system_uptime_seconds", "error")
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    connected: bool
    version: str
    latency_ms: float
    agent_uptime_seconds: float
    system_uptime_seconds: float
    error: str
    def __init__(self, connected: _Optional[bool] = ..., version: _Optional[str] = ..., latency_ms: _Optional[float] = ..., agent_uptime_seconds: _Optional[float] = ..., system_uptime_seconds: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class ExecuteInGuestRequest(_message.Message):
    __slots__ = ("vm_id", "request", "execution_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    request: _agent_pb2.ExecuteRequest
    execution_id: str
    def __init__(self, vm_id: _Optional[str] = ..., request: _Optional[_Union[_agent_pb2.ExecuteRequest, _Mapping]] = ..., execution_id: _Optional[str] = ...) -> None: ...

class ExecuteInGuestResponse(_message.Message):
    __slots__ = ("execution_id", "result")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    result: _agent_pb2.ExecuteResponse
    def __init__(self, execution_id: _Optional[str] = ..., result: _Optional[_Union[_agent_pb2.ExecuteResponse, _Mapping]] = ...) -> None: ...

class ExecuteInGuestEvent(_message.Message):
    __slots__ = ("execution_id", "output", "result")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    output: _agent_pb2.ExecuteOutput
    result: _agent_pb2.ExecuteResponse
    def __init__(self, execution_id: _Optional[str] = ..., output: _Optional[_Union[_agent_pb2.ExecuteOutput, _Mapping]] = ..., result: _Optional[_Union[_agent_pb2.ExecuteResponse, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("offset", "data", "eof", "file_size", "sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EOF_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    eof: bool
    file_size: int
    sha256: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., eof: _Optional[bool] = ..., file_size: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class ReadGuestFileResponse(_message.Message):
    __slots__ = ("content", "file_size", "sha256")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    file_size: int
    sha256: bytes
    def __init__(self, content: _Optional[bytes] = ..., file_size: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class WriteGuestFileRequest(_message.Message):
    __slots__ = ("vm_id", "path", "content", "write_mode", "mode", "owner", "group", "create_parents")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    WRITE_MODE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CREATE_PARENTS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    path: str
    content: bytes
    write_mode: _agent_pb2.WriteMode
    mode: int
    owner: str
    group: str
    create_parents: bool
    def __init__(self, vm_id: _Optional[str] = ..., path: _Optional[str] = ..., content: _Optional[bytes] = ..., write_mode: _Optional[_Union[_agent_pb2.WriteMode, str]] = ..., mode: _Optional[int] = ..., owner: _Optional[str] = ..., group: _Optional[str] = ..., create_parents: _Optional[bool] = ...) -> None: ...

class WriteGuestFileResponse(_message.Message):
    __slots__ = ("bytes_written", "sha256")
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    bytes_written: int
    sha256: bytes
    def __init__(self, bytes_written: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class StatGuestFileRequest(_message.Message):
    __slots__ = ("vm_id", "path")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    path: str
    def __init__(self, vm_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

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

class GuestShutdownRequest(_message.Message):
    __slots__ = ("vm_id", "reboot", "mode", "delay_seconds", "message")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    REBOOT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    reboot: bool
    mode: _agent_pb2.ShutdownMode
    delay_seconds: int
    message: str
    def __init__(self, vm_id: _Optional[str] = ..., reboot: _Optional[bool] = ..., mode: _Optional[_Union[_agent_pb2.ShutdownMode, str]] = ..., delay_seconds: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GuestShutdownResponse(_message.Message):
    __slots__ = ("accepted", "scheduled_at")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    scheduled_at: _timestamp_pb2.Timestamp
    def __init__(self, accepted: _Optional[bool] = ..., scheduled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

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
