"""File requests against a real agent on a Unix socket, on real files in temp dirs.

Covers the "Files" bullet and the file cases of "Bad input" of issue 2: chunked
reads with SHA-256, atomic chunked writes (one-shot, multi-chunk, append,
create_new, mode, owner, create_parents, expected_sha256), the path policy
(``..``, relative, NUL, a symlink into a denied directory, prefixes by whole
components), distinct OS errors, abandoned transfers (connection closed, idle,
cancelled), stat and paged listing.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import wait_until

from limiquantix.agent import Agent
from limiquantix.protocol import AgentClient, errors
from limiquantix.protocol._gen import agent_pb2 as pb

MiB = 1024 * 1024
#: Bound of every test; generous, since CI machines vary.
DEADLINE_S = 20


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def temp_files(directory: Path) -> list[str]:
    """The agent's staged temp files left in ``directory``."""
    return sorted(n for n in os.listdir(directory) if ".lqx-" in n)


async def read_file(client: AgentClient, path: str | Path, **kw: Any) -> tuple[bytes, list[pb.FileReadChunk]]:
    chunks: list[pb.FileReadChunk] = []
    async with aclosing(client.stream(file_read=pb.FileReadRequest(path=str(path), **kw))) as it:
        async for msg in it:
            chunks.append(msg.file_read_chunk)
    return b"".join(c.data for c in chunks), chunks


async def write(client: AgentClient, **kw: Any) -> pb.FileWriteResponse:
    if "path" in kw:
        kw["path"] = str(kw["path"])
    return (await client.request(file_write=pb.FileWriteRequest(**kw))).file_write_response


async def write_chunked(
    client: AgentClient, path: str | Path, data: bytes, chunk: int, **options: Any
) -> pb.FileWriteResponse:
    """A write transfer: open (no data), one request per chunk, then commit."""
    opened = await write(client, path=path, **options)
    assert opened.write_id and not opened.committed and opened.bytes_written == 0
    for at in range(0, len(data), chunk):
        resp = await write(client, write_id=opened.write_id, data=data[at : at + chunk])
        assert resp.write_id == opened.write_id
        assert resp.bytes_written == min(at + chunk, len(data))
        assert not resp.committed
    return await write(client, write_id=opened.write_id, last=True)


async def stat_of(client: AgentClient, path: str | Path) -> pb.FileStat:
    return (await client.request(file_stat=pb.FileStatRequest(path=str(path)))).file_stat_response


async def listing(client: AgentClient, path: str | Path, **kw: Any) -> pb.ListDirectoryResponse:
    return (await client.request(list_directory=pb.ListDirectoryRequest(path=str(path), **kw))).list_directory_response


def transfers_open(agent: Agent) -> int:
    return sum(len(s.resources) for s in agent.sessions)


# ---------------------------------------------------------------------- read


@pytest.mark.trio
async def test_read_whole_file(start_agent, connect, tmp_path: Path) -> None:
    content = os.urandom(300_000)
    (tmp_path / "f").write_bytes(content)
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            data, chunks = await read_file(client, tmp_path / "f")
    assert data == content
    assert len(chunks) == 1
    last = chunks[-1]
    assert last.eof and last.offset == 0
    assert last.sha256 == sha(content)
    assert last.total_bytes == last.file_size == len(content)


@pytest.mark.trio
async def test_read_range(start_agent, connect, tmp_path: Path) -> None:
    content = os.urandom(10_000)
    (tmp_path / "f").write_bytes(content)
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            data, chunks = await read_file(client, tmp_path / "f", offset=1234, length=5000, chunk_size=1000)
            tail, tail_chunks = await read_file(client, tmp_path / "f", offset=9000)
            past, past_chunks = await read_file(client, tmp_path / "f", offset=20_000)
    assert data == content[1234:6234]
    assert [c.offset for c in chunks] == list(range(1234, 6234, 1000))
    assert chunks[-1].sha256 == sha(content[1234:6234])
    assert chunks[-1].total_bytes == 5000 and chunks[-1].file_size == 10_000
    assert tail == content[9000:] and tail_chunks[-1].sha256 == sha(content[9000:])
    # Past the end: one empty eof chunk, nothing sent.
    assert past == b"" and len(past_chunks) == 1 and past_chunks[0].eof and past_chunks[0].total_bytes == 0


