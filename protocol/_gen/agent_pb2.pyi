import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_ARGUMENT: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_PERMISSION_DENIED: _ClassVar[ErrorCode]
    ERROR_CODE_RESOURCE_EXHAUSTED: _ClassVar[ErrorCode]
    ERROR_CODE_FAILED_PRECONDITION: _ClassVar[ErrorCode]
    ERROR_CODE_DEADLINE_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_UNIMPLEMENTED: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_ALREADY_EXISTS: _ClassVar[ErrorCode]
    ERROR_CODE_CANCELLED: _ClassVar[ErrorCode]
    ERROR_CODE_UNAUTHENTICATED: _ClassVar[ErrorCode]

class EnvMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENV_MODE_MERGE: _ClassVar[EnvMode]
    ENV_MODE_REPLACE: _ClassVar[EnvMode]

class ExitReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXIT_REASON_UNSPECIFIED: _ClassVar[ExitReason]
    EXIT_REASON_EXITED: _ClassVar[ExitReason]
    EXIT_REASON_SIGNALED: _ClassVar[ExitReason]
    EXIT_REASON_TIMED_OUT: _ClassVar[ExitReason]
    EXIT_REASON_CANCELLED: _ClassVar[ExitReason]
    EXIT_REASON_FAILED_TO_START: _ClassVar[ExitReason]

class OutputStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_STREAM_UNSPECIFIED: _ClassVar[OutputStream]
    OUTPUT_STREAM_STDOUT: _ClassVar[OutputStream]
    OUTPUT_STREAM_STDERR: _ClassVar[OutputStream]

class WriteMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_MODE_TRUNCATE: _ClassVar[WriteMode]
    WRITE_MODE_APPEND: _ClassVar[WriteMode]
    WRITE_MODE_CREATE_NEW: _ClassVar[WriteMode]

class FileType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_TYPE_UNSPECIFIED: _ClassVar[FileType]
    FILE_TYPE_REGULAR: _ClassVar[FileType]
    FILE_TYPE_DIRECTORY: _ClassVar[FileType]
    FILE_TYPE_SYMLINK: _ClassVar[FileType]
    FILE_TYPE_OTHER: _ClassVar[FileType]

class ShutdownMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHUTDOWN_MODE_POWEROFF: _ClassVar[ShutdownMode]
    SHUTDOWN_MODE_REBOOT: _ClassVar[ShutdownMode]
    SHUTDOWN_MODE_HALT: _ClassVar[ShutdownMode]
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_INVALID_ARGUMENT: ErrorCode
ERROR_CODE_NOT_FOUND: ErrorCode
ERROR_CODE_PERMISSION_DENIED: ErrorCode
ERROR_CODE_RESOURCE_EXHAUSTED: ErrorCode
ERROR_CODE_FAILED_PRECONDITION: ErrorCode
ERROR_CODE_DEADLINE_EXCEEDED: ErrorCode
ERROR_CODE_UNAVAILABLE: ErrorCode
ERROR_CODE_UNIMPLEMENTED: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_ALREADY_EXISTS: ErrorCode
ERROR_CODE_CANCELLED: ErrorCode
ERROR_CODE_UNAUTHENTICATED: ErrorCode
ENV_MODE_MERGE: EnvMode
ENV_MODE_REPLACE: EnvMode
EXIT_REASON_UNSPECIFIED: ExitReason
EXIT_REASON_EXITED: ExitReason
EXIT_REASON_SIGNALED: ExitReason
EXIT_REASON_TIMED_OUT: ExitReason
EXIT_REASON_CANCELLED: ExitReason
EXIT_REASON_FAILED_TO_START: ExitReason
OUTPUT_STREAM_UNSPECIFIED: OutputStream
OUTPUT_STREAM_STDOUT: OutputStream
OUTPUT_STREAM_STDERR: OutputStream
WRITE_MODE_TRUNCATE: WriteMode
WRITE_MODE_APPEND: WriteMode
WRITE_MODE_CREATE_NEW: WriteMode
FILE_TYPE_UNSPECIFIED: FileType
FILE_TYPE_REGULAR: FileType
FILE_TYPE_DIRECTORY: FileType
FILE_TYPE_SYMLINK: FileType
FILE_TYPE_OTHER: FileType
SHUTDOWN_MODE_POWEROFF: ShutdownMode
SHUTDOWN_MODE_REBOOT: ShutdownMode
SHUTDOWN_MODE_HALT: ShutdownMode

