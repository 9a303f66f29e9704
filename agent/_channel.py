"""Transports to the host. This module alone touches the port's file descriptor.

A *channel* produces *links*; a link is one open byte stream to the host, served
by one :class:`~limiquantix.agent._session.Session` until it breaks:

* :class:`DeviceChannel`: a character device, the virtio-serial port in a real
  guest (``/dev/virtio-ports/org.limiquantix.agent.0``) or a pty standing for it
  in a simulated VM. Opened non-blocking and poll-driven. Facts of virtio-serial
  this code follows (measured on a real QEMU guest, see DESIGN.md): while no host
  client is attached, ``read()`` returns 0 at once and poll reports the fd
  readable, so a zero read means "host absent", not end of file: back off instead
  of spinning, and drop any half-frame the departed host left. The device can be
  missing (module not loaded yet, port not configured) or vanish (hot-unplug):
  wait for it and reopen. One link per open of the device.
* :class:`UnixListenChannel`: listen on a Unix socket (development, tests); each
  accepted connection is a link, up to ``max_connections`` served at once.
* :class:`UnixConnectChannel`: connect to a Unix socket, reconnecting with
  backoff; one link at a time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import termios
import tty
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, final

import trio

from limiquantix.protocol import Backoff, ReadBuffer, direct_reader, direct_writer

__all__ = [
    "Channel",
    "DeviceChannel",
    "Link",
    "LinkGone",
    "UnixConnectChannel",
    "UnixListenChannel",
]

log = logging.getLogger(__name__)

#: Largest single read. virtio-serial hands over at most a few pages per read;
#: a larger buffer only matters for Unix sockets during bulk file writes.
READ_SIZE: Final = 256 * 1024
#: Back-off while the host is absent: starts small so a host that attaches is
#: answered quickly, capped so an idle guest wakes at most twice a second.
ABSENT_BACKOFF_MIN_S: Final = 0.02
ABSENT_BACKOFF_MAX_S: Final = 0.5
#: Retry interval for a device that cannot be polled.
_NO_POLL_RETRY_S: Final = 0.05
#: How often to look for a missing device or socket (at most).
REOPEN_INTERVAL_S: Final = 1.0
#: The first look again for a missing device: at boot the agent may start before udev
#: has created the port's node, which then appears within moments; the interval
#: doubles from here up to REOPEN_INTERVAL_S.
REOPEN_FIRST_S: Final = 0.05
#: errnos that mean the device or peer is gone for good (reopen it).
_GONE_ERRNOS: Final = frozenset({errno.EIO, errno.ENODEV, errno.ENXIO, errno.EBADF, errno.EPIPE, errno.ECONNRESET})


class LinkGone(Exception):
    """The link broke (device vanished, peer closed)."""


class Link(Protocol):
    """One open byte stream to a host."""

    #: Called when the host detaches but the link stays open (virtio only).
    on_host_absent: Callable[[], None] | None

    async def receive_some(self) -> bytes | bytearray:
        """Next bytes from the host; ``b""`` when the link ended.

        Raises:
            LinkGone: the link broke.
        """

    def try_write(self, data: bytes) -> int:
        """Write what fits without waiting (see MessageWriter).

        Raises:
            OSError: including BlockingIOError when nothing fits.
        """

    async def send_all(self, data: bytes) -> None:
        """Write all of ``data``.

        Raises:
            LinkGone: the link broke.
        """

    @property
    def description(self) -> str: ...


LinkHandler = Callable[[Link], Awaitable[None]]


class Channel(Protocol):
    async def serve(
        self, handle_link: LinkHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Produce links forever and run ``handle_link`` on each."""


# --------------------------------------------------------------------- device


@final
class _DeviceLink:
    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self._path = path
        self.on_host_absent: Callable[[], None] | None = None
        self._absent = False
        # Advanced by each empty read while no host is attached, reset by the first data.
        self._absent_backoff = Backoff(ABSENT_BACKOFF_MIN_S, ABSENT_BACKOFF_MAX_S)
        self._pollable = True
        self._read = ReadBuffer(READ_SIZE)
        self._rdev = os.fstat(fd).st_rdev
        self.description = f"device {path}"

    def _still_present(self) -> bool:
        """Whether the path still names the device we hold open.

        A removed port (hot-unplug) or a hung-up pty reads 0 bytes just like a
        port with no host attached; the path tells them apart.
        """
        try:
            return os.stat(self._path).st_rdev == self._rdev
        except OSError:
            return False

    async def _wait(self, wait: Callable[[int], Awaitable[None]]) -> None:
        if self._pollable:
            try:
                await wait(self._fd)
                return
            except PermissionError:
                # epoll refuses files without poll support (e.g. /dev/null
                # standing in for a port); fall back to timed retries.
                log.warning("%s does not support poll; retrying reads on a timer", self._path)
                self._pollable = False
        await trio.sleep(_NO_POLL_RETRY_S)

    async def receive_some(self) -> bytes:
        while True:
            await self._wait(trio.lowlevel.wait_readable)
            try:
                data = self._read(self._fd)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in _GONE_ERRNOS:
                    raise LinkGone(f"{self._path}: {exc.strerror}") from exc
                raise
            if data:
                if self._absent:
                    log.info("host attached to %s", self._path)
                    self._absent_backoff.reset()
                self._absent = False
                return data
            # No host attached: the port reports readable and reads 0 bytes.
            if not self._still_present():
                raise LinkGone(f"{self._path} was removed")
            if not self._absent:
                self._absent = True
                log.info("no host attached to %s; waiting", self._path)
                if self.on_host_absent is not None:
                    self.on_host_absent()
            await trio.sleep(self._absent_backoff.next())

    def try_write(self, data: bytes) -> int:
        return os.write(self._fd, data)

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_writable)
                continue
            except OSError as exc:
                if exc.errno in _GONE_ERRNOS:
                    raise LinkGone(f"{self._path}: {exc.strerror}") from exc
                raise
            view = view[n:]
            if view:
                await self._wait(trio.lowlevel.wait_writable)
        await trio.lowlevel.checkpoint()