@pytest.mark.trio
async def test_read_empty_file(start_agent, connect, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            data, chunks = await read_file(client, tmp_path / "empty")
    assert data == b""
    assert len(chunks) == 1
    assert chunks[0].eof and chunks[0].sha256 == sha(b"") and chunks[0].total_bytes == 0


@pytest.mark.trio
async def test_multi_chunk_read_reassembles_exactly(start_agent, connect, tmp_path: Path) -> None:
    content = os.urandom(10 * 4096 + 17)
    (tmp_path / "f").write_bytes(content)
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            data, chunks = await read_file(client, tmp_path / "f", chunk_size=4096)
            exact, exact_chunks = await read_file(client, tmp_path / "f", length=8192, chunk_size=4096)
    assert data == content
    assert len(chunks) == 11
    assert [c.offset for c in chunks] == [i * 4096 for i in range(11)]
    assert [c.eof for c in chunks] == [False] * 10 + [True]
    assert all(not c.sha256 for c in chunks[:-1])
    assert chunks[-1].sha256 == sha(content) and chunks[-1].total_bytes == len(content)
    # A range ending on a chunk boundary: the last data chunk is the eof one.
    assert exact == content[:8192] and [c.eof for c in exact_chunks] == [False, True]


@pytest.mark.trio
async def test_read_file_of_unknown_size(start_agent, connect) -> None:
    """/proc files report size 0: a read goes on to the end the kernel reports."""
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            data, chunks = await read_file(client, "/proc/self/status", chunk_size=64)
    assert chunks[-1].file_size == 0
    assert b"Pid:" in data and chunks[-1].total_bytes == len(data) and chunks[-1].sha256 == sha(data)


# --------------------------------------------------------------------- write


@pytest.mark.trio
async def test_write_one_shot(start_agent, connect, tmp_path: Path) -> None:
    target = tmp_path / "new.txt"
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            resp = await write(client, path=target, data=b"hello\n", last=True)
    assert resp.committed and resp.write_id
    assert resp.bytes_written == resp.size == 6
    assert resp.sha256 == sha(b"hello\n")
    assert target.read_bytes() == b"hello\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert temp_files(tmp_path) == []


@pytest.mark.trio
async def test_write_multi_chunk_is_atomic(start_agent, connect, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old content")
    content = os.urandom(100_000)
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            opened = await write(client, path=target)
            await write(client, write_id=opened.write_id, data=content[:60_000])
            # Mid-transfer: the target is untouched; the data sits in an owner-only
            # temp file beside it.
            assert target.read_bytes() == b"old content"
            [tmp] = temp_files(tmp_path)
            assert tmp.startswith(".f.lqx-") and tmp.endswith(".tmp")
            assert stat.S_IMODE((tmp_path / tmp).stat().st_mode) == 0o600
            resp = await write(client, write_id=opened.write_id, data=content[60_000:], last=True)
            assert resp.committed and resp.bytes_written == resp.size == len(content)
            assert resp.sha256 == sha(content)
            # Committed: the write_id is gone.
            with pytest.raises(errors.NotFound):
                await write(client, write_id=opened.write_id, data=b"more")
            chunked = await write_chunked(client, tmp_path / "g", content, 7000)
    assert target.read_bytes() == content
    assert chunked.committed and chunked.sha256 == sha(content)
    assert (tmp_path / "g").read_bytes() == content
    assert temp_files(tmp_path) == []


@pytest.mark.trio
async def test_write_append(start_agent, connect, tmp_path: Path) -> None:
    target = tmp_path / "log"
    target.write_bytes(b"line 1\n")
    target.chmod(0o640)
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            resp = await write_chunked(client, target, b"line 2\nline 3\n", 7, mode=pb.WRITE_MODE_APPEND)
            fresh = await write(client, path=tmp_path / "new", data=b"x", last=True, mode=pb.WRITE_MODE_APPEND)
    assert target.read_bytes() == b"line 1\nline 2\nline 3\n"
    assert resp.bytes_written == 14 and resp.size == 21
    assert resp.sha256 == sha(b"line 1\nline 2\nline 3\n")  # of the whole file, not the transfer
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the replaced file's mode
    assert fresh.committed and (tmp_path / "new").read_bytes() == b"x"
    assert temp_files(tmp_path) == []


@pytest.mark.trio
async def test_write_create_new(start_agent, connect, tmp_path: Path) -> None:
    target = tmp_path / "f"
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            first = await write(client, path=target, data=b"first", last=True, mode=pb.WRITE_MODE_CREATE_NEW)
            assert first.committed
            with pytest.raises(errors.AlreadyExists) as exc:
                await write(client, path=target, data=b"second", last=True, mode=pb.WRITE_MODE_CREATE_NEW)
            assert exc.value.reason == "file_exists"
            # The file appears while a CREATE_NEW transfer is open: the commit refuses.
            opened = await write(client, path=tmp_path / "g", data=b"mine", mode=pb.WRITE_MODE_CREATE_NEW)
            (tmp_path / "g").write_bytes(b"theirs")
            with pytest.raises(errors.AlreadyExists):
                await write(client, write_id=opened.write_id, last=True)
    assert target.read_bytes() == b"first"
    assert (tmp_path / "g").read_bytes() == b"theirs"
    assert temp_files(tmp_path) == []


@pytest.mark.trio
async def test_write_mode_and_owner(start_agent, connect, tmp_path: Path) -> None:
    agent = await start_agent()
    uid, gid = os.geteuid(), os.getegid()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            await write(client, path=tmp_path / "secret", data=b"s", last=True, file_mode=0o600)
            await write(client, path=tmp_path / "tool", data=b"#!/bin/sh\n", last=True, file_mode=0o755)
            await write(client, path=tmp_path / "owned", data=b"o", last=True, owner=str(uid), group=str(gid))
            # As execute's run_as: a user the guest does not have is not_found (it was invalid_argument here).
            with pytest.raises(errors.NotFound) as exc:
                await write(client, path=tmp_path / "x", data=b"", last=True, owner="no-such-user-lqx")
            assert exc.value.reason == "unknown_user"
            with pytest.raises(errors.NotFound) as exc:
                await write(client, path=tmp_path / "x", data=b"", last=True, group="no-such-group-lqx")
            assert exc.value.reason == "unknown_group" and "group 'no-such-group-lqx'" in exc.value.message
            for field in ("owner", "group"):  # (uid_t)-1 means "unchanged" to chown: refused
                with pytest.raises(errors.InvalidArgument) as bad:
                    await write(client, path=tmp_path / "x", data=b"", last=True, **{field: "4294967295"})
                assert bad.value.reason == "id_out_of_range"
            with pytest.raises(errors.InvalidArgument):
                await write(client, path=tmp_path / "x", data=b"", last=True, file_mode=0o10000)
            # Replacing keeps the replaced file's mode unless told otherwise.
            (tmp_path / "secret").chmod(0o640)
            await write(client, path=tmp_path / "secret", data=b"t", last=True)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "tool").stat().st_mode) == 0o755
    st = (tmp_path / "owned").stat()
    assert (st.st_uid, st.st_gid) == (uid, gid)
    assert not (tmp_path / "x").exists()
    assert temp_files(tmp_path) == []


