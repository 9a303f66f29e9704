"""Agent configuration: one frozen dataclass, read from TOML, every key a flag.

The TOML file (default ``/etc/limiquantix/agent.toml``) holds the field names
as keys, either at the top level or inside tables, which only group them for
readability (``[exec]\nexec_default_timeout_s = 30``). Every field is also a
command-line flag (``--telemetry-interval-s 10``); flags win over the file.
The loader is the one every daemon shares (:mod:`limiquantix.protocol.config`).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from limiquantix.protocol import DEFAULT_COMMAND_TIMEOUT_S, FRAME_HEADROOM_BYTES
from limiquantix.protocol import HEADER_SIZE as _FRAME_HEADER_BYTES
from limiquantix.protocol import config as _loader
from limiquantix.protocol.config import ConfigError, check_log_format

__all__ = ["DEFAULT_CONFIG_PATH", "DEFAULT_DEVICE", "AgentConfig", "ConfigError", "load_config"]

DEFAULT_CONFIG_PATH: Final = Path("/etc/limiquantix/agent.toml")
DEFAULT_DEVICE: Final = "/dev/virtio-ports/org.limiquantix.agent.0"
MiB: Final = 1024 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Every setting of the agent. Field docs become ``--help`` text."""

    transport: str = "virtio"
    """virtio (a character device: virtio-serial port or pty), unix-listen or unix-connect."""
    device: str = DEFAULT_DEVICE
    """Character device for transport=virtio."""
    socket: str = ""
    """Unix socket path for transport=unix-listen / unix-connect."""

    max_frame_bytes: int = 16 * MiB
    """Largest frame accepted or sent."""
    max_inflight_requests: int = 4096
    """Requests running at once on one connection; beyond it: resource_exhausted."""
    max_concurrent_commands: int = 16
    """Commands (execute) running at once; beyond it: resource_exhausted."""
    max_request_bytes: int = 256 * MiB
    """Requests being handled, all connections together, in bytes (their stdin, data); beyond it: resource_exhausted."""
    max_connections: int = 16
    """transport=unix-listen: clients served at once; further ones are closed at once (and logged)."""
    max_buffered_bytes: int = 64 * MiB
    """Partial frames all connections together may buffer; the connection that exceeds it is closed."""
    partial_frame_timeout_s: float = 60.0
    """Seconds a started frame may take to complete (16 MiB take ~5 s in a TCG guest); then the connection is closed."""
    write_stall_timeout_s: float = 60.0
    """Seconds one answer frame may take to be written (the host is not reading); then the connection is closed."""
    disable: tuple[str, ...] = ()
    """Request types to refuse with unimplemented (like qemu-ga --block-rpcs), e.g. execute,file_write."""

    telemetry_interval_s: float = 5.0
    """Seconds between telemetry reports; 0 turns them off."""
    ip_check_interval_s: float = 2.0
    """Seconds between address checks for the ip_changed event (at most 5)."""
    interface_exclude: tuple[str, ...] = ("lo", "docker*", "veth*", "virbr*", "cni*", "flannel*")
    """Interface name patterns left out of IP reports."""

    exec_default_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S
    """Timeout of a command that names none."""
    exec_max_timeout_s: float = 86400.0
    """Largest timeout a request may ask for."""
    exec_output_limit_bytes: int = 1 * MiB
    """Default cap of stdout and of stderr, each."""
    exec_max_output_limit_bytes: int = 64 * MiB
    """Largest cap a request may ask for."""
    exec_kill_grace_s: float = 2.0
    """On timeout or cancel: seconds between SIGTERM and SIGKILL to the process group."""
    exec_shell: str = "/bin/sh"
    """Shell for script-form commands."""

    file_chunk_bytes: int = 1 * MiB
    """Default chunk size of file reads."""
    file_read_allow: tuple[str, ...] = ("/",)
    """Path prefixes that may be read (checked on the resolved path)."""
    file_read_deny: tuple[str, ...] = ()
    """Path prefixes that may not be read, even inside an allowed one."""
    file_write_allow: tuple[str, ...] = ("/",)
    """Path prefixes that may be written."""
    file_write_deny: tuple[str, ...] = ()
    """Path prefixes that may not be written."""
    file_write_idle_timeout_s: float = 60.0
    """A write transfer idle this long is discarded (temp file removed)."""

    poweroff_command: tuple[str, ...] = ("/sbin/shutdown", "-P", "now", "{message}")
    """argv for poweroff; {message} is replaced by the request's message."""
    reboot_command: tuple[str, ...] = ("/sbin/shutdown", "-r", "now", "{message}")
    """argv for reboot."""
    halt_command: tuple[str, ...] = ("/sbin/shutdown", "-H", "now", "{message}")
    """argv for halt."""
    password_command: tuple[str, ...] = ("chpasswd",)
    """argv that reads 'user:password' lines on stdin."""
    password_expire_command: tuple[str, ...] = ("passwd", "--expire", "{user}")
    """argv that forces a password change at next login."""

    log_format: str = "text"
    """text or json."""
    log_level: str = "info"
    """debug, info, warning or error."""

    def __post_init__(self) -> None:
        if self.transport not in ("virtio", "unix-listen", "unix-connect"):
            raise ConfigError(f"transport must be virtio, unix-listen or unix-connect, not {self.transport!r}")
        if self.transport != "virtio" and not self.socket:
            raise ConfigError(f"transport={self.transport} needs socket")
        if not 1024 <= self.max_frame_bytes <= 16 * MiB:
            raise ConfigError("max_frame_bytes must be within 1024..16777216")
        if self.file_chunk_bytes < 1 or self.file_chunk_bytes > self.max_frame_bytes - FRAME_HEADROOM_BYTES:
            raise ConfigError("file_chunk_bytes must be positive and leave room for the frame's fields")
        if self.telemetry_interval_s < 0:
            raise ConfigError("telemetry_interval_s must be >= 0")
        if not 0 < self.ip_check_interval_s <= 5:
            raise ConfigError("ip_check_interval_s must be within (0, 5]")
        if self.max_concurrent_commands < 1 or self.max_inflight_requests < 1 or self.max_connections < 1:
            raise ConfigError("max_concurrent_commands, max_inflight_requests and max_connections must be >= 1")
        if self.max_request_bytes < self.max_frame_bytes:
            raise ConfigError("max_request_bytes must be at least max_frame_bytes")
        if self.max_buffered_bytes < self.max_frame_bytes + _FRAME_HEADER_BYTES:
            # Else no connection could ever complete a frame of the largest size.
            raise ConfigError("max_buffered_bytes must be at least max_frame_bytes (plus its 18-byte header)")
        if self.partial_frame_timeout_s <= 0 or self.write_stall_timeout_s <= 0:
            raise ConfigError("partial_frame_timeout_s and write_stall_timeout_s must be > 0")
        check_log_format(self.log_format)
        for name in ("file_read_allow", "file_read_deny", "file_write_allow", "file_write_deny"):
            for prefix in getattr(self, name):
                if not prefix.startswith("/"):
                    raise ConfigError(f"{name}: {prefix!r} is not an absolute path")


