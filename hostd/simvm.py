"""``limiquantix-simvm``: a simulated VM that plays QEMU's part on a machine without one.

What QEMU gives hostd for a VM with ``-chardev socket,path=…,server=on,wait=off
-device virtserialport,chardev=…,name=org.limiquantix.agent.0``, this gives it
without a hypervisor:

* a Unix socket server at ``--socket`` that serves **one host client at a
  time**; a second client's connect succeeds (it sits in the listen backlog) but
  it is served only once the first leaves, as QEMU does;
* a pty standing for the guest's port: the slave is the guest's
  ``/dev/virtio-ports/org.limiquantix.agent.0`` (a symlink to it in the state
  directory, as udev makes one in a guest), the master is bridged to the host
  client;
* the real ``limiquantix-agent`` started on the slave, unchanged
  (``--transport virtio``), with power and password commands replaced by
  harmless stand-ins (see below).

Bytes while no host client is attached (what QEMU does, imitated):
    QEMU's ``virtserialport`` throttles the port when its chardev cannot take
    data (``flush_buf`` in hw/char/virtio-console.c) and keeps what the guest
    wrote in the virtqueue until a client attaches, which then receives it: the
    stale frames DESIGN.md warns about. The guest's writes block once the queue
    is full. Here the master is simply not read while no client is attached, so
    the guest's bytes wait in the pty's buffer for the next client and the
    agent's writes block once that buffer is full; bytes read from the pty but
    not yet sent when a client left go to the next client first. Bytes the
    bridge has taken from a client are delivered to the guest even after that
    client left (QEMU has taken them off the socket too). One difference stays: on a real port a
    guest's ``read()`` returns 0 while no host is attached; on a pty it just
    waits, so the agent sees no "host absent" and relies on the frame
    decoder's stale-frame recovery, which a real port needs as well.

Power and password (harmless to the machine it runs on):
    The agent's ``poweroff_command`` and ``halt_command`` append a line to
    ``power.log`` in the state directory and send this process SIGUSR1: the
    simulated VM powers off (agent stopped, host client dropped, socket
    removed, exit 0), as a real VM's socket goes away with its QEMU.
    ``reboot_command`` logs and sends SIGUSR2: the agent is stopped and started
    again while the port and the host's connection stay, as in a guest reboot
    (the new agent announces itself with ``agent_ready``). ``password_command``
    records ``{"user", "password_sha256"}`` lines in ``passwords.log``; nothing
    touches the host's accounts.

Agent crashes:
    An agent that exits on its own (killed, crashed) is started again, like a
    systemd service with ``Restart=always``: after :data:`AGENT_RESTART_MIN_S`,
    doubling up to :data:`AGENT_RESTART_MAX_S` while it keeps dying young. The
    host's connection stays (QEMU does not tell the host client that the guest
    closed its port); the host learns of the restart from the new agent's
    ``agent_ready``, which fails whatever it had pending.

Signals: SIGTERM, SIGINT or SIGHUP stop the agent (SIGTERM, then SIGKILL after
:data:`AGENT_STOP_GRACE_S`), close the port, remove the socket and exit 0.

:class:`SimulatedPort` (socket + pty bridge, no agent, no signals) is usable in
process, e.g. to bridge many in-process agents in one test.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
import tty
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final, final

import trio

from limiquantix.protocol import Backoff

__all__ = [
    "AGENT_CONFIG_FILE",
    "AGENT_LOG_FILE",
    "AGENT_RESTART_MAX_S",
    "AGENT_RESTART_MIN_S",
    "AGENT_STOP_GRACE_S",
    "DEVICE_NAME",
    "PASSWORD_LOG_FILE",
    "POWER_LOG_FILE",
    "SimVMProcess",
    "SimulatedPort",
    "SimulatedVM",
    "main",
    "write_guest_files",
]

log = logging.getLogger(__name__)

#: The port's name; also the device symlink's name in the state directory.
DEVICE_NAME: Final = "org.limiquantix.agent.0"
#: Files in the state directory.
AGENT_CONFIG_FILE: Final = "agent.toml"
AGENT_LOG_FILE: Final = "agent.log"
POWER_LOG_FILE: Final = "power.log"
PASSWORD_LOG_FILE: Final = "passwords.log"
SIMVM_LOG_FILE: Final = "simvm.log"
#: Connections waiting behind the served one. QEMU listens with a backlog of 1;
#: a few more lets several waiting clients queue instead of being refused.
LISTEN_BACKLOG: Final = 4
#: Largest piece moved at once in either direction (a pty hands over at most a
#: few KiB per read anyway).
BRIDGE_CHUNK: Final = 64 * 1024
#: Chunks from the host waiting for the guest before the host's socket is no
#: longer read (its writes then block, as QEMU stops reading a throttled port).
TO_GUEST_QUEUE_CHUNKS: Final = 16
#: On stop: time the agent has to flush its answers and exit after SIGTERM.
AGENT_STOP_GRACE_S: Final = 5.0
#: Restart delays of an agent that exits on its own: short, like systemd's
#: RestartSec default, doubling while it keeps dying within AGENT_STABLE_S.
AGENT_RESTART_MIN_S: Final = 0.1
AGENT_RESTART_MAX_S: Final = 5.0
AGENT_STABLE_S: Final = 10.0
#: How often SimVMProcess.wait_ready looks for the socket.
_READY_POLL_S: Final = 0.02
#: AF_UNIX path limit (sun_path is 108 bytes with the terminating NUL).
_MAX_SOCKET_PATH: Final = 107
#: Distinguishes the temporary socket names of several ports in one process.
_TMP_NAMES: Final = itertools.count()

# The stand-ins are small scripts written into the state directory and run
# with `python -I -S` (isolated, no site: ~15 ms to start).
_STANDINS: Final = {
    "standin-power.py": """\