@pytest.mark.trio
@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
async def test_write_owner_as_root(start_agent, connect, tmp_path: Path) -> None:
    agent = await start_agent()
    kept = tmp_path / "kept"
    kept.write_bytes(b"old")
    os.chown(kept, 65534, 65534)
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            await write(client, path=tmp_path / "given", data=b"g", last=True, owner="65534", group="65534")
            await write(client, path=kept, data=b"new", last=True)
    st = (tmp_path / "given").stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    st = kept.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)  # the replaced file's owner
    assert kept.read_bytes() == b"new"


@pytest.mark.trio
async def test_write_create_parents(start_agent, connect, tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c" / "f"
    agent = await start_agent(file_write_allow=(str(tmp_path / "a"), str(tmp_path / "q" / "r")))
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            with pytest.raises(errors.NotFound):
                await write(client, path=target, data=b"x", last=True)
            assert not (tmp_path / "a").exists()
            resp = await write(client, path=target, data=b"x", last=True, create_parents=True)
            # A directory to create outside the write policy: refused, nothing made.
            with pytest.raises(errors.PermissionDenied) as exc:
                await write(client, path=tmp_path / "q" / "r" / "f", data=b"x", last=True, create_parents=True)
            assert exc.value.reason == "path_denied"
            with pytest.raises(errors.PermissionDenied):
                await write(client, path=tmp_path / "z" / "f", data=b"x", last=True, create_parents=True)
    assert resp.committed
    assert target.read_bytes() == b"x"
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) & 0o700 == 0o700
    assert not (tmp_path / "q").exists() and not (tmp_path / "z").exists()


