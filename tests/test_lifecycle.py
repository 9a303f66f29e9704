"""Shutdown and password reset, against real agents running harmless stand-ins.

Every power and password command here is a small script written into the
test's temp dir (:class:`StandIns`): it appends what it was given (argv, stdin,
pid, time) as one JSON line to a log and optionally fails, echoes its stdin to
stderr, waits for a gate file, or hangs. Nothing touches this machine's
accounts or power.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import next_event, wait_until

from limiquantix.agent import Agent
from limiquantix.agent.handlers import _lifecycle as lifecycle
from limiquantix.protocol import AgentClient, errors
from limiquantix.protocol._gen import agent_pb2 as pb

#: Upper bound on anything a test waits for; a healthy run needs a fraction.
WAIT_S = 10.0
SECRET = "s3cret"

_STANDIN = """\
#!{python} -S
import json, os, subprocess, sys, time
data = sys.stdin.read()
record = {{"name": {name!r}, "argv": sys.argv[1:], "stdin": data, "pid": os.getpid(), "time": time.time()}}
if {spawn_child!r}:
    record["child"] = subprocess.Popen(["sleep", "60"]).pid
with open({log!r}, "a") as f:
    f.write(json.dumps(record) + "\\n")
if {gate!r}:
    deadline = time.time() + 20
    while not os.path.exists({gate!r}) and time.time() < deadline:
        time.sleep(0.01)
if {hang!r}:
    time.sleep(60)
sys.stderr.write({stderr!r})
if {echo_stdin!r}:
    sys.stderr.write("rejected input line: " + data)
