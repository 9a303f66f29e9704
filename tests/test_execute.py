"""execute: real commands through a real agent on a real Unix socket.

Every test runs real processes; the only waiting loops are for a real process
to die (:func:`wait_gone`), always under ``fail_after``. "Still running" is
shown with events (a streamed first chunk), never with sleeps.
"""

from __future__ import annotations

import os
import pwd
import signal
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest
import trio
from conftest import gone, wait_gone

from limiquantix.agent.handlers._execute import PIPE_IDLE_AFTER_EXIT_S, resolve_run_as, running_commands
from limiquantix.protocol import FRAME_HEADROOM_BYTES, AgentClient, errors
from limiquantix.protocol._gen import agent_pb2 as pb

MiB = 1024 * 1024
#: Prints "<group leader pid> <background sleep pid>" and waits for the sleep.
GROUP_SCRIPT = "sleep 1000 & echo $$ $!; wait"


async def run(client: AgentClient, **fields: object) -> pb.ExecuteResponse:
    """Run one command (non-streaming) and return its result."""
    with trio.fail_after(20):
        return (await client.request(execute=pb.ExecuteRequest(**fields))).execute_response  # type: ignore[arg-type]


def pids_of(data: bytes) -> tuple[int, int]:
    leader, background = data.split()[:2]
    return int(leader), int(background)


async def first_output(it: AsyncIterator[pb.AgentMessage]) -> pb.AgentMessage:
    """The first ExecuteOutput of a stream: proof that the command is running."""
    with trio.fail_after(10):
        msg = await anext(it)
    assert msg.WhichOneof("payload") == "execute_output", msg
    return msg


def stream_of(client: AgentClient, command: str, **fields: object) -> AsyncIterator[pb.AgentMessage]:
    return client.stream(execute=pb.ExecuteRequest(command=command, stream=True, **fields))  # type: ignore[arg-type]


# -- forms, input, environment ---------------------------------------------------