@pytest.mark.trio
async def test_expected_sha256(start_agent, connect, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old content")
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            with pytest.raises(errors.FailedPrecondition) as exc:
                await write(client, path=target, data=b"new", last=True, expected_sha256=sha(b"other"))
            assert exc.value.reason == "checksum_mismatch"
            assert target.read_bytes() == b"old content"
            assert temp_files(tmp_path) == []
            # Given on the first request, checked at the commit; a failed commit ends the transfer.
            opened = await write(client, path=target, data=b"ne", expected_sha256=sha(b"new"))
            with pytest.raises(errors.FailedPrecondition):
                await write(client, write_id=opened.write_id, data=b"X", last=True)
            with pytest.raises(errors.NotFound):
                await write(client, write_id=opened.write_id, data=b"w", last=True)
            assert target.read_bytes() == b"old content"
            resp = await write(client, path=target, data=b"new", last=True, expected_sha256=sha(b"new"))
            assert resp.committed
            with pytest.raises(errors.InvalidArgument):
                await write(client, path=target, data=b"new", last=True, expected_sha256=b"short")
    assert target.read_bytes() == b"new"
    assert temp_files(tmp_path) == []


# ------------------------------------------------------------ abandoned writes


@pytest.mark.trio
async def test_write_abandoned_by_closing_the_connection(start_agent, connect, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old content")
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            opened = await write(client, path=target, data=os.urandom(50_000))
            assert opened.bytes_written == 50_000
            assert len(temp_files(tmp_path)) == 1
        # The session ends only after its transfers' cleanup has run.
        await wait_until(lambda: not agent.sessions)
    assert target.read_bytes() == b"old content"
    assert temp_files(tmp_path) == []


@pytest.mark.trio
async def test_write_abandoned_when_the_agent_stops(spawn_agent, connect, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old content")
    proc = spawn_agent()
    with trio.fail_after(DEADLINE_S):
        # The socket's path exists from bind(), before listen(): wait for the
        # agent to say it is serving, or the connect may be refused.
        await wait_until(lambda: " ready (" in proc.output())
        async with connect(proc.socket) as client:
            await write(client, path=target, data=b"partial")
            assert len(temp_files(tmp_path)) == 1
            proc.proc.send_signal(signal.SIGTERM)
            code = await trio.to_thread.run_sync(proc.proc.wait, DEADLINE_S)
    assert code == 0, proc.output()
    assert target.read_bytes() == b"old content"
    assert temp_files(tmp_path) == []


@pytest.mark.trio
async def test_write_abandoned_by_idle_timeout(start_agent, connect, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old content")
    agent = await start_agent(file_write_idle_timeout_s=0.2)
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            opened = await write(client, path=target, data=b"partial")
            assert opened.write_id and opened.bytes_written == 7
            await wait_until(lambda: transfers_open(agent) == 0)
            assert temp_files(tmp_path) == []
            with pytest.raises(errors.NotFound) as exc:
                await write(client, write_id=opened.write_id, data=b"rest", last=True)
            assert exc.value.reason == "unknown_write_id"
            assert (await client.ping(b"still here")).payload == b"still here"
    assert target.read_bytes() == b"old content"


@pytest.mark.trio
async def test_write_cancelled_by_write_id(start_agent, connect, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old content")
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            opened = await write(client, path=target, data=b"partial")
            answer = await client.request(cancel=pb.CancelRequest(target_message_id=opened.write_id))
            assert answer.cancel_response.found
            with pytest.raises(errors.NotFound):
                await write(client, write_id=opened.write_id, data=b"rest", last=True)
            await wait_until(lambda: transfers_open(agent) == 0)
            assert temp_files(tmp_path) == []
    assert target.read_bytes() == b"old content"


@pytest.mark.trio
async def test_unknown_write_id(start_agent, connect, tmp_path: Path) -> None:
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            with pytest.raises(errors.NotFound) as exc:
                await write(client, write_id="0123456789abcdef", data=b"x", last=True)
            assert exc.value.reason == "unknown_write_id"
            # A write_id belongs to the connection that opened it.
            opened = await write(client, path=tmp_path / "f", data=b"x")
            async with connect(agent) as other:
                with pytest.raises(errors.NotFound):
                    await write(other, write_id=opened.write_id, data=b"y", last=True)
            with pytest.raises(errors.InvalidArgument) as exc:
                await write(client, write_id=opened.write_id, path=tmp_path / "g", last=True)
            assert exc.value.reason == "path_mismatch"
            await write(client, write_id=opened.write_id, path=tmp_path / "f", data=b"y", last=True)
    assert (tmp_path / "f").read_bytes() == b"xy"


@pytest.mark.trio
async def test_disabled_file_write(start_agent, connect, tmp_path: Path) -> None:
    agent = await start_agent(disable=("file_write",))
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            assert "file_write" in client.identity.disabled_capabilities
            with pytest.raises(errors.Unimplemented) as exc:
                await write(client, path=tmp_path / "f", data=b"x", last=True)
            assert exc.value.reason == "disabled"
            (tmp_path / "r").write_bytes(b"read is still on")
            data, _ = await read_file(client, tmp_path / "r")
    assert data == b"read is still on"
    assert not (tmp_path / "f").exists()


@pytest.mark.trio
async def test_write_through_a_symlink(start_agent, connect, tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"old")
    (tmp_path / "link").symlink_to("real")
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            await write(client, path=tmp_path / "link", data=b"new", last=True)
    assert (tmp_path / "link").is_symlink()
    assert (tmp_path / "real").read_bytes() == b"new"
    assert temp_files(tmp_path) == []


# ---------------------------------------------------------------- path policy


@pytest.mark.trio
@pytest.mark.parametrize("path", ["/etc/../etc/shadow", "etc/passwd", "", "/etc/pass\0wd", "/tmp/..", "./x"], ids=repr)
async def test_invalid_paths(start_agent, connect, path: str) -> None:
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            requests = [
                {"file_read": pb.FileReadRequest(path=path)},
                {"file_write": pb.FileWriteRequest(path=path, data=b"x", last=True)},
                {"file_stat": pb.FileStatRequest(path=path)},
                {"list_directory": pb.ListDirectoryRequest(path=path)},
            ]
            for request in requests:
                with pytest.raises(errors.InvalidArgument) as exc:
                    await client.request(**request)
                assert exc.value.reason == "invalid_path", request


@pytest.mark.trio
async def test_symlink_into_denied_directory(start_agent, connect, tmp_path: Path) -> None:
    denied = tmp_path / "denied"
    denied.mkdir()
    (denied / "secret").write_bytes(b"top secret")
    public = tmp_path / "public"
    public.mkdir()
    (public / "link").symlink_to(denied / "secret")
    (public / "dirlink").symlink_to(denied)
    (public / "ok").write_bytes(b"fine")
    # Prefixes match whole components: "denied" does not cover "denied-not".
    (tmp_path / "denied-not").mkdir()
    (tmp_path / "denied-not" / "f").write_bytes(b"also fine")
    agent = await start_agent(file_read_deny=(str(denied),), file_write_deny=(str(denied),))
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            for path in (public / "link", public / "dirlink" / "secret", denied / "secret"):
                with pytest.raises(errors.PermissionDenied) as exc:
                    await read_file(client, path)
                assert exc.value.reason == "path_denied"
            for path in (public / "link", public / "dirlink" / "new", denied / "new"):
                with pytest.raises(errors.PermissionDenied) as exc:
                    await write(client, path=path, data=b"pwned", last=True)
                assert exc.value.reason == "path_denied"
            for request in (
                {"list_directory": pb.ListDirectoryRequest(path=str(public / "dirlink"))},
                {"file_stat": pb.FileStatRequest(path=str(denied / "secret"))},
            ):
                with pytest.raises(errors.PermissionDenied):
                    await client.request(**request)
            # The link itself may be looked at (stat does not follow it).
            link = await stat_of(client, public / "link")
            assert link.type == pb.FILE_TYPE_SYMLINK and link.symlink_target == str(denied / "secret")
            # A listing leaves out what the policy denies.
            names = [e.name for e in (await listing(client, tmp_path)).entries]
            assert names == ["denied-not", "public"]
            assert (await read_file(client, public / "ok"))[0] == b"fine"
            assert (await read_file(client, tmp_path / "denied-not" / "f"))[0] == b"also fine"
            await write(client, path=tmp_path / "denied-not" / "g", data=b"ok", last=True)
    assert (denied / "secret").read_bytes() == b"top secret"
    assert sorted(os.listdir(denied)) == ["secret"]


@pytest.mark.trio
async def test_allow_list(start_agent, connect, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f").write_bytes(b"in")
    (tmp_path / "out").write_bytes(b"out")
    agent = await start_agent(file_read_allow=(str(tmp_path / "in") + "/",), file_write_allow=())
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            assert (await read_file(client, tmp_path / "in" / "f"))[0] == b"in"
            with pytest.raises(errors.PermissionDenied):
                await read_file(client, tmp_path / "out")
            with pytest.raises(errors.PermissionDenied):
                await write(client, path=tmp_path / "in" / "f", data=b"x", last=True)


# --------------------------------------------------------------------- errors


@pytest.mark.trio
async def test_os_errors_are_distinct(start_agent, connect, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    agent = await start_agent()

    async def failure(**request: Any) -> errors.AgentError:
        with pytest.raises(errors.AgentError) as exc:
            await client.request(**request)
        return exc.value

    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            missing = str(tmp_path / "missing")
            for request in (
                {"file_read": pb.FileReadRequest(path=missing)},
                {"file_stat": pb.FileStatRequest(path=missing)},
                {"list_directory": pb.ListDirectoryRequest(path=missing)},
                {"file_write": pb.FileWriteRequest(path=missing + "/f", data=b"x", last=True)},
            ):
                err = await failure(**request)
                assert (type(err), err.reason) == (errors.NotFound, "not_found"), request

            for request in (
                {"file_read": pb.FileReadRequest(path=str(tmp_path / "dir"))},
                {"file_write": pb.FileWriteRequest(path=str(tmp_path / "dir"), data=b"x", last=True)},
            ):
                err = await failure(**request)
                assert (type(err), err.reason) == (errors.FailedPrecondition, "is_a_directory"), request

            for request in (
                {"list_directory": pb.ListDirectoryRequest(path=str(tmp_path / "file"))},
                {"file_read": pb.FileReadRequest(path=str(tmp_path / "file" / "x"))},
                {"file_write": pb.FileWriteRequest(path=str(tmp_path / "file" / "x"), data=b"x", last=True)},
            ):
                err = await failure(**request)
                assert (type(err), err.reason) == (errors.FailedPrecondition, "not_a_directory"), request

            os.mkfifo(tmp_path / "fifo")
            err = await failure(file_read=pb.FileReadRequest(path=str(tmp_path / "fifo")))
            assert (type(err), err.reason) == (errors.FailedPrecondition, "not_a_regular_file")
    assert temp_files(tmp_path) == []


#: Root ignores file modes through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH; an
#: agent started without them meets EACCES as an unprivileged one would.
_DROP_DAC = (
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
    "--",
)


@pytest.mark.trio
async def test_os_permission_denied(spawn_agent, connect, tmp_path: Path) -> None:
    """The OS refuses (EACCES): permission_denied, distinct from the policy's path_denied."""
    (tmp_path / "locked").write_bytes(b"x")
    (tmp_path / "locked").chmod(0)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "old").write_bytes(b"old")
    (tmp_path / "ro").chmod(0o500)
    proc = spawn_agent(wrapper=_DROP_DAC if os.geteuid() == 0 else ())
    try:
        with trio.fail_after(DEADLINE_S):
            async with connect(proc.socket) as client:
                with pytest.raises(errors.PermissionDenied) as exc:
                    await read_file(client, tmp_path / "locked")
                # Writes replace through a temp file in the directory: its mode decides.
                with pytest.raises(errors.PermissionDenied) as exc_write:
                    await client.request(
                        file_write=pb.FileWriteRequest(path=str(tmp_path / "ro" / "old"), data=b"new", last=True)
                    )
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert exc.value.reason == "permission_denied"
    assert exc_write.value.reason == "permission_denied"
    assert (tmp_path / "ro" / "old").read_bytes() == b"old"
    assert os.listdir(tmp_path / "ro") == ["old"]


# ---------------------------------------------------------- stat and listing


@pytest.mark.trio
async def test_stat(start_agent, connect, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    (tmp_path / "f").chmod(0o640)
    os.utime(tmp_path / "f", ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to("f")
    (tmp_path / "dangling").symlink_to("nowhere")
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            f = await stat_of(client, tmp_path / "f")
            d = await stat_of(client, str(tmp_path / "d") + "/")
            link = await stat_of(client, tmp_path / "l")
            dangling = await stat_of(client, tmp_path / "dangling")
            root = await stat_of(client, "/")
    assert f.path == str(tmp_path / "f") and f.name == "f"
    assert f.type == pb.FILE_TYPE_REGULAR and f.size == 5 and f.mode == 0o640
    assert (f.uid, f.gid) == (os.geteuid(), os.getegid())
    import grp
    import pwd

    assert f.owner == pwd.getpwuid(os.geteuid()).pw_name
    assert f.group == grp.getgrgid(os.getegid()).gr_name
    assert (f.accessed.seconds, f.accessed.nanos) == (1_600_000_000, 123_456_789)
    assert (f.modified.seconds, f.modified.nanos) == (1_700_000_000, 987_654_321)
    assert f.changed.seconds > 0 and not f.symlink_target
    assert d.type == pb.FILE_TYPE_DIRECTORY and d.name == "d" and d.path == str(tmp_path / "d")
    assert link.type == pb.FILE_TYPE_SYMLINK and link.symlink_target == "f"
    assert dangling.type == pb.FILE_TYPE_SYMLINK and dangling.symlink_target == "nowhere"
    assert root.type == pb.FILE_TYPE_DIRECTORY and root.name == "/" and root.path == "/"


@pytest.mark.trio
async def test_list_directory_paging(start_agent, connect, tmp_path: Path) -> None:
    names = sorted([f"file{i:02d}" for i in range(23)] + ["sub", "link", "Zebra", "ü-unicode"])
    for name in names:
        if name == "sub":
            (tmp_path / name).mkdir()
        elif name == "link":
            (tmp_path / name).symlink_to("file00")
        else:
            (tmp_path / name).write_bytes(name.encode())
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            whole = await listing(client, tmp_path)
            assert [e.name for e in whole.entries] == names and whole.next_page_token == ""
            seen: list[str] = []
            token = ""
            pages = 0
            while True:
                page = await listing(client, tmp_path, page_size=5, page_token=token)
                pages += 1
                assert len(page.entries) <= 5
                seen += [e.name for e in page.entries]
                if not page.next_page_token:
                    break
                assert page.next_page_token == page.entries[-1].name
                token = page.next_page_token
                if pages == 2:
                    # Changes between pages: entries already seen or removed do not
                    # shift the boundary; nothing is listed twice.
                    (tmp_path / "Zebra").unlink()
                    (tmp_path / "file00").unlink()
                    (tmp_path / "file20").unlink()
            assert pages == 6
            expected = [n for n in names if n != "file20"]
            assert seen == expected and len(set(seen)) == len(seen)
            by_name = {e.name: e for e in whole.entries}
            assert by_name["sub"].type == pb.FILE_TYPE_DIRECTORY
            assert by_name["link"].type == pb.FILE_TYPE_SYMLINK and by_name["link"].symlink_target == "file00"
            assert by_name["file03"].size == 6 and by_name["file03"].path == str(tmp_path / "file03")
            empty = await listing(client, tmp_path / "sub")
            assert list(empty.entries) == [] and empty.next_page_token == ""


@pytest.mark.trio
async def test_list_page_fits_in_a_frame(start_agent, connect, tmp_path: Path) -> None:
    """Long names: a page ends early rather than overflow the frame limit."""
    for i in range(40):
        (tmp_path / (f"{i:03d}" + "n" * 200)).write_bytes(b"")
    agent = await start_agent(max_frame_bytes=8192, file_chunk_bytes=4096)
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            seen: list[str] = []
            token = ""
            pages = 0
            while True:
                page = await listing(client, tmp_path, page_token=token)
                pages += 1
                seen += [e.name for e in page.entries]
                token = page.next_page_token
                if not token:
                    break
    assert pages > 1
    assert seen == sorted(os.listdir(tmp_path))


# ------------------------------------------------------------------ large files


@pytest.mark.trio
@pytest.mark.parametrize("mib", [17, pytest.param(64, marks=pytest.mark.slow)])
async def test_large_file_round_trip(start_agent, connect, tmp_path: Path, mib: int) -> None:
    """17 MiB: more than one frame (MAX_FRAME_BYTES is 16 MiB) could carry either way; the
    slow tier moves the 64 MiB of the name."""
    content = os.urandom(mib * MiB)
    source = tmp_path / "big"
    source.write_bytes(content)
    agent = await start_agent()
    with trio.fail_after(60):
        async with connect(agent) as client:
            received = bytearray()
            last = None
            async with aclosing(client.stream(file_read=pb.FileReadRequest(path=str(source)))) as it:
                async for msg in it:
                    assert msg.file_read_chunk.offset == len(received)
                    received += msg.file_read_chunk.data
                    last = msg.file_read_chunk
            assert last is not None and last.eof and last.sha256 == sha(content)
            assert bytes(received) == content
            resp = await write_chunked(client, tmp_path / "copy", bytes(received), MiB, expected_sha256=sha(content))
    assert resp.committed and resp.sha256 == sha(content) and resp.size == mib * MiB
    assert (tmp_path / "copy").read_bytes() == content


@pytest.mark.trio
async def test_write_offset_mismatch_keeps_the_transfer(start_agent, connect, tmp_path: Path) -> None:
    """A resent chunk (its answer was lost) is refused by offset; the transfer goes on."""
    agent = await start_agent()
    with trio.fail_after(DEADLINE_S):
        async with connect(agent) as client:
            opened = await write(client, path=tmp_path / "f", data=b"abc")
            await write(client, write_id=opened.write_id, data=b"def", offset=3)
            with pytest.raises(errors.FailedPrecondition) as exc:
                await write(client, write_id=opened.write_id, data=b"def", offset=3)  # the resend
            assert exc.value.reason == "offset_mismatch"
            done = await write(client, write_id=opened.write_id, data=b"ghi", offset=6, last=True)
    assert done.committed and (tmp_path / "f").read_bytes() == b"abcdefghi"