def config_from_mapping(data: dict[str, Any]) -> AgentConfig:
    """Build a config from (possibly table-grouped) keys.

    Raises:
        ConfigError: an unknown key or a value of the wrong type.
    """
    return _loader.from_mapping(AgentConfig, data, group_tables=True)


def build_arg_parser() -> argparse.ArgumentParser:
    """The agent's command line: --config, --version, and one flag per field."""
    from limiquantix.protocol import __version__

    parser = argparse.ArgumentParser(
        prog="limiquantix-agent",
        description="LimiQuantix guest agent: serves the host over virtio-serial.",
        formatter_class=_loader.FieldHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"limiquantix-agent {__version__}")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as TOML and exit",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML configuration file (default {DEFAULT_CONFIG_PATH} when it exists)",
    )
    _loader.add_field_flags(parser, AgentConfig)
    return parser


def dump_toml(config: AgentConfig) -> str:
    """The configuration as a commented TOML file (``--print-config``)."""
    return _loader.dump_toml(config, "limiquantix-agent configuration (every key is also a --flag).")


def load_config(argv: Sequence[str] | None = None) -> AgentConfig:
    """Parse flags and the TOML file into an AgentConfig.

    Raises:
        ConfigError: unreadable or invalid file, or an invalid flag value.
    """
    return parse_command_line(argv)[0]


def parse_command_line(argv: Sequence[str] | None = None) -> tuple[AgentConfig, bool]:
    """The configuration, and whether ``--print-config`` was given.

    Raises:
        ConfigError: unreadable or invalid file, or an invalid flag value.
    """
    config, others = _loader.load(AgentConfig, build_arg_parser(), argv, DEFAULT_CONFIG_PATH, group_tables=True)
    return config, bool(others["print_config"])