# limiquantix-simvm: stands for shutdown(8). Records the request, then signals
# the simulated VM (SIGUSR1: power off, SIGUSR2: reboot).
import json, os, sys, time
log, action, sig, pid, *message = sys.argv[1:]
with open(log, "a") as f:
    f.write(json.dumps({"action": action, "message": " ".join(message), "time": time.time()}) + "\\n")
os.kill(int(pid), int(sig))
""",
    # chpasswd's protocol: "user:password" lines on stdin. Only a hash is kept,
    # and a bad line is refused without being quoted (it holds a password).
    "standin-chpasswd.py": """\
# limiquantix-simvm: stands for chpasswd(8); never touches the host's accounts.
import hashlib, json, sys, time
records = []
for line in sys.stdin:
    user, sep, password = line.rstrip("\\n").partition(":")
    if not sep:
        sys.exit("simulated chpasswd: an input line has no colon")
    digest = hashlib.sha256(password.encode()).hexdigest()
    records.append({"user": user, "password_sha256": digest, "time": time.time()})
with open(sys.argv[1], "a") as f:
    for record in records:
        f.write(json.dumps(record) + "\\n")
""",
    "standin-expire.py": """\
# limiquantix-simvm: stands for passwd --expire.
import json, sys, time
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"user": sys.argv[2], "expire": True, "time": time.time()}) + "\\n")
""",
}


def _toml_list(items: Sequence[str]) -> str:
    # A JSON string is a valid TOML basic string (the agent's --print-config does the same).
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


def write_guest_files(
    state_dir: Path, *, simvm_pid: int, python: str = sys.executable, log_level: str = "info"
) -> Path:
    """Write the stand-in scripts and the agent's configuration; return the config's path.

    Args:
        state_dir: where the files go, and where the stand-ins record what they
            were asked (:data:`POWER_LOG_FILE`, :data:`PASSWORD_LOG_FILE`).
        simvm_pid: the process the power stand-in signals.
        python: interpreter that runs the stand-ins.
        log_level: the agent's log level.

    Raises:
        OSError: the files cannot be written.
    """
    for name, text in _STANDINS.items():
        (state_dir / name).write_text(text)
    py = [python, "-I", "-S"]
    power_log = str(state_dir / POWER_LOG_FILE)
    password_log = str(state_dir / PASSWORD_LOG_FILE)

    def power(action: str, sig: signal.Signals) -> str:
        script = str(state_dir / "standin-power.py")
        return _toml_list([*py, script, power_log, action, str(int(sig)), str(simvm_pid), "{message}"])

    config = state_dir / AGENT_CONFIG_FILE
    config.write_text(
        "\n".join(
            [
                "# Generated by limiquantix-simvm: this agent runs in a simulated VM on the",
                "# host itself, so power and password commands go to harmless stand-ins.",
                f"log_level = {json.dumps(log_level)}",
                f"poweroff_command = {power('poweroff', signal.SIGUSR1)}",
                f"halt_command = {power('halt', signal.SIGUSR1)}",
                f"reboot_command = {power('reboot', signal.SIGUSR2)}",
                f"password_command = {_toml_list([*py, str(state_dir / 'standin-chpasswd.py'), password_log])}",
                "password_expire_command = "
                + _toml_list([*py, str(state_dir / "standin-expire.py"), password_log, "{user}"]),
                "",
            ]
        )
    )
    return config


# ----------------------------------------------------------------------- port


@final
class SimulatedPort:
    """A virtio-serial port as QEMU exposes it: a one-client socket server bridged to a pty.

    Args:
        socket_path: where the host connects (replaced if it exists, as QEMU does).
        device_link: optional symlink made to the pty slave (the guest's device
            path); without one, :attr:`device_path` is the slave's own path.

    Raises:
        ValueError: ``socket_path`` is too long for AF_UNIX.

    The pty exists from :meth:`serve`'s start until it returns; this object
    keeps the slave open too, so the port stays up while no agent has it open.
    """

    def __init__(self, socket_path: str, *, device_link: str | None = None) -> None:
        if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(f"socket path is longer than {_MAX_SOCKET_PATH} bytes: {socket_path}")
        self.socket_path = socket_path
        self.device_link = device_link
        self.pts_path = ""
        #: Host clients served so far, and whether one is attached now.
        self.clients_served = 0
        self.attached = False
        self._master = -1
        self._slave = -1
        # Guest bytes read from the pty but not yet taken by a host client:
        # the next client gets them first (QEMU keeps them in the virtqueue).
        self._to_host = bytearray()
        self._to_guest_tx, self._to_guest_rx = trio.open_memory_channel[bytes](TO_GUEST_QUEUE_CHUNKS)
        self._socket_id: tuple[int, int] | None = None

    @property
    def device_path(self) -> str:
        """The path the guest's agent opens."""
        return self.device_link or self.pts_path

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Create the pty and the socket, then serve host clients one at a time until cancelled.

        ``task_status.started()`` once the socket accepts connections. On exit
        the socket is removed (unless another process replaced it) and the pty
        closed.

        Raises:
            OSError: the socket cannot be created.
        """
        listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            self._open_pty()
            await self._listen(listener)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._feed_guest)
                task_status.started()
                while True:
                    client, _ = await listener.accept()
                    with client:
                        await self._serve_client(client)
        finally:
            listener.close()
            self._remove_socket()
            self._close_pty()

    # -- setup and teardown ---------------------------------------------------

    def _open_pty(self) -> None:
        self._master, self._slave = os.openpty()
        self.pts_path = os.ttyname(self._slave)
        # Raw from the start, as a port is: a cooked pty would echo the host's
        # bytes back and rewrite CR, ^C, ^U... before the agent sets raw mode.
        tty.setraw(self._slave, termios.TCSANOW)
        os.set_blocking(self._master, False)
        if self.device_link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.device_link)
            os.symlink(self.pts_path, self.device_link)

    async def _listen(self, sock: trio.socket.SocketType) -> None:
        # Bound under a temporary name in the same directory and renamed into
        # place: the path appears only once it accepts (no connect-refused
        # window), and an old socket is replaced atomically (QEMU unlinks it).
        directory = os.path.dirname(self.socket_path) or "."
        tmp = os.path.join(directory, f".simvm-{os.getpid()}-{next(_TMP_NAMES)}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        old_umask = os.umask(0o177)  # the socket is a root shell into the guest: owner only
        try:
            await sock.bind(tmp)
        finally:
            os.umask(old_umask)
        sock.listen(LISTEN_BACKLOG)
        os.rename(tmp, self.socket_path)
        st = os.stat(self.socket_path)
        self._socket_id = (st.st_dev, st.st_ino)
        log.info("listening on %s (guest device %s)", self.socket_path, self.device_path)

    def _remove_socket(self) -> None:
        if self._socket_id is None:
            return
        try:
            st = os.lstat(self.socket_path)
            if (st.st_dev, st.st_ino) == self._socket_id:
                os.unlink(self.socket_path)
        except OSError:
            pass  # already gone
        self._socket_id = None

    def _close_pty(self) -> None:
        if self.device_link:
            with contextlib.suppress(OSError):
                if os.readlink(self.device_link) == self.pts_path:
                    os.unlink(self.device_link)
        for fd in (self._master, self._slave):
            if fd >= 0:
                trio.lowlevel.notify_closing(fd)
                os.close(fd)
        self._master = self._slave = -1

    # -- the bridge ----------------------------------------------------------

    async def _serve_client(self, client: trio.socket.SocketType) -> None:
        self.clients_served += 1
        self.attached = True
        log.info("host client #%d attached", self.clients_served)
        try:
            async with trio.open_nursery() as nursery:

                async def pump(direction: str, copy: Callable[[trio.socket.SocketType], Awaitable[None]]) -> None:
                    try:
                        await copy(client)
                    except OSError as exc:
                        log.debug("host client %s: %s", direction, exc)
                    # Either direction ending ends the client's turn.
                    nursery.cancel_scope.cancel()

                nursery.start_soon(pump, "to guest", self._from_host)
                nursery.start_soon(pump, "to host", self._to_host_pump)
        finally:
            self.attached = False
            log.info("host client #%d detached", self.clients_served)

    async def _from_host(self, client: trio.socket.SocketType) -> None:
        """Host → guest: queue what the client sends; returns at its end of stream."""
        while True:
            data = await client.recv(BRIDGE_CHUNK)
            if not data:
                return
            await self._to_guest_tx.send(data)

    async def _feed_guest(self) -> None:
        """Write queued host bytes into the pty, whether or not a client is attached."""
        async for chunk in self._to_guest_rx:
            view = memoryview(chunk)
            while view:
                try:
                    n = os.write(self._master, view)
                except BlockingIOError:
                    # The guest is not reading (no agent, or a busy one).
                    await trio.lowlevel.wait_writable(self._master)
                    continue
                view = view[n:]

    async def _to_host_pump(self, client: trio.socket.SocketType) -> None:
        """Guest → host, only while a client is attached: the guest waits otherwise."""
        while True:
            if not self._to_host:
                await trio.lowlevel.wait_readable(self._master)
                try:
                    data = os.read(self._master, BRIDGE_CHUNK)
                except BlockingIOError:
                    continue
                self._to_host += data
            # A socket send either sends or is cancelled having sent nothing,
            # so exactly the unsent rest stays for the next client.
            n = await client.send(self._to_host)
            del self._to_host[:n]


# ------------------------------------------------------------------------- VM


@final
class SimulatedVM:
    """A :class:`SimulatedPort` with the real agent running on it (the command's core).

    Args:
        socket_path: the host-side socket.
        state_dir: holds the agent's config and log, the device symlink and the
            stand-ins' records; created if missing.
        name: shown in logs.
        agent: False: no agent (the socket is open, the guest silent).
        agent_args: extra agent flags (they win over the generated config).
        agent_log_level: the agent's log level.
        python: interpreter for the agent and the stand-ins.
    """

    def __init__(
        self,
        socket_path: str,
        *,
        state_dir: Path,
        name: str = "simvm",
        agent: bool = True,
        agent_args: Sequence[str] = (),
        agent_log_level: str = "info",
        python: str = sys.executable,
    ) -> None:
        self.name = name
        self.state_dir = state_dir
        self.port = SimulatedPort(socket_path, device_link=str(state_dir / DEVICE_NAME))
        self.agent_enabled = agent
        self.agent_args = tuple(agent_args)
        self.agent_log_level = agent_log_level
        self.python = python
        #: The running agent process, if any; and how many were started.
        self.agent: trio.Process | None = None
        self.boots = 0
        self._stopping = False
        self._rebooting = False

    def agent_argv(self) -> list[str]:
        """The agent's command line (on the port's device, with the generated config)."""
        return [
            self.python, "-m", "limiquantix.agent",
            "--transport", "virtio", "--device", self.port.device_path,
            "--config", str(self.state_dir / AGENT_CONFIG_FILE),
            *self.agent_args,
        ]  # fmt: skip

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> str:
        """Run until powered off by the guest or stopped by a signal; returns why.

        Must run in the main thread (it handles signals).

        Raises:
            OSError: the state directory or the socket cannot be created.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_guest_files(self.state_dir, simvm_pid=os.getpid(), python=self.python, log_level=self.agent_log_level)
        reason = "stopped"
        watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
        with trio.open_signal_receiver(*watched) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.port.serve)
                if self.agent_enabled:
                    nursery.start_soon(self._supervise)
                log.info("%s is up (socket %s, state %s)", self.name, self.port.socket_path, self.state_dir)
                task_status.started()
                async for signum in signals:
                    if signum == signal.SIGUSR2:
                        self._reboot(nursery)
                        continue
                    if signum == signal.SIGUSR1:
                        reason = "powered off by the guest"
                    else:
                        reason = f"received {signal.Signals(signum).name}"
                    break
                log.info("%s: %s; stopping", self.name, reason)
                # The agent goes first, while the port is still there to carry
                # its last answers; then the port and the socket.
                self._stopping = True
                with trio.CancelScope(shield=True):
                    await self._stop_agent()
                nursery.cancel_scope.cancel()
        return reason

    def _reboot(self, nursery: trio.Nursery) -> None:
        if self.agent is None:
            log.info("%s: reboot requested with no agent running", self.name)
            return
        log.info("%s: rebooting (agent pid %d stops, a new one starts)", self.name, self.agent.pid)
        self._rebooting = True
        nursery.start_soon(self._terminate, self.agent)

    async def _stop_agent(self) -> None:
        if self.agent is not None:
            await self._terminate(self.agent)

    async def _terminate(self, proc: trio.Process) -> None:
        """SIGTERM, then SIGKILL after the grace period; reaped either way."""
        if proc.returncode is None:
            proc.terminate()
            with trio.move_on_after(AGENT_STOP_GRACE_S):
                await proc.wait()
                return
            log.warning("agent pid %d ignored SIGTERM for %g s: killing it", proc.pid, AGENT_STOP_GRACE_S)
            proc.kill()
        await proc.wait()

    async def _supervise(self) -> None:
        """Start the agent, and start it again whenever it exits, until the VM stops."""
        restart = Backoff(AGENT_RESTART_MIN_S, AGENT_RESTART_MAX_S)
        while not self._stopping:
            self.boots += 1
            started = trio.current_time()
            with open(self.state_dir / AGENT_LOG_FILE, "ab") as out:
                out.write(f"--- boot {self.boots} at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
                out.flush()
                # Its own session: a terminal's Ctrl-C reaches this process,
                # which stops the agent in order, not the agent directly.
                proc = await trio.lowlevel.open_process(
                    self.agent_argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
                )
            self.agent = proc
            log.info("%s: boot %d, agent pid %d", self.name, self.boots, proc.pid)
            try:
                await proc.wait()
            finally:
                if proc.returncode is None:  # cancelled: the VM is going down
                    with trio.CancelScope(shield=True):
                        await self._terminate(proc)
                self.agent = None
            if self._stopping:
                return
            if self._rebooting:
                self._rebooting = False
                restart.reset()
                continue
            if trio.current_time() - started >= AGENT_STABLE_S:
                restart.reset()
            delay = restart.next()
            log.warning(
                "%s: agent pid %d exited (%s); starting it again in %.1f s",
                self.name, proc.pid, _describe_exit(proc.returncode), delay,
            )  # fmt: skip
            await trio.sleep(delay)


def _describe_exit(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


# ----------------------------------------------------------------- launching


@final
class SimVMProcess:
    """A ``limiquantix-simvm`` subprocess, for ``make run``, benchmarks and tests.

    Start with :meth:`start`, wait for its socket with :meth:`wait_ready`
    (bounded by the caller's ``trio.fail_after``), stop with :meth:`stop`.
    """

    def __init__(self, proc: subprocess.Popen[bytes], socket_path: str, state_dir: Path) -> None:
        self.proc = proc
        self.socket_path = socket_path
        self.state_dir = state_dir

    @classmethod
    def start(
        cls,
        socket_path: str,
        *,
        state_dir: Path,
        name: str = "simvm",
        no_agent: bool = False,
        agent_args: Sequence[str] = (),
        log_level: str = "info",
        python: str = sys.executable,
        preexec_fn: Callable[[], None] | None = None,
    ) -> SimVMProcess:
        """Start ``python -m limiquantix.hostd.simvm``; its log is ``simvm.log`` in ``state_dir``.
        ``preexec_fn`` runs in the child before exec (``make run`` gives it a session of its own).

        Raises:
            OSError: the process cannot be started.
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            python, "-m", "limiquantix.hostd.simvm",
            "--socket", socket_path, "--name", name, "--state-dir", str(state_dir), "--log-level", log_level,
        ]  # fmt: skip
        if no_agent:
            argv.append("--no-agent")
        argv += [f"--agent-arg={arg}" for arg in agent_args]
        with open(state_dir / SIMVM_LOG_FILE, "ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec_fn
            )
        return cls(proc, socket_path, state_dir)

    def output(self) -> str:
        """The simulated VM's own log so far."""
        try:
            return (self.state_dir / SIMVM_LOG_FILE).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_ready(self) -> None:
        """Return once the socket accepts connections (the agent may still be starting).

        Raises:
            RuntimeError: the process exited first.
        """
        while not os.path.exists(self.socket_path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"simvm exited with {self.proc.returncode}:\n{self.output()}")
            await trio.sleep(_READY_POLL_S)

    async def wait_exit(self) -> int:
        """Wait for the process to exit (bounded by the caller); its exit status."""
        while self.proc.poll() is None:
            await trio.sleep(_READY_POLL_S)
        return self.proc.returncode

    def stop(self, *, grace_s: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; the exit status (blocking)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


# ----------------------------------------------------------------- command


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="limiquantix-simvm",
        description=(
            "A simulated VM for local runs and tests: a Unix socket server (one client at a time, like QEMU's "
            "-chardev socket,server=on,wait=off) bridged to a pty standing for the guest's virtio-serial port, "
            "with the real limiquantix-agent on it. Power and password requests go to harmless stand-ins."
        ),
    )
    parser.add_argument("--socket", required=True, help="host-side Unix socket path (replaced if it exists)")
    parser.add_argument("--name", default="simvm", help="VM name, shown in logs (default: simvm)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=(
            f"directory for {AGENT_CONFIG_FILE}, {AGENT_LOG_FILE}, {POWER_LOG_FILE}, {PASSWORD_LOG_FILE} and the "
            f"{DEVICE_NAME} device link (default: a temp dir, removed at exit)"
        ),
    )
    parser.add_argument(
        "--no-agent", action="store_true", help="start no agent: the socket opens, the guest stays silent"
    )
    parser.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra agent flag, repeatable; write --agent-arg=--telemetry-interval-s=1 for flags starting with '-'",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="simvm's and the agent's"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``limiquantix-simvm``: run one simulated VM until it powers off or is stopped."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format=f"%(levelname)s simvm[{args.name}]: %(message)s", stream=sys.stderr
    )
    temp_state = args.state_dir is None
    state_dir: Path = Path(tempfile.mkdtemp(prefix=f"lqx-simvm-{args.name}-")) if temp_state else args.state_dir
    try:
        vm = SimulatedVM(
            args.socket,
            state_dir=state_dir,
            name=args.name,
            agent=not args.no_agent,
            agent_args=args.agent_arg,
            agent_log_level=args.log_level,
        )
        trio.run(vm.run)
    except Exception as exc:
        # Setup errors (socket path taken by a directory, no permission) arrive
        # wrapped in the nursery's exception group: report the first leaf.
        while isinstance(getattr(exc, "exceptions", None), tuple) and exc.exceptions:  # type: ignore[attr-defined]
            exc = exc.exceptions[0]  # type: ignore[attr-defined]
        if not isinstance(exc, (OSError, ValueError)):
            raise
        log.error("%s", exc)
        return 1
    finally:
        if temp_state:
            shutil.rmtree(state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
