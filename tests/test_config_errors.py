"""Configuration (TOML + flags) and the error hierarchy's mappings."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from limiquantix.agent._config import AgentConfig, ConfigError, build_arg_parser, config_from_mapping, load_config
from limiquantix.protocol import errors
from limiquantix.protocol._gen import agent_pb2 as pb


def test_defaults_match_the_issue() -> None:
    c = AgentConfig()
    assert c.device == "/dev/virtio-ports/org.limiquantix.agent.0"
    assert c.telemetry_interval_s == 5.0
    assert c.max_concurrent_commands == 16
    assert c.exec_default_timeout_s == 60.0
    assert c.exec_output_limit_bytes == 1024 * 1024
    assert c.file_chunk_bytes == 1024 * 1024
    assert c.max_frame_bytes == 16 * 1024 * 1024
    assert c.interface_exclude == ("lo", "docker*", "veth*", "virbr*", "cni*", "flannel*")


def test_toml_tables_and_flags_override(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'transport = "unix-listen"\nsocket = "/run/a.sock"\n'
        "[telemetry]\ntelemetry_interval_s = 10\n"
        '[policy]\ndisable = ["execute", "file_write"]\nfile_read_deny = ["/root"]\n'
    )
    c = load_config(["--config", str(cfg), "--telemetry-interval-s", "2.5"])
    assert c.transport == "unix-listen" and c.socket == "/run/a.sock"
    assert c.telemetry_interval_s == 2.5  # the flag wins
    assert c.disable == ("execute", "file_write")
    assert c.file_read_deny == ("/root",)
    # Lists as flags are comma-separated.
    c = load_config(["--config", str(cfg), "--disable", "ping, info"])
    assert c.disable == ("ping", "info")


def test_every_field_is_a_flag() -> None:
    flags = {a.dest for a in build_arg_parser()._actions}
    import dataclasses

    assert {f.name for f in dataclasses.fields(AgentConfig)} <= flags


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": 1}, "unknown configuration keys: bogus"),
        ({"transport": "carrier-pigeon"}, "transport must be"),
        ({"transport": "unix-listen"}, "needs socket"),
        ({"telemetry_interval_s": -1}, "telemetry_interval_s"),
        ({"ip_check_interval_s": 10}, "ip_check_interval_s"),
        ({"max_frame_bytes": 1 << 30}, "max_frame_bytes"),
        ({"file_read_deny": ["relative/path"]}, "not an absolute path"),
        ({"max_concurrent_commands": "many"}, "max_concurrent_commands"),
        ({"disable": "ping"}, None),  # a string is split like a flag
        ({"log_format": "xml"}, "log_format"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_buffered_bytes": 1024 * 1024}, "max_buffered_bytes must be at least max_frame_bytes"),
        ({"partial_frame_timeout_s": 0}, "partial_frame_timeout_s"),
        ({"write_stall_timeout_s": -1}, "write_stall_timeout_s"),
    ],
)
def test_invalid_values_are_refused_clearly(data: dict, message: str | None) -> None:
    if message is None:
        assert config_from_mapping(data).disable == ("ping",)
        return
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(data)


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(["--config", str(bad)])
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(["--config", str(tmp_path / "missing.toml")])


def test_every_error_round_trips_through_its_proto_and_connect_code() -> None:
    classes = [
        errors.InvalidArgument, errors.NotFound, errors.AlreadyExists, errors.PermissionDenied,
        errors.Unauthenticated, errors.ResourceExhausted, errors.FailedPrecondition,
        errors.DeadlineExceeded, errors.Unavailable, errors.Unimplemented, errors.Cancelled, errors.Internal,
    ]  # fmt: skip
    for cls in classes:
        exc = cls("boom", reason="why")
        back = errors.from_proto(exc.to_proto())
        assert type(back) is cls and back.message == "boom" and back.reason == "why"
        assert type(errors.from_connect_code(cls.connect_code, "m")) is cls
    # Connect's HTTP statuses for the codes the issue lists.
    assert {c.connect_code: c.http_status for c in classes} == {
        "invalid_argument": 400, "not_found": 404, "already_exists": 409, "permission_denied": 403,
        "unauthenticated": 401, "resource_exhausted": 429, "failed_precondition": 400,
        "deadline_exceeded": 504, "unavailable": 503, "unimplemented": 501, "canceled": 499, "internal": 500,
    }  # fmt: skip
    assert type(errors.from_proto(pb.Error(code=999))) is errors.Internal
    assert type(errors.from_connect_code("no_such_code", "m")) is errors.Internal


def test_os_errors_map_to_distinct_reasons() -> None:
    def mapped(code: int) -> errors.AgentError:
        return errors.from_os_error(OSError(code, "x"), path="/p")

    assert isinstance(mapped(errno.ENOENT), errors.NotFound)
    assert isinstance(mapped(errno.EACCES), errors.PermissionDenied)
    assert mapped(errno.EISDIR).reason == "is_a_directory"
    assert mapped(errno.ENOTDIR).reason == "not_a_directory"
    assert isinstance(mapped(errno.EEXIST), errors.AlreadyExists)
    assert isinstance(mapped(errno.ENOSPC), errors.ResourceExhausted)
    assert isinstance(mapped(errno.EIO), errors.Internal)
    assert mapped(errno.ENOENT).message == "/p: x"


def test_print_config_round_trips(tmp_path: Path) -> None:
    """--print-config writes a TOML file that reads back as the same configuration (the agent's
    main in this process: tests/inprocess.py; conftest.spawn_agent's tests run it as a process)."""
    from inprocess import run_main

    from limiquantix.agent.__main__ import main

    out = run_main(main, "--print-config", "--disable", "execute", "--telemetry-interval-s", "7")
    assert out.returncode == 0, out.stderr
    cfg = tmp_path / "agent.toml"
    cfg.write_text(out.stdout)
    again = load_config(["--config", str(cfg)])
    assert again == AgentConfig(disable=("execute",), telemetry_interval_s=7.0)


def test_help_shows_each_fields_docstring_and_default() -> None:
    """Field docs are parsed from the source only when help is shown (not at every start)."""
    text = build_arg_parser().format_help()
    assert "Largest frame accepted or sent. (default: 16777216)" in " ".join(text.split())
    assert "lo,docker*" in text and "Comma-separated." in text  # a tuple field's default
    assert "\0" not in text