class AgentMessage(_message.Message):
    __slots__ = ("message_id", "timestamp", "ping", "execute", "file_write", "file_read", "shutdown", "hello", "cancel", "file_stat", "list_directory", "reset_password", "info", "get_telemetry", "pong", "execute_response", "file_write_response", "file_read_chunk", "shutdown_response", "hello_response", "cancel_response", "file_stat_response", "list_directory_response", "reset_password_response", "execute_output", "error", "info_response", "telemetry_response", "telemetry", "agent_ready", "ip_changed", "shutdown_started", "agent_stopping")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_FIELD_NUMBER: _ClassVar[int]
    FILE_WRITE_FIELD_NUMBER: _ClassVar[int]
    FILE_READ_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    FILE_STAT_FIELD_NUMBER: _ClassVar[int]
    LIST_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    RESET_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    GET_TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    FILE_WRITE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    FILE_READ_CHUNK_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    HELLO_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    FILE_STAT_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    LIST_DIRECTORY_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    RESET_PASSWORD_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INFO_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    AGENT_READY_FIELD_NUMBER: _ClassVar[int]
    IP_CHANGED_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_STARTED_FIELD_NUMBER: _ClassVar[int]
    AGENT_STOPPING_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    timestamp: _timestamp_pb2.Timestamp
    ping: PingRequest
    execute: ExecuteRequest
    file_write: FileWriteRequest
    file_read: FileReadRequest
    shutdown: ShutdownRequest
    hello: HelloRequest
    cancel: CancelRequest
    file_stat: FileStatRequest
    list_directory: ListDirectoryRequest
    reset_password: ResetPasswordRequest
    info: InfoRequest
    get_telemetry: TelemetryRequest
    pong: PongResponse
    execute_response: ExecuteResponse
    file_write_response: FileWriteResponse
    file_read_chunk: FileReadChunk
    shutdown_response: ShutdownResponse
    hello_response: HelloResponse
    cancel_response: CancelResponse
    file_stat_response: FileStat
    list_directory_response: ListDirectoryResponse
    reset_password_response: ResetPasswordResponse
    execute_output: ExecuteOutput
    error: Error
    info_response: AgentIdentity
    telemetry_response: TelemetryReport
    telemetry: TelemetryReport
    agent_ready: AgentReadyEvent
    ip_changed: IpChangedEvent
    shutdown_started: ShutdownStartedEvent
    agent_stopping: AgentStoppingEvent
    def __init__(self, message_id: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ping: _Optional[_Union[PingRequest, _Mapping]] = ..., execute: _Optional[_Union[ExecuteRequest, _Mapping]] = ..., file_write: _Optional[_Union[FileWriteRequest, _Mapping]] = ..., file_read: _Optional[_Union[FileReadRequest, _Mapping]] = ..., shutdown: _Optional[_Union[ShutdownRequest, _Mapping]] = ..., hello: _Optional[_Union[HelloRequest, _Mapping]] = ..., cancel: _Optional[_Union[CancelRequest, _Mapping]] = ..., file_stat: _Optional[_Union[FileStatRequest, _Mapping]] = ..., list_directory: _Optional[_Union[ListDirectoryRequest, _Mapping]] = ..., reset_password: _Optional[_Union[ResetPasswordRequest, _Mapping]] = ..., info: _Optional[_Union[InfoRequest, _Mapping]] = ..., get_telemetry: _Optional[_Union[TelemetryRequest, _Mapping]] = ..., pong: _Optional[_Union[PongResponse, _Mapping]] = ..., execute_response: _Optional[_Union[ExecuteResponse, _Mapping]] = ..., file_write_response: _Optional[_Union[FileWriteResponse, _Mapping]] = ..., file_read_chunk: _Optional[_Union[FileReadChunk, _Mapping]] = ..., shutdown_response: _Optional[_Union[ShutdownResponse, _Mapping]] = ..., hello_response: _Optional[_Union[HelloResponse, _Mapping]] = ..., cancel_response: _Optional[_Union[CancelResponse, _Mapping]] = ..., file_stat_response: _Optional[_Union[FileStat, _Mapping]] = ..., list_directory_response: _Optional[_Union[ListDirectoryResponse, _Mapping]] = ..., reset_password_response: _Optional[_Union[ResetPasswordResponse, _Mapping]] = ..., execute_output: _Optional[_Union[ExecuteOutput, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., info_response: _Optional[_Union[AgentIdentity, _Mapping]] = ..., telemetry_response: _Optional[_Union[TelemetryReport, _Mapping]] = ..., telemetry: _Optional[_Union[TelemetryReport, _Mapping]] = ..., agent_ready: _Optional[_Union[AgentReadyEvent, _Mapping]] = ..., ip_changed: _Optional[_Union[IpChangedEvent, _Mapping]] = ..., shutdown_started: _Optional[_Union[ShutdownStartedEvent, _Mapping]] = ..., agent_stopping: _Optional[_Union[AgentStoppingEvent, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    reason: str
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ("sync_id", "host_version")
    SYNC_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_VERSION_FIELD_NUMBER: _ClassVar[int]
    sync_id: int
    host_version: str
    def __init__(self, sync_id: _Optional[int] = ..., host_version: _Optional[str] = ...) -> None: ...

class HelloResponse(_message.Message):
    __slots__ = ("sync_id", "identity")
    SYNC_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    sync_id: int
    identity: AgentIdentity
    def __init__(self, sync_id: _Optional[int] = ..., identity: _Optional[_Union[AgentIdentity, _Mapping]] = ...) -> None: ...

class AgentReadyEvent(_message.Message):
    __slots__ = ("identity",)
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    identity: AgentIdentity
    def __init__(self, identity: _Optional[_Union[AgentIdentity, _Mapping]] = ...) -> None: ...

class AgentStoppingEvent(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class OsInfo(_message.Message):
    __slots__ = ("name", "version", "id", "version_id", "pretty_name", "family")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    PRETTY_NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    id: str
    version_id: str
    pretty_name: str
    family: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., id: _Optional[str] = ..., version_id: _Optional[str] = ..., pretty_name: _Optional[str] = ..., family: _Optional[str] = ...) -> None: ...

class AgentIdentity(_message.Message):
    __slots__ = ("agent_version", "protocol_version", "os", "kernel", "kernel_version", "architecture", "hostname", "boot_time", "agent_started_at", "interfaces", "capabilities", "disabled_capabilities", "pid", "max_frame_bytes", "python_version", "machine_id", "truncated")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    KERNEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    BOOT_TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    DISABLED_CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    protocol_version: int
    os: OsInfo
    kernel: str
    kernel_version: str
    architecture: str
    hostname: str
    boot_time: _timestamp_pb2.Timestamp
    agent_started_at: _timestamp_pb2.Timestamp
    interfaces: _containers.RepeatedCompositeFieldContainer[NetworkInterface]
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    disabled_capabilities: _containers.RepeatedScalarFieldContainer[str]
    pid: int
    max_frame_bytes: int
    python_version: str
    machine_id: str
    truncated: bool
    def __init__(self, agent_version: _Optional[str] = ..., protocol_version: _Optional[int] = ..., os: _Optional[_Union[OsInfo, _Mapping]] = ..., kernel: _Optional[str] = ..., kernel_version: _Optional[str] = ..., architecture: _Optional[str] = ..., hostname: _Optional[str] = ..., boot_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., interfaces: _Optional[_Iterable[_Union[NetworkInterface, _Mapping]]] = ..., capabilities: _Optional[_Iterable[str]] = ..., disabled_capabilities: _Optional[_Iterable[str]] = ..., pid: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ..., python_version: _Optional[str] = ..., machine_id: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class PongResponse(_message.Message):
    __slots__ = ("payload", "agent_uptime_seconds", "system_uptime_seconds", "agent_version")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    AGENT_UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    agent_uptime_seconds: float
    system_uptime_seconds: float
    agent_version: str
    def __init__(self, payload: _Optional[bytes] = ..., agent_uptime_seconds: _Optional[float] = ..., system_uptime_seconds: _Optional[float] = ..., agent_version: _Optional[str] = ...) -> None: ...

class RunAs(_message.Message):
    __slots__ = ("user", "uid", "gid", "groups")
    USER_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    user: str
    uid: int
    gid: int
    groups: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, user: _Optional[str] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., groups: _Optional[_Iterable[int]] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("argv", "command", "shell", "stdin", "env", "env_mode", "working_directory", "run_as", "timeout_seconds", "stdout_limit_bytes", "stderr_limit_bytes", "stream")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARGV_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    SHELL_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    ENV_MODE_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    RUN_AS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STDOUT_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDERR_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    argv: _containers.RepeatedScalarFieldContainer[str]
    command: str
    shell: str
    stdin: bytes
    env: _containers.ScalarMap[str, str]
    env_mode: EnvMode
    working_directory: str
    run_as: RunAs
    timeout_seconds: int
    stdout_limit_bytes: int
    stderr_limit_bytes: int
    stream: bool
    def __init__(self, argv: _Optional[_Iterable[str]] = ..., command: _Optional[str] = ..., shell: _Optional[str] = ..., stdin: _Optional[bytes] = ..., env: _Optional[_Mapping[str, str]] = ..., env_mode: _Optional[_Union[EnvMode, str]] = ..., working_directory: _Optional[str] = ..., run_as: _Optional[_Union[RunAs, _Mapping]] = ..., timeout_seconds: _Optional[int] = ..., stdout_limit_bytes: _Optional[int] = ..., stderr_limit_bytes: _Optional[int] = ..., stream: _Optional[bool] = ...) -> None: ...

class ExecuteOutput(_message.Message):
    __slots__ = ("seq", "stream", "data")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    seq: int
    stream: OutputStream
    data: bytes
    def __init__(self, seq: _Optional[int] = ..., stream: _Optional[_Union[OutputStream, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("exit_reason", "exit_code", "signal", "stdout", "stderr", "stdout_truncated", "stderr_truncated", "duration_ms", "timed_out", "error", "pid", "stdout_bytes", "stderr_bytes", "last_seq")
    EXIT_REASON_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDERR_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STDOUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDERR_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    exit_reason: ExitReason
    exit_code: int
    signal: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int
    timed_out: bool
    error: str
    pid: int
    stdout_bytes: int
    stderr_bytes: int
    last_seq: int
    def __init__(self, exit_reason: _Optional[_Union[ExitReason, str]] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., stdout_truncated: _Optional[bool] = ..., stderr_truncated: _Optional[bool] = ..., duration_ms: _Optional[int] = ..., timed_out: _Optional[bool] = ..., error: _Optional[str] = ..., pid: _Optional[int] = ..., stdout_bytes: _Optional[int] = ..., stderr_bytes: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("target_message_id",)
    TARGET_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    target_message_id: str
    def __init__(self, target_message_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class FileReadRequest(_message.Message):
    __slots__ = ("path", "offset", "length", "chunk_size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    length: int
    chunk_size: int
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class FileReadChunk(_message.Message):
    __slots__ = ("offset", "data", "eof", "sha256", "file_size", "total_bytes")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EOF_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    eof: bool
    sha256: bytes
    file_size: int
    total_bytes: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., eof: _Optional[bool] = ..., sha256: _Optional[bytes] = ..., file_size: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class FileWriteRequest(_message.Message):
    __slots__ = ("path", "write_id", "data", "last", "mode", "file_mode", "owner", "group", "create_parents", "expected_sha256", "offset")
    PATH_FIELD_NUMBER: _ClassVar[int]
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FILE_MODE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CREATE_PARENTS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    path: str
    write_id: str
    data: bytes
    last: bool
    mode: WriteMode
    file_mode: int
    owner: str
    group: str
    create_parents: bool
    expected_sha256: bytes
    offset: int
    def __init__(self, path: _Optional[str] = ..., write_id: _Optional[str] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., mode: _Optional[_Union[WriteMode, str]] = ..., file_mode: _Optional[int] = ..., owner: _Optional[str] = ..., group: _Optional[str] = ..., create_parents: _Optional[bool] = ..., expected_sha256: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class FileWriteResponse(_message.Message):
    __slots__ = ("write_id", "bytes_written", "committed", "sha256", "size")
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    write_id: str
    bytes_written: int
    committed: bool
    sha256: bytes
    size: int
    def __init__(self, write_id: _Optional[str] = ..., bytes_written: _Optional[int] = ..., committed: _Optional[bool] = ..., sha256: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class FileStatRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class FileStat(_message.Message):
    __slots__ = ("path", "name", "type", "size", "mode", "uid", "gid", "owner", "group", "modified", "accessed", "changed", "symlink_target")
    PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_FIELD_NUMBER: _ClassVar[int]
    ACCESSED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    SYMLINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    path: str
    name: str
    type: FileType
    size: int
    mode: int
    uid: int
    gid: int
    owner: str
    group: str
    modified: _timestamp_pb2.Timestamp
    accessed: _timestamp_pb2.Timestamp
    changed: _timestamp_pb2.Timestamp
    symlink_target: str
    def __init__(self, path: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[_Union[FileType, str]] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., owner: _Optional[str] = ..., group: _Optional[str] = ..., modified: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., accessed: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., changed: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., symlink_target: _Optional[str] = ...) -> None: ...

class ListDirectoryRequest(_message.Message):
    __slots__ = ("path", "page_size", "page_token")
    PATH_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    path: str
    page_size: int
    page_token: str
    def __init__(self, path: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDirectoryResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[FileStat]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[FileStat, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ("mode", "delay_seconds", "message")
    MODE_FIELD_NUMBER: _ClassVar[int]
    DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    mode: ShutdownMode
    delay_seconds: int
    message: str
    def __init__(self, mode: _Optional[_Union[ShutdownMode, str]] = ..., delay_seconds: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ShutdownResponse(_message.Message):
    __slots__ = ("accepted", "scheduled_at")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    scheduled_at: _timestamp_pb2.Timestamp
    def __init__(self, accepted: _Optional[bool] = ..., scheduled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ShutdownStartedEvent(_message.Message):
    __slots__ = ("mode", "scheduled_at", "message")
    MODE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    mode: ShutdownMode
    scheduled_at: _timestamp_pb2.Timestamp
    message: str
    def __init__(self, mode: _Optional[_Union[ShutdownMode, str]] = ..., scheduled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class ResetPasswordRequest(_message.Message):
    __slots__ = ("username", "password", "expire")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    expire: bool
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ..., expire: _Optional[bool] = ...) -> None: ...

class ResetPasswordResponse(_message.Message):
    __slots__ = ("expired",)
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    expired: bool
    def __init__(self, expired: _Optional[bool] = ...) -> None: ...

class TelemetryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MemoryUsage(_message.Message):
    __slots__ = ("total_bytes", "used_bytes", "available_bytes", "percent")
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    used_bytes: int
    available_bytes: int
    percent: float
    def __init__(self, total_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., available_bytes: _Optional[int] = ..., percent: _Optional[float] = ...) -> None: ...

class SwapUsage(_message.Message):
    __slots__ = ("total_bytes", "used_bytes", "free_bytes")
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    used_bytes: int
    free_bytes: int
    def __init__(self, total_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., free_bytes: _Optional[int] = ...) -> None: ...

class FilesystemUsage(_message.Message):
    __slots__ = ("mountpoint", "device", "fstype", "total_bytes", "used_bytes", "free_bytes", "percent")
    MOUNTPOINT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FSTYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    mountpoint: str
    device: str
    fstype: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    percent: float
    def __init__(self, mountpoint: _Optional[str] = ..., device: _Optional[str] = ..., fstype: _Optional[str] = ..., total_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., free_bytes: _Optional[int] = ..., percent: _Optional[float] = ...) -> None: ...

class IpAddress(_message.Message):
    __slots__ = ("address", "prefix_length", "ipv6")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    IPV6_FIELD_NUMBER: _ClassVar[int]
    address: str
    prefix_length: int
    ipv6: bool
    def __init__(self, address: _Optional[str] = ..., prefix_length: _Optional[int] = ..., ipv6: _Optional[bool] = ...) -> None: ...

class NetworkInterface(_message.Message):
    __slots__ = ("name", "mac", "ipv4", "ipv6", "up", "mtu", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_errors", "tx_errors", "speed_mbps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    IPV4_FIELD_NUMBER: _ClassVar[int]
    IPV6_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    RX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    TX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    RX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    TX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    SPEED_MBPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    mac: str
    ipv4: _containers.RepeatedCompositeFieldContainer[IpAddress]
    ipv6: _containers.RepeatedCompositeFieldContainer[IpAddress]
    up: bool
    mtu: int
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_errors: int
    tx_errors: int
    speed_mbps: int
    def __init__(self, name: _Optional[str] = ..., mac: _Optional[str] = ..., ipv4: _Optional[_Iterable[_Union[IpAddress, _Mapping]]] = ..., ipv6: _Optional[_Iterable[_Union[IpAddress, _Mapping]]] = ..., up: _Optional[bool] = ..., mtu: _Optional[int] = ..., rx_bytes: _Optional[int] = ..., tx_bytes: _Optional[int] = ..., rx_packets: _Optional[int] = ..., tx_packets: _Optional[int] = ..., rx_errors: _Optional[int] = ..., tx_errors: _Optional[int] = ..., speed_mbps: _Optional[int] = ...) -> None: ...

class LoggedInUser(_message.Message):
    __slots__ = ("name", "terminal", "host", "started")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    name: str
    terminal: str
    host: str
    started: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., terminal: _Optional[str] = ..., host: _Optional[str] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TelemetryReport(_message.Message):
    __slots__ = ("collected_at", "cpu_percent", "cpu_count", "per_cpu_percent", "memory", "swap", "filesystems", "interfaces", "load1", "load5", "load15", "process_count", "uptime_seconds", "users", "truncated")
    COLLECTED_AT_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    PER_CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    SWAP_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEMS_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    LOAD1_FIELD_NUMBER: _ClassVar[int]
    LOAD5_FIELD_NUMBER: _ClassVar[int]
    LOAD15_FIELD_NUMBER: _ClassVar[int]
    PROCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    collected_at: _timestamp_pb2.Timestamp
    cpu_percent: float
    cpu_count: int
    per_cpu_percent: _containers.RepeatedScalarFieldContainer[float]
    memory: MemoryUsage
    swap: SwapUsage
    filesystems: _containers.RepeatedCompositeFieldContainer[FilesystemUsage]
    interfaces: _containers.RepeatedCompositeFieldContainer[NetworkInterface]
    load1: float
    load5: float
    load15: float
    process_count: int
    uptime_seconds: float
    users: _containers.RepeatedCompositeFieldContainer[LoggedInUser]
    truncated: bool
    def __init__(self, collected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cpu_percent: _Optional[float] = ..., cpu_count: _Optional[int] = ..., per_cpu_percent: _Optional[_Iterable[float]] = ..., memory: _Optional[_Union[MemoryUsage, _Mapping]] = ..., swap: _Optional[_Union[SwapUsage, _Mapping]] = ..., filesystems: _Optional[_Iterable[_Union[FilesystemUsage, _Mapping]]] = ..., interfaces: _Optional[_Iterable[_Union[NetworkInterface, _Mapping]]] = ..., load1: _Optional[float] = ..., load5: _Optional[float] = ..., load15: _Optional[float] = ..., process_count: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., users: _Optional[_Iterable[_Union[LoggedInUser, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class IpChangedEvent(_message.Message):
    __slots__ = ("interfaces",)
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    interfaces: _containers.RepeatedCompositeFieldContainer[NetworkInterface]
    def __init__(self, interfaces: _Optional[_Iterable[_Union[NetworkInterface, _Mapping]]] = ...) -> None: ...
