import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
    __slots__ = ("vm_id", "command", "args", "timeout_seconds", "working_directory", "environment", "run_as_user", "stdin")
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
    vm_id: str
    command: str
    args: _containers.RepeatedScalarFieldContainer[str]
    timeout_seconds: int
    working_directory: str
    environment: _containers.ScalarMap[str, str]
    run_as_user: str
    stdin: bytes
    def __init__(self, vm_id: _Optional[str] = ..., command: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., timeout_seconds: _Optional[int] = ..., working_directory: _Optional[str] = ..., environment: _Optional[_Mapping[str, str]] = ..., run_as_user: _Optional[str] = ..., stdin: _Optional[bytes] = ...) -> None: ...

class ExecuteScriptResponse(_message.Message):
    __slots__ = ("exit_code", "stdout", "stderr", "timed_out", "duration_ms", "stdout_truncated", "stderr_truncated", "exit_reason", "signal", "error")
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
    def __init__(self, exit_code: _Optional[int] = ..., stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., timed_out: _Optional[bool] = ..., duration_ms: _Optional[int] = ..., stdout_truncated: _Optional[bool] = ..., stderr_truncated: _Optional[bool] = ..., exit_reason: _Optional[str] = ..., signal: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

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