sys.exit({exit_code!r})
"""


@dataclass
class StandIns:
    """Writes stand-in commands and reads what they recorded."""

    dir: Path

    @property
    def log(self) -> Path:
        return self.dir / "calls.jsonl"

    def make(
        self,
        name: str,
        *,
        exit_code: int = 0,
        stderr: str = "",
        echo_stdin: bool = False,
        gate: bool = False,
        hang: bool = False,
        spawn_child: bool = False,
    ) -> str:
        """Write an executable stand-in called ``name``; returns its path.

        Args:
            exit_code: its exit status.
            stderr: text it writes to stderr before exiting.
            echo_stdin: also write its whole stdin to stderr (a leaky tool).
            gate: after recording, wait until :meth:`release` (bounded).
            hang: after recording, sleep 60 s.
            spawn_child: start a ``sleep 60`` in its process group first.
        """
        path = self.dir / name
        path.write_text(
            _STANDIN.format(
                python=sys.executable,
                name=name,
                log=str(self.log),
                gate=str(self.gate(name)) if gate else "",
                hang=hang,
                stderr=stderr,
                echo_stdin=echo_stdin,
                exit_code=exit_code,
                spawn_child=spawn_child,
            )
        )
        path.chmod(0o755)
        return str(path)

    def gate(self, name: str) -> Path:
        return self.dir / f"{name}.go"

    def release(self, name: str) -> None:
        """Let a gated stand-in finish."""
        self.gate(name).touch()

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.endswith("}")]

    async def wait_records(self, n: int) -> list[dict[str, Any]]:
        """Wait (bounded) until at least ``n`` calls were recorded."""
        with trio.fail_after(WAIT_S):
            while len(recs := self.records()) < n:
                await trio.sleep(0.01)
        return recs


@pytest.fixture
def standins(tmp_path: Path) -> StandIns:
    d = tmp_path / "standins"
    d.mkdir()
    return StandIns(d)


async def shutdown(client: AgentClient, mode: int, *, delay: int = 0, message: str = "") -> pb.ShutdownResponse:
    req = pb.ShutdownRequest(mode=mode, delay_seconds=delay, message=message)  # type: ignore[arg-type]
    with trio.fail_after(WAIT_S):
        return (await client.request(shutdown=req)).shutdown_response


async def reset(client: AgentClient, username: str, password: str, *, expire: bool = False) -> pb.ResetPasswordResponse:
    req = pb.ResetPasswordRequest(username=username, password=password, expire=expire)
    with trio.fail_after(WAIT_S):
        return (await client.request(reset_password=req)).reset_password_response


def seconds(ts: Any) -> float:
    return ts.ToNanoseconds() / 1e9


def power_commands(standins: StandIns, **kinds: Any) -> dict[str, tuple[str, ...]]:
    """Config for the three power commands, each a stand-in named after its mode."""
    return {
        f"{mode}_command": (standins.make(mode, **kinds), f"--{mode}", "now", "{message}")
        for mode in ("poweroff", "reboot", "halt")
    }


# -- shutdown --------------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize(
    ("mode", "name"),
    [(pb.SHUTDOWN_MODE_POWEROFF, "poweroff"), (pb.SHUTDOWN_MODE_REBOOT, "reboot"), (pb.SHUTDOWN_MODE_HALT, "halt")],
)
async def test_each_mode_runs_its_command_with_the_message(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns, mode: int, name: str
) -> None:
    agent = await start_agent(**power_commands(standins))
    async with connect(agent) as client:
        before = time.time()
        resp = await shutdown(client, mode, message="maintenance at noon")
        assert resp.accepted
        assert before - 0.05 <= seconds(resp.scheduled_at) <= time.time() + 0.05
        event = (await next_event(client, "shutdown_started")).shutdown_started
        assert event.mode == mode
        assert event.message == "maintenance at noon"
        assert event.scheduled_at == resp.scheduled_at
        [call] = await standins.wait_records(1)
    assert call["name"] == name
    assert call["argv"] == [f"--{name}", "now", "maintenance at noon"]
    assert call["stdin"] == ""


@pytest.mark.trio
async def test_empty_message_drops_the_placeholder_argument(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns
) -> None:
    agent = await start_agent(reboot_command=(standins.make("reboot"), "-r", "now", "{message}", "--wall={message}"))
    async with connect(agent) as client:
        await shutdown(client, pb.SHUTDOWN_MODE_REBOOT)
        [call] = await standins.wait_records(1)
    # The lone "{message}" is dropped; inside a longer argument it becomes "".
    assert call["argv"] == ["-r", "now", "--wall="]


def test_power_argv() -> None:
    template = ("/sbin/shutdown", "-P", "now", "{message}")
    assert lifecycle.power_argv(template, "bye now") == ("/sbin/shutdown", "-P", "now", "bye now")
    assert lifecycle.power_argv(template, "") == ("/sbin/shutdown", "-P", "now")
    assert lifecycle.power_argv(("x", "m={message}!"), "") == ("x", "m=!")


@pytest.mark.trio
async def test_answer_and_event_come_before_the_delayed_command(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns
) -> None:
    """delay_seconds=1: answered at once, command run no earlier than scheduled_at."""
    agent = await start_agent(**power_commands(standins))
    async with connect(agent) as client:
        asked = time.time()
        resp = await shutdown(client, pb.SHUTDOWN_MODE_POWEROFF, delay=1, message="bye")
        event = (await next_event(client, "shutdown_started")).shutdown_started
        answered = time.time()
        # Well inside the delay, so the absence of a record below means something.
        assert answered - asked < 0.8
        assert standins.records() == []
        scheduled = seconds(resp.scheduled_at)
        assert asked + 1 - 0.05 <= scheduled <= answered + 1 + 0.05
        assert event.scheduled_at == resp.scheduled_at
        assert lifecycle.pending_shutdown(agent) is not None
        [call] = await standins.wait_records(1)
    assert call["name"] == "poweroff"
    # Wall and monotonic clocks may disagree by a few ms.
    assert call["time"] >= scheduled - 0.05
    await wait_until(lambda: lifecycle.pending_shutdown(agent) is None)


@pytest.mark.trio
async def test_scheduled_shutdown_outlives_the_session(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns
) -> None:
    agent = await start_agent(**power_commands(standins))
    async with connect(agent) as client:
        await shutdown(client, pb.SHUTDOWN_MODE_HALT, delay=1)
    await wait_until(lambda: not agent.sessions)  # the session has ended
    assert standins.records() == []
    [call] = await standins.wait_records(1)
    assert call["name"] == "halt"


@pytest.mark.trio
async def test_shutdown_started_reaches_every_connected_host(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns
) -> None:
    agent = await start_agent(**power_commands(standins))
    async with connect(agent) as watcher, connect(agent) as client:
        await shutdown(client, pb.SHUTDOWN_MODE_REBOOT, message="m")
        for c in (client, watcher):
            assert (await next_event(c, "shutdown_started")).shutdown_started.mode == pb.SHUTDOWN_MODE_REBOOT
        await standins.wait_records(1)


@pytest.mark.trio
async def test_later_request_replaces_a_pending_one(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns
) -> None:
    """Like shutdown(8): the last word wins while the first still waits out its delay."""
    agent = await start_agent(**power_commands(standins))
    async with connect(agent) as client:
        first = await shutdown(client, pb.SHUTDOWN_MODE_REBOOT, delay=3600, message="first")
        assert (await next_event(client, "shutdown_started")).shutdown_started.message == "first"
        second = await shutdown(client, pb.SHUTDOWN_MODE_POWEROFF, message="second")
        assert second.accepted and seconds(second.scheduled_at) < seconds(first.scheduled_at)
        event = (await next_event(client, "shutdown_started")).shutdown_started
        assert (event.mode, event.message) == (pb.SHUTDOWN_MODE_POWEROFF, "second")
        [call] = await standins.wait_records(1)
        assert (call["name"], call["argv"][-1]) == ("poweroff", "second")
        await wait_until(lambda: lifecycle.pending_shutdown(agent) is None)
    # Nothing is left sleeping towards the reboot.
    assert agent.background is not None
    assert not [t for t in agent.background.child_tasks if t.name.startswith("shutdown:")]


@pytest.mark.trio
async def test_request_while_the_command_runs_is_refused(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns
) -> None:
    """The answer does not wait for the command, and a running command is not replaced."""
    agent = await start_agent(poweroff_command=(standins.make("poweroff", gate=True),))
    try:
        async with connect(agent) as client:
            # The stand-in blocks on its gate: the answer cannot have waited for it.
            await shutdown(client, pb.SHUTDOWN_MODE_POWEROFF)
            await standins.wait_records(1)  # it has started
            with pytest.raises(errors.FailedPrecondition) as info:
                await shutdown(client, pb.SHUTDOWN_MODE_POWEROFF)
            assert info.value.reason == "shutdown_in_progress"
            standins.release("poweroff")
            await wait_until(lambda: lifecycle.pending_shutdown(agent) is None)
            # Once it has ended, a new request is accepted again.
            assert (await shutdown(client, pb.SHUTDOWN_MODE_POWEROFF)).accepted
            await standins.wait_records(2)
    finally:
        standins.release("poweroff")


@pytest.mark.trio
async def test_failing_power_command_is_logged(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="limiquantix")
    agent = await start_agent(**power_commands(standins, exit_code=3, stderr="no power today\n"))
    async with connect(agent) as client:
        assert (await shutdown(client, pb.SHUTDOWN_MODE_REBOOT)).accepted
        await standins.wait_records(1)
        await wait_until(lambda: lifecycle.pending_shutdown(agent) is None)
        assert "reboot command failed (exit status 3): no power today" in caplog.text
        assert (await client.ping(b"still here")).payload == b"still here"


@pytest.mark.trio
async def test_missing_power_command_is_logged(
    start_agent: Callable[..., Any], connect: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="limiquantix")
    agent = await start_agent(halt_command=(str(tmp_path / "no-such-halt"),))
    async with connect(agent) as client:
        assert (await shutdown(client, pb.SHUTDOWN_MODE_HALT)).accepted
        await wait_until(lambda: "cannot run the halt command" in caplog.text)
        assert lifecycle.pending_shutdown(agent) is None


@pytest.mark.trio
@pytest.mark.parametrize(
    ("request_fields", "reason"),
    [
        ({"mode": 7}, "invalid_mode"),
        ({"delay_seconds": lifecycle.MAX_SHUTDOWN_DELAY_S + 1}, "invalid_delay"),
        ({"message": "-c"}, "invalid_message"),
        ({"message": "clear\x1b[2J"}, "invalid_message"),
        ({"message": "x" * (lifecycle.MAX_SHUTDOWN_MESSAGE_CHARS + 1)}, "invalid_message"),
    ],
)
async def test_invalid_shutdown_requests(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns, request_fields: dict[str, Any], reason: str
) -> None:
    agent = await start_agent(**power_commands(standins))
    async with connect(agent) as client:
        with pytest.raises(errors.InvalidArgument) as info, trio.fail_after(WAIT_S):
            await client.request(shutdown=pb.ShutdownRequest(**request_fields))
        assert info.value.reason == reason
        # A multi-line message is fine (it is a wall message).
        assert (await shutdown(client, pb.SHUTDOWN_MODE_HALT, message="line 1\nline 2")).accepted
    [call] = await standins.wait_records(1)
    assert call["argv"][-1] == "line 1\nline 2"


@pytest.mark.trio
async def test_unconfigured_power_command(start_agent: Callable[..., Any], connect: Any) -> None:
    agent = await start_agent(poweroff_command=())
    async with connect(agent) as client:
        with pytest.raises(errors.FailedPrecondition) as info:
            await shutdown(client, pb.SHUTDOWN_MODE_POWEROFF)
    assert info.value.reason == "not_configured"


# -- password reset --------------------------------------------------------------


def assert_no_secret(text: str) -> None:
    assert SECRET not in text


@pytest.mark.trio
async def test_password_goes_to_chpasswd_on_stdin_only(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    agent = await start_agent(password_command=(standins.make("chpasswd"), "--crypt-method", "SHA512"))
    async with connect(agent) as client:
        resp = await reset(client, "alice", SECRET)
    assert not resp.expired
    [call] = standins.records()
    assert call["name"] == "chpasswd"
    assert call["stdin"] == f"alice:{SECRET}\n"
    assert call["argv"] == ["--crypt-method", "SHA512"]
    assert "password of alice reset" in caplog.text
    assert_no_secret(caplog.text)


@pytest.mark.trio
async def test_expire_runs_the_expire_command_after_chpasswd(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    agent = await start_agent(
        password_command=(standins.make("chpasswd"),),
        password_expire_command=(standins.make("passwd"), "--expire", "{user}"),
    )
    async with connect(agent) as client:
        resp = await reset(client, "bob.smith-2", SECRET, expire=True)
    assert resp.expired
    chpasswd, passwd = standins.records()
    assert chpasswd["name"] == "chpasswd" and chpasswd["stdin"] == f"bob.smith-2:{SECRET}\n"
    assert passwd["name"] == "passwd"
    assert passwd["argv"] == ["--expire", "bob.smith-2"]
    assert passwd["stdin"] == ""
    assert_no_secret(caplog.text)


@pytest.mark.trio
async def test_failing_chpasswd_does_not_leak_the_password(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns, caplog: pytest.LogCaptureFixture
) -> None:
    """A tool that echoes its input in its error: the message quotes it, redacted."""
    caplog.set_level(logging.DEBUG)
    cmd = standins.make("chpasswd", exit_code=1, stderr="chpasswd: cannot update password\n", echo_stdin=True)
    agent = await start_agent(password_command=(cmd,))
    async with connect(agent) as client:
        with pytest.raises(errors.FailedPrecondition) as info:
            await reset(client, "alice", SECRET)
    message = info.value.message
    assert info.value.reason == "command_failed"
    assert "exit status 1" in message
    assert "cannot update password" in message
    assert f"alice:{lifecycle.REDACTED}" in message
    assert_no_secret(message)
    assert_no_secret(caplog.text)
    assert "password reset for alice failed" in caplog.text


@pytest.mark.trio
async def test_failing_expire_says_the_password_was_changed(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns
) -> None:
    agent = await start_agent(
        password_command=(standins.make("chpasswd"),),
        password_expire_command=(standins.make("passwd", exit_code=4, stderr="passwd: no such user\n"), "{user}"),
    )
    async with connect(agent) as client:
        with pytest.raises(errors.FailedPrecondition) as info:
            await reset(client, "alice", SECRET, expire=True)
    assert "password of alice was changed, but expiring it failed" in info.value.message
    assert "no such user" in info.value.message
    assert [c["name"] for c in standins.records()] == ["chpasswd", "passwd"]


@pytest.mark.trio
async def test_hung_password_command_is_killed_with_its_group(
    start_agent: Callable[..., Any],
    connect: Any,
    standins: StandIns,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lifecycle, "PASSWORD_COMMAND_TIMEOUT_S", 0.5)
    agent = await start_agent(password_command=(standins.make("chpasswd", hang=True, spawn_child=True),))
    async with connect(agent) as client:
        with pytest.raises(errors.DeadlineExceeded) as info:
            await reset(client, "alice", SECRET)
        assert info.value.reason == "command_timeout"
        assert_no_secret(info.value.message)
    [call] = standins.records()
    for pid in (call["pid"], call["child"]):
        await wait_until(lambda pid=pid: not _alive(pid))


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.trio
async def test_missing_password_command(start_agent: Callable[..., Any], connect: Any, tmp_path: Path) -> None:
    agent = await start_agent(password_command=(str(tmp_path / "no-such-chpasswd"),))
    async with connect(agent) as client:
        with pytest.raises(errors.FailedPrecondition) as info:
            await reset(client, "alice", SECRET)
    assert info.value.reason == "command_failed_to_start"
    assert "No such file or directory" in info.value.message


@pytest.mark.trio
async def test_expire_without_expire_command_changes_nothing(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns
) -> None:
    agent = await start_agent(password_command=(standins.make("chpasswd"),), password_expire_command=())
    async with connect(agent) as client:
        with pytest.raises(errors.FailedPrecondition) as info:
            await reset(client, "alice", SECRET, expire=True)
    assert info.value.reason == "not_configured"
    assert standins.records() == []


@pytest.mark.trio
@pytest.mark.parametrize(
    "username",
    [
        "",
        "al:ice",
        "al\nice",
        "-alice",
        "--expire",
        "ali ce",
        "../etc",
        "/root",
        "alice$x",
        "12345",
        "x" * 256,
        "élise",
    ],
)
async def test_invalid_usernames_are_rejected(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns, username: str
) -> None:
    agent = await start_agent(password_command=(standins.make("chpasswd"),))
    async with connect(agent) as client:
        with pytest.raises(errors.InvalidArgument) as info:
            await reset(client, username, SECRET)
    assert info.value.reason == "invalid_username"
    assert standins.records() == []


@pytest.mark.trio
@pytest.mark.parametrize("password", ["", "s3cret\nroot:x", "s3cret\r", "s3\x00cret", "x" * 1025])
async def test_invalid_passwords_are_rejected(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns, password: str
) -> None:
    agent = await start_agent(password_command=(standins.make("chpasswd"),))
    async with connect(agent) as client:
        with pytest.raises(errors.InvalidArgument) as info:
            await reset(client, "alice", password)
    assert info.value.reason == "invalid_password"
    assert password not in info.value.message or not password
    assert standins.records() == []


@pytest.mark.trio
async def test_valid_usernames_and_a_colon_in_the_password(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns
) -> None:
    """chpasswd splits at the first ':' only, so a password may contain one."""
    agent = await start_agent(password_command=(standins.make("chpasswd"),))
    async with connect(agent) as client:
        for user in ("alice", "_svc", "WS01$", "a.b-c_d", "1alice"):
            await reset(client, user, "pa:ss word")
    assert [c["stdin"] for c in standins.records()] == [
        f"{u}:pa:ss word\n" for u in ("alice", "_svc", "WS01$", "a.b-c_d", "1alice")
    ]


@pytest.mark.trio
async def test_disabled_lifecycle_requests_are_unimplemented(
    start_agent: Callable[..., Any], connect: Any, standins: StandIns
) -> None:
    agent: Agent = await start_agent(
        disable=("reset_password", "shutdown"),
        password_command=(standins.make("chpasswd"),),
        **power_commands(standins),
    )
    async with connect(agent) as client:
        assert set(client.identity.disabled_capabilities) >= {"reset_password", "shutdown"}
        with pytest.raises(errors.Unimplemented) as info:
            await reset(client, "alice", SECRET)
        assert info.value.reason == "disabled"
        with pytest.raises(errors.Unimplemented):
            await shutdown(client, pb.SHUTDOWN_MODE_POWEROFF)
    assert standins.records() == []


def test_redact() -> None:
    secret = b"s3cret"
    assert lifecycle.redact(b"x s3cret y s3cret", secret) == b"x *** y ***"
    assert lifecycle.redact(b"nothing here", secret) == b"nothing here"
    assert lifecycle.redact(b"anything", b"") == b"anything"
    # Output cut short in the middle of the secret: the partial tail goes too.
    assert lifecycle.redact(b"line: alice:s3c", secret, truncated=True) == b"line: alice:***"
    assert lifecycle.redact(b"line: alice:s3c", secret) == b"line: alice:s3c"
    assert lifecycle.redact(b"ends with s", secret, truncated=True) == b"ends with ***"