@pytest.mark.trio
async def test_argv_form(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        r = await run(client, argv=["printf", "%s|", "a b", "$HOME", ""])
    assert r.exit_reason == pb.EXIT_REASON_EXITED
    assert r.exit_code == 0
    assert r.stdout == b"a b|$HOME||"  # no shell: no splitting, no expansion
    assert r.stdout_bytes == len(r.stdout) and not r.stdout_truncated
    assert r.pid > 0 and not r.timed_out


@pytest.mark.trio
async def test_shell_form_and_shell_override(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        r = await run(client, command="echo $((1 + 2)); echo oops >&2")
        bash = await run(client, command='echo "${BASH_VERSION:+bash}"', shell="/bin/bash")
    assert (r.exit_reason, r.stdout, r.stderr) == (pb.EXIT_REASON_EXITED, b"3\n", b"oops\n")
    assert r.stderr_bytes == 5
    assert bash.stdout == b"bash\n"


@pytest.mark.trio
async def test_stdin_is_written_and_closed(start_agent, connect) -> None:
    agent = await start_agent()
    big = os.urandom(4 * MiB)
    async with connect(agent) as client:
        small = await run(client, argv=["cat"], stdin=b"hello\x00world")
        # cat writes back while we still write: without concurrent feeding and
        # draining both sides would block on full pipes.
        echoed = await run(client, argv=["cat"], stdin=big, stdout_limit_bytes=8 * MiB)
        # A child that never reads its stdin must not hang us either.
        ignored = await run(client, argv=["true"], stdin=big)
        eof = await run(client, argv=["wc", "-c"])
    assert small.stdout == b"hello\x00world"
    assert echoed.stdout == big and echoed.exit_code == 0
    assert (ignored.exit_reason, ignored.exit_code) == (pb.EXIT_REASON_EXITED, 0)
    assert eof.stdout.strip() == b"0"  # empty stdin is closed at once: EOF


@pytest.mark.trio
async def test_env_merge_and_replace(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        merged = await run(client, command='echo "$LQX_TEST|${PATH:+has-path}"', env={"LQX_TEST": "yes"})
        replaced = await run(client, argv=["env"], env={"LQX_TEST": "only"}, env_mode=pb.ENV_MODE_REPLACE)
        empty = await run(client, argv=["env"], env_mode=pb.ENV_MODE_REPLACE)
    assert merged.stdout == b"yes|has-path\n"
    assert replaced.stdout == b"LQX_TEST=only\n"
    assert empty.stdout == b""


@pytest.mark.trio
async def test_working_directory(start_agent, connect, short_tmp) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        r = await run(client, argv=["pwd"], working_directory=str(short_tmp))
    assert r.stdout.decode().strip() == str(short_tmp)


@pytest.mark.trio
async def test_failed_to_start_is_a_result_with_the_os_error(start_agent, connect, short_tmp) -> None:
    agent = await start_agent()
    missing_dir = str(short_tmp / "no-such-dir")
    async with connect(agent) as client:
        no_binary = await run(client, argv=["/nonexistent/lqx-program", "x"])
        no_cwd = await run(client, argv=["pwd"], working_directory=missing_dir)
        not_exec = await run(client, argv=[str(short_tmp)])
    assert no_binary.exit_reason == pb.EXIT_REASON_FAILED_TO_START
    assert "FileNotFoundError" in no_binary.error and "/nonexistent/lqx-program" in no_binary.error
    assert no_cwd.exit_reason == pb.EXIT_REASON_FAILED_TO_START
    assert "FileNotFoundError" in no_cwd.error and missing_dir in no_cwd.error
    assert "working_directory" in no_cwd.error
    assert not_exec.exit_reason == pb.EXIT_REASON_FAILED_TO_START
    assert "PermissionError" in not_exec.error
    assert running_commands(agent) == 0


# -- how it ends -------------------------------------------------------------------


@pytest.mark.trio
async def test_nonzero_exit_code(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        r = await run(client, command="echo partial; exit 3")
    assert (r.exit_reason, r.exit_code, r.signal, r.stdout) == (pb.EXIT_REASON_EXITED, 3, 0, b"partial\n")
    assert r.HasField("exit_code")


@pytest.mark.trio
async def test_killed_by_signal(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        r = await run(client, command="kill -KILL $$")
    assert (r.exit_reason, r.signal) == (pb.EXIT_REASON_SIGNALED, signal.SIGKILL)


@pytest.mark.trio
async def test_timeout_kills_the_whole_group(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        start = trio.current_time()
        r = await run(client, command=GROUP_SCRIPT.replace("1000", "30"), timeout_seconds=1)
        elapsed = trio.current_time() - start
    assert r.exit_reason == pb.EXIT_REASON_TIMED_OUT and r.timed_out and not r.HasField("exit_code")
    assert r.signal == signal.SIGTERM
    assert 1.0 <= elapsed < 2.5  # the timeout, not the sleep; sh dies on SIGTERM at once
    assert 1000 <= r.duration_ms < 2500
    await wait_gone(*pids_of(r.stdout))


@pytest.mark.trio
async def test_sigterm_trapped_gets_sigkill_after_grace(start_agent, connect) -> None:
    agent = await start_agent(exec_default_timeout_s=0.3, exec_kill_grace_s=0.3)
    async with connect(agent) as client:
        r = await run(client, command="trap '' TERM; " + GROUP_SCRIPT)
    assert r.exit_reason == pb.EXIT_REASON_TIMED_OUT
    assert r.signal == signal.SIGKILL
    assert r.duration_ms >= 550  # timeout + grace, with a little slack for clocks
    await wait_gone(*pids_of(r.stdout))


# -- output ------------------------------------------------------------------------


@pytest.mark.trio
async def test_100_mib_of_output_is_capped_and_counted(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        r = await run(client, command="head -c 100M /dev/zero; echo done >&2")
    assert (r.exit_reason, r.exit_code) == (pb.EXIT_REASON_EXITED, 0)
    assert r.stdout_truncated and len(r.stdout) == agent.config.exec_output_limit_bytes
    assert r.stdout_bytes == 100 * MiB
    assert r.stderr == b"done\n" and not r.stderr_truncated


@pytest.mark.trio
async def test_caps_follow_request_and_config_ceiling(start_agent, connect) -> None:
    agent = await start_agent(exec_max_output_limit_bytes=3000)
    async with connect(agent) as client:
        small = await run(client, command="head -c 5000 /dev/zero; head -c 5000 /dev/zero >&2", stdout_limit_bytes=10)
        ceiling = await run(client, command="head -c 5000 /dev/zero", stdout_limit_bytes=10 * MiB)
    assert (len(small.stdout), small.stdout_bytes, small.stdout_truncated) == (10, 5000, True)
    assert (len(small.stderr), small.stderr_bytes, small.stderr_truncated) == (3000, 5000, True)
    assert len(ceiling.stdout) == 3000 and ceiling.stdout_truncated


@pytest.mark.trio
async def test_output_is_clamped_to_fit_one_frame(start_agent, connect) -> None:
    frame = 64 * 1024
    agent = await start_agent(max_frame_bytes=frame, file_chunk_bytes=1024)
    async with connect(agent) as client:
        r = await run(client, command="head -c 1M /dev/zero; head -c 1M /dev/zero >&2")
    assert r.exit_reason == pb.EXIT_REASON_EXITED  # a result, not frame_too_large
    assert r.stdout_truncated and r.stderr_truncated
    assert len(r.stdout) + len(r.stderr) <= frame - FRAME_HEADROOM_BYTES
    assert r.stdout_bytes == r.stderr_bytes == MiB


@pytest.mark.trio
async def test_background_grandchild_neither_hangs_nor_survives(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        with trio.fail_after(5):  # the sleep holds stdout and stderr open
            r = await run(client, command="sleep 1000 & echo $$ $!")
    assert (r.exit_reason, r.exit_code) == (pb.EXIT_REASON_EXITED, 0)
    leader, background = pids_of(r.stdout)
    assert leader == r.pid
    await wait_gone(background)


@pytest.mark.trio
async def test_process_escaping_the_group_cannot_hold_the_call(start_agent, connect) -> None:
    agent = await start_agent()
    # The escapee prints its pid only once it has left the group (setsid), then
    # keeps our stderr pipe open; the leader exits as soon as it has the pid.
    script = "(setsid sh -c 'echo $$; exec sleep 1000 >/dev/null' &) | head -n 1"
    async with connect(agent) as client:
        start = trio.current_time()
        r = await run(client, command=script)
        elapsed = trio.current_time() - start
    escaped = int(r.stdout)
    try:
        assert (r.exit_reason, r.exit_code) == (pb.EXIT_REASON_EXITED, 0)
        assert PIPE_IDLE_AFTER_EXIT_S <= elapsed < PIPE_IDLE_AFTER_EXIT_S + 2
        assert not gone(escaped)  # beyond a process group's reach, by design
    finally:
        os.kill(escaped, signal.SIGKILL)  # so ours to clean up
    await wait_gone(escaped)


# -- concurrency, cancellation -------------------------------------------------------


@pytest.mark.trio
async def test_slow_command_does_not_delay_a_ping(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client, aclosing(stream_of(client, "echo running; exec sleep 30")) as it:
        await first_output(it)  # the command is running now
        with trio.fail_after(5):
            pong = await client.ping(b"still here")
        assert pong.payload == b"still here"
        assert running_commands(agent) == 1  # and it still runs


@pytest.mark.trio
async def test_cancel_by_request_id(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client, aclosing(stream_of(client, GROUP_SCRIPT)) as it:
        first = await first_output(it)
        pids = pids_of(first.execute_output.data)
        with trio.fail_after(5):
            ack = await client.request(cancel=pb.CancelRequest(target_message_id=first.message_id))
            assert ack.cancel_response.found
            rest = [m async for m in it]
    final = rest[-1].execute_response
    assert final.exit_reason == pb.EXIT_REASON_CANCELLED and not final.timed_out and not final.HasField("exit_code")
    assert final.signal == signal.SIGTERM
    await wait_gone(*pids)
    assert running_commands(agent) == 0


@pytest.mark.trio
async def test_a_stream_ends_after_its_result_without_a_checkpoint(start_agent, connect) -> None:
    """After the terminal answer the client's stream ends without giving way to other tasks: a
    consumer relaying it (hostd's ExecuteInGuestStream) sends the result and its end-of-stream
    in one write, not the result alone when its flush task gets a turn (protocol/rpc/server/
    _serving.py). A checkpoint in a cancelled scope raises Cancelled: here none is reached."""
    agent = await start_agent()
    async with connect(agent) as client, aclosing(stream_of(client, "echo done")) as it:
        with trio.fail_after(10):
            kinds = [(await anext(it)).WhichOneof("payload")]
            while kinds[-1] != "execute_response":
                kinds.append((await anext(it)).WhichOneof("payload"))
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(StopAsyncIteration):
                await anext(it)
        assert not scope.cancelled_caught, "the stream reached a checkpoint after its result"
    assert kinds[0] == "execute_output"


@pytest.mark.trio
async def test_leaving_a_stream_early_cancels_the_command(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        async with aclosing(stream_of(client, GROUP_SCRIPT)) as it:
            pids = pids_of((await first_output(it)).execute_output.data)
        await wait_gone(*pids)  # the client sent a cancel when we left
        with trio.fail_after(5):
            while running_commands(agent):
                await trio.sleep(0.01)
        assert (await client.ping()).agent_version  # the connection is fine


@pytest.mark.trio
async def test_closing_the_connection_kills_the_group(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        it = stream_of(client, GROUP_SCRIPT)
        pids = pids_of((await first_output(it)).execute_output.data)
        # Leave the connection without closing the stream: no cancel is sent.
        client.writer.close()
    await it.aclose()
    await wait_gone(*pids)
    with trio.fail_after(5):
        while running_commands(agent):
            await trio.sleep(0.01)


@pytest.mark.trio
async def test_agent_sigterm_kills_running_groups(spawn_agent, connect) -> None:
    proc = spawn_agent()
    async with connect(proc.socket) as client, aclosing(stream_of(client, GROUP_SCRIPT)) as it:
        pids = pids_of((await first_output(it)).execute_output.data)
        proc.proc.send_signal(signal.SIGTERM)
        with pytest.raises(errors.AgentError), trio.fail_after(10):
            async for _ in it:
                pass
    with trio.fail_after(10):
        while proc.proc.poll() is None:
            await trio.sleep(0.02)
    assert proc.proc.returncode == 0, proc.output()
    await wait_gone(*pids)


@pytest.mark.trio
async def test_concurrency_cap(start_agent, connect) -> None:
    agent = await start_agent(max_concurrent_commands=2)
    async with connect(agent) as client:
        async with (
            aclosing(stream_of(client, "echo 1; exec sleep 30")) as one,
            aclosing(stream_of(client, "echo 2; exec sleep 30")) as two,
        ):
            await first_output(one)
            await first_output(two)
            with pytest.raises(errors.ResourceExhausted) as exc_info:
                await run(client, argv=["true"])
            assert exc_info.value.reason == "too_many_commands"
            assert (await client.ping()).agent_version  # other requests still pass
        with trio.fail_after(5):
            while running_commands(agent):
                await trio.sleep(0.01)
        r = await run(client, argv=["true"])  # slots are given back
    assert r.exit_reason == pb.EXIT_REASON_EXITED


@pytest.mark.trio
async def test_disabled_execute_is_unimplemented(start_agent, connect) -> None:
    agent = await start_agent(disable=("execute",))
    async with connect(agent) as client:
        assert "execute" in client.identity.disabled_capabilities
        with pytest.raises(errors.Unimplemented) as exc_info:
            await run(client, argv=["true"])
    assert exc_info.value.reason == "disabled"


# -- streaming ---------------------------------------------------------------------------


@pytest.mark.trio
async def test_streaming_delivers_numbered_chunks_then_the_result(start_agent, connect) -> None:
    agent = await start_agent()
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 4"
    async with connect(agent) as client:
        with trio.fail_after(10):
            msgs = [m async for m in stream_of(client, script)]
    chunks, final = [m.execute_output for m in msgs[:-1]], msgs[-1]
    assert all(m.WhichOneof("payload") == "execute_output" for m in msgs[:-1])
    assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
    out = b"".join(c.data for c in chunks if c.stream == pb.OUTPUT_STREAM_STDOUT)
    err = b"".join(c.data for c in chunks if c.stream == pb.OUTPUT_STREAM_STDERR)
    assert out == b"out1\nout2\nout3\n" and err == b"err1\nerr2\nerr3\n"
    r = final.execute_response
    assert (r.exit_reason, r.exit_code, r.last_seq) == (pb.EXIT_REASON_EXITED, 4, len(chunks))
    assert r.stdout == b"" and r.stderr == b""
    assert (r.stdout_bytes, r.stderr_bytes) == (len(out), len(err))


@pytest.mark.trio
async def test_streaming_respects_the_caps(start_agent, connect) -> None:
    agent = await start_agent(max_frame_bytes=8192, file_chunk_bytes=1024)
    async with connect(agent) as client:
        with trio.fail_after(10):
            msgs = [m async for m in stream_of(client, "head -c 10M /dev/zero", stdout_limit_bytes=100_000)]
    chunks, r = [m.execute_output for m in msgs[:-1]], msgs[-1].execute_response
    assert sum(len(c.data) for c in chunks) == 100_000
    assert all(len(c.data) <= 8192 - FRAME_HEADROOM_BYTES for c in chunks)
    assert r.stdout_truncated and r.stdout_bytes == 10 * MiB and r.last_seq == len(chunks)


# -- run as ----------------------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_run_as_nobody(start_agent, connect) -> None:
    nobody = pwd.getpwnam("nobody")
    agent = await start_agent()
    script = 'id -u; id -g; id -G; echo "$HOME $USER $LOGNAME"'
    async with connect(agent) as client:
        by_name = await run(client, command=script, run_as=pb.RunAs(user="nobody"))
        by_uid = await run(client, argv=["id", "-u"], run_as=pb.RunAs(uid=nobody.pw_uid))
        groups = await run(client, argv=["id", "-G"], run_as=pb.RunAs(user="nobody", groups=[nobody.pw_gid, 4242]))
    uid, gid = nobody.pw_uid, nobody.pw_gid
    assert by_name.stdout.decode().splitlines() == [
        str(uid), str(gid), str(gid),  # no root groups leak into the child
        f"{nobody.pw_dir} nobody nobody",
    ]  # fmt: skip
    assert by_uid.stdout == b"65534\n"
    assert sorted(groups.stdout.split()) == sorted([str(gid).encode(), b"4242"])


@pytest.mark.trio
async def test_run_as_unknown_user(start_agent, connect) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        with pytest.raises(errors.NotFound, match="lqx-no-such-user"):
            await run(client, argv=["true"], run_as=pb.RunAs(user="lqx-no-such-user"))
        with pytest.raises(errors.InvalidArgument, match="uid"):
            await run(client, argv=["true"], run_as=pb.RunAs(user="root", uid=65534))
    assert running_commands(agent) == 0


def test_run_as_needs_root_for_another_identity() -> None:
    nobody = pwd.getpwnam("nobody")
    with pytest.raises(errors.PermissionDenied) as exc_info:
        resolve_run_as(pb.RunAs(user="root"), euid=nobody.pw_uid, egid=nobody.pw_gid)
    assert exc_info.value.reason == "not_root"
    with pytest.raises(errors.PermissionDenied):  # setgroups needs root too
        resolve_run_as(pb.RunAs(user="nobody", groups=[1]), euid=nobody.pw_uid, egid=nobody.pw_gid)
    same = resolve_run_as(pb.RunAs(user="nobody"), euid=nobody.pw_uid, egid=nobody.pw_gid)
    assert (same.uid, same.switch) == (nobody.pw_uid, False)
    assert resolve_run_as(pb.RunAs(uid=nobody.pw_uid), euid=0, egid=0).switch


# -- bad requests -------------------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"argv": ["true"], "command": "true"}, "argv_or_command"),
        ({}, "argv_or_command"),
        ({"argv": [""]}, "empty_program"),
        ({"argv": ["true"], "shell": "/bin/bash"}, "shell_with_argv"),
        ({"argv": ["echo", "a\x00b"]}, "nul_character"),
        ({"argv": ["true"], "working_directory": "relative/dir"}, "relative_path"),
        ({"argv": ["true"], "env": {"A=B": "x"}}, "invalid_env"),
        ({"argv": ["true"], "run_as": pb.RunAs(gid=0)}, "invalid_run_as"),
    ],
)
async def test_invalid_requests(start_agent, connect, fields: dict[str, object], reason: str) -> None:
    agent = await start_agent()
    async with connect(agent) as client:
        with pytest.raises(errors.InvalidArgument) as exc_info:
            await run(client, **fields)
    assert exc_info.value.reason == reason
    assert running_commands(agent) == 0