def _open_device(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            raise OSError(errno.ENODEV, "not a character device")
        if os.isatty(fd):
            # A pty (simulated VM) or serial line: raw bytes, no echo, no line editing.
            tty.setraw(fd, termios.TCSANOW)
    except BaseException:
        os.close(fd)
        raise
    return fd


@final
class DeviceChannel:
    """The virtio-serial port (or a pty standing for it)."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def serve(
        self, handle_link: LinkHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        missing_logged = False
        retry = Backoff(REOPEN_FIRST_S, REOPEN_INTERVAL_S)
        while True:
            try:
                fd = _open_device(self.path)
            except OSError as exc:
                if not started:
                    task_status.started()
                    started = True
                if not missing_logged:
                    log.warning(
                        "cannot open %s (%s); retrying (every %.0f s at most)",
                        self.path,
                        exc.strerror,
                        REOPEN_INTERVAL_S,
                    )
                    missing_logged = True
                await trio.sleep(retry.next())
                continue
            missing_logged = False
            retry.reset()
            log.info("opened %s", self.path)
            if not started:
                task_status.started()
                started = True
            try:
                await handle_link(_DeviceLink(fd, self.path))
            finally:
                # The fd must not be closed while trio still watches it.
                trio.lowlevel.notify_closing(fd)
                os.close(fd)
            log.warning("%s went away; reopening", self.path)
            await trio.sleep(REOPEN_INTERVAL_S)


# ---------------------------------------------------------------------- unix


@final
class _StreamLink:
    def __init__(self, stream: trio.SocketStream, description: str) -> None:
        self._stream = stream
        self.on_host_absent: Callable[[], None] | None = None
        self.description = description
        self.try_write = direct_writer(stream)
        self._receive_some = direct_reader(stream, READ_SIZE)

    async def receive_some(self) -> bytes | bytearray:
        try:
            return await self._receive_some()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise LinkGone(str(exc)) from exc

    async def send_all(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise LinkGone(str(exc)) from exc


@final
class UnixListenChannel:
    """Listen on a Unix socket; serve every connection as its own link.

    At most ``max_connections`` are served at once: one more is closed as soon
    as it is accepted (and logged), so clients that connect and hold their
    connections cannot make the agent hold unbounded sessions.
    """

    def __init__(self, path: str, *, max_connections: int) -> None:
        self.path = path
        self.max_connections = max_connections
        #: Connections being served now.
        self.active = 0
        #: Connections closed at once because max_connections were being served.
        self.refused = 0

    async def serve(
        self, handle_link: LinkHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise FileExistsError(f"{self.path} exists and is not a socket")
        except FileNotFoundError:
            pass
        # Bind and listen under a temporary name, then rename into place: a
        # client that sees the path can connect at once (no window between
        # bind() and listen()), and a stale socket from a previous run is
        # replaced atomically.
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is a root shell: owner only
        try:
            await sock.bind(tmp)
        finally:
            os.umask(old_umask)
        sock.listen(16)
        os.rename(tmp, self.path)
        listener = trio.SocketListener(sock)
        count = 0

        async def _serve_one(stream: trio.SocketStream) -> None:
            nonlocal count
            count += 1
            async with stream:
                if self.active >= self.max_connections:
                    self.refused += 1
                    log.warning(
                        "unix client #%d on %s closed: %d connections already served (max_connections)",
                        count,
                        self.path,
                        self.active,
                    )
                    return
                self.active += 1
                try:
                    await handle_link(_StreamLink(stream, f"unix client #{count} on {self.path}"))
                finally:
                    self.active -= 1

        try:
            task_status.started()
            await trio.serve_listeners(_serve_one, [listener])
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            with contextlib.suppress(OSError):
                os.unlink(self.path)


@final
class UnixConnectChannel:
    """Connect to a Unix socket; one link at a time, reconnecting with backoff."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def serve(
        self, handle_link: LinkHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        retry = Backoff(ABSENT_BACKOFF_MIN_S, REOPEN_INTERVAL_S)
        while True:
            try:
                stream = await trio.open_unix_socket(self.path)
            except OSError as exc:
                log.debug("connect %s: %s", self.path, exc)
                await trio.sleep(retry.next())
                continue
            retry.reset()
            async with stream:
                await handle_link(_StreamLink(stream, f"unix socket {self.path}"))
            await trio.sleep(ABSENT_BACKOFF_MIN_S)


def make_channel(transport: str, *, device: str, socket: str, max_connections: int) -> Channel:
    """The channel a config names (``max_connections``: for unix-listen)."""
    if transport == "virtio":
        return DeviceChannel(device)
    if transport == "unix-listen":
        return UnixListenChannel(socket, max_connections=max_connections)
    if transport == "unix-connect":
        return UnixConnectChannel(socket)
    raise ValueError(f"unknown transport {transport!r}")  # pragma: no cover - config validates
