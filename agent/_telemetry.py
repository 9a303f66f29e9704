"""What the agent knows about its guest: identity, telemetry samples, addresses.

Collection is synchronous psutil work (a few milliseconds); the daemon runs it
in a worker thread so requests keep flowing while a sample is taken.
"""

from __future__ import annotations

import fnmatch
import os
import platform
import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final, final

import psutil

from limiquantix.protocol import set_timestamp
from limiquantix.protocol._gen import agent_pb2 as pb

__all__ = [
    "MIN_CPU_INTERVAL_S",
    "PSEUDO_FSTYPES",
    "TelemetryCollector",
    "address_fingerprint",
    "boot_time",
    "collect_interfaces",
    "excluded",
    "read_machine_id",
    "read_os_release",
    "system_uptime",
]

#: Filesystem types that hold no user data (pseudo, in-memory, read-only images).
PSEUDO_FSTYPES: Final = frozenset(
    {
        "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
        "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nsfs", "overlay", "proc",
        "pstore", "ramfs", "rpc_pipefs", "securityfs", "squashfs", "sysfs", "tmpfs", "tracefs",
        "iso9660", "nfsd", "fuse.lxcfs", "fuse.snapfuse", "zram",
    }
)  # fmt: skip


#: Below this many seconds since the previous sample, CPU % is not recomputed:
#: the kernel counts CPU time in ticks (10 ms), so a delta over a few ticks is
#: noise, and one over none would read as an idle machine.
MIN_CPU_INTERVAL_S: Final = 0.25


def _os_release_value(raw: str) -> str:
    """One os-release value: bare, or quoted the way a shell quotes it.

    Inside double quotes a backslash escapes ``"``, ``\\``, ``$`` and a
    backquote (os-release(5) follows the shell); single quotes escape nothing.
    An unterminated quote keeps what follows it.
    """
    raw = raw.strip()
    if not raw or raw[0] not in "\"'":
        return raw
    quote, out, i = raw[0], [], 1
    while i < len(raw):
        c = raw[i]
        if c == quote:
            break
        if c == "\\" and quote == '"' and i + 1 < len(raw) and raw[i + 1] in '"\\$`':
            c = raw[i + 1]
            i += 1
        out.append(c)
        i += 1
    return "".join(out)


def read_os_release(paths: Sequence[str] = ("/etc/os-release", "/usr/lib/os-release")) -> pb.OsInfo:
    """The guest OS as os-release(5) describes it.

    The first readable file of ``paths`` is used (``/etc`` overrides ``/usr/lib``).
    Values may be bare, or quoted the way a shell quotes them.
    """
    fields: dict[str, str] = {}
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            key = key.strip()
            if sep and key:
                fields[key] = _os_release_value(value)
        break
    return pb.OsInfo(
        name=fields.get("NAME", platform.system()),
        version=fields.get("VERSION", ""),
        id=fields.get("ID", ""),
        version_id=fields.get("VERSION_ID", ""),
        pretty_name=fields.get("PRETTY_NAME", ""),
        family=sys.platform,
    )


def read_machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            return Path(path).read_text().strip()
        except OSError:
            continue
    return ""


def _prefix_len(netmask: str | None) -> int:
    if not netmask:
        return 0
    try:
        if ":" in netmask:
            packed = socket.inet_pton(socket.AF_INET6, netmask)
        else:
            packed = socket.inet_pton(socket.AF_INET, netmask)
    except OSError:
        return 0
    return sum(bin(b).count("1") for b in packed)


def excluded(name: str, patterns: Iterable[str]) -> bool:
    """Whether interface ``name`` matches one of the shell-style ``patterns`` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def collect_interfaces(exclude: Iterable[str] = (), *, counters: bool = True) -> list[pb.NetworkInterface]:
    """Every network interface not excluded, sorted by name."""
    exclude = tuple(exclude)
    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    io = psutil.net_io_counters(pernic=True) if counters else {}
    out: list[pb.NetworkInterface] = []
    for name in sorted(addrs):
        if excluded(name, exclude):
            continue
        nic = pb.NetworkInterface(name=name)
        for a in addrs[name]:
            if a.family == socket.AF_INET:
                nic.ipv4.add(address=a.address, prefix_length=_prefix_len(a.netmask))
            elif a.family == socket.AF_INET6:
                nic.ipv6.add(address=a.address.split("%", 1)[0], prefix_length=_prefix_len(a.netmask), ipv6=True)
            elif a.family == psutil.AF_LINK:
                nic.mac = a.address
        st = stats.get(name)
        if st is not None:
            nic.up = st.isup
            nic.mtu = st.mtu
            nic.speed_mbps = max(st.speed, 0)
        c = io.get(name)
        if c is not None:
            nic.rx_bytes, nic.tx_bytes = c.bytes_recv, c.bytes_sent
            nic.rx_packets, nic.tx_packets = c.packets_recv, c.packets_sent
            nic.rx_errors, nic.tx_errors = c.errin, c.errout
        out.append(nic)
    return out


def address_fingerprint(interfaces: Iterable[pb.NetworkInterface]) -> frozenset[tuple[str, str, int]]:
    """What an ip_changed event compares: (interface, address, prefix) triples."""
    return frozenset((nic.name, ip.address, ip.prefix_length) for nic in interfaces for ip in (*nic.ipv4, *nic.ipv6))


def boot_time() -> float:
    return psutil.boot_time()


def system_uptime() -> float:
    """Seconds since boot, suspend included (CLOCK_BOOTTIME: one vDSO call).

    psutil.boot_time() parses /proc/stat on every call (tens of µs): too slow
    for every ping.
    """
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@final
class TelemetryCollector:
    """Takes samples; CPU % comes from the delta of CPU times since the last one.

    Thread-safe: the periodic loop and ``get_telemetry`` requests sample from
    worker threads, possibly at once, and share one CPU baseline.
    """

    def __init__(self, interface_exclude: Iterable[str] = ()) -> None:
        self.interface_exclude = tuple(interface_exclude)
        self._lock = threading.Lock()
        self._last_total: Any = None  # psutil's platform-specific scputimes
        self._last_per_cpu: list[Any] | None = None
        self._last_at = 0.0
        self._last_result: tuple[float, list[float]] | None = None
        # Prime the baseline so the first report covers a real interval.
        self._cpu_percent()

    @staticmethod
    def _cpu_seconds(times: Any) -> tuple[float, float]:
        """(total, idle) CPU seconds of one psutil ``scputimes``."""
        total = sum(times)
        # On Linux guest and guest_nice are already counted in user and nice
        # (/proc/stat): counting them again overstates the total (psutil.cpu_percent
        # subtracts them too).
        total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
        # iowait is idle time spent waiting: not busy.
        return total, times.idle + getattr(times, "iowait", 0.0)

    @classmethod
    def _busy_fraction(cls, old: Any, new: Any) -> float:
        """Busy CPU % between two ``scputimes`` samples, within 0..100."""
        old_total, old_idle = cls._cpu_seconds(old)
        new_total, new_idle = cls._cpu_seconds(new)
        total = new_total - old_total
        if total <= 0:
            return 0.0
        busy = total - (new_idle - old_idle)
        return min(100.0, max(0.0, 100.0 * busy / total))

    def _cpu_percent(self) -> tuple[float, list[float]]:
        with self._lock:
            now = time.monotonic()
            if self._last_result is not None and now - self._last_at < MIN_CPU_INTERVAL_S:
                # Too soon for a meaningful delta: repeat the last figure and keep
                # the baseline, so the next sample still spans a real interval.
                return self._last_result[0], list(self._last_result[1])
            total = psutil.cpu_times()
            per_cpu = psutil.cpu_times(percpu=True)
            if self._last_total is None:
                result: tuple[float, list[float]] = (0.0, [])
            else:
                pct = round(self._busy_fraction(self._last_total, total), 2)
                per: list[float] = []
                if self._last_per_cpu is not None and len(self._last_per_cpu) == len(per_cpu):
                    per = [
                        round(self._busy_fraction(o, n), 2) for o, n in zip(self._last_per_cpu, per_cpu, strict=False)
                    ]
                result = (pct, per)
                self._last_result = result
            self._last_total, self._last_per_cpu, self._last_at = total, per_cpu, now
            return result[0], list(result[1])

    @staticmethod
    def filesystems() -> list[pb.FilesystemUsage]:
        out: list[pb.FilesystemUsage] = []
        seen: set[str] = set()
        for part in psutil.disk_partitions(all=False):
            if part.fstype in PSEUDO_FSTYPES or part.mountpoint in seen:
                continue
            seen.add(part.mountpoint)
            try:
                usage = psutil.disk_usage(part.mountpoint)
            except OSError:
                continue
            out.append(
                pb.FilesystemUsage(
                    mountpoint=part.mountpoint,
                    device=part.device,
                    fstype=part.fstype,
                    total_bytes=usage.total,
                    used_bytes=usage.used,
                    free_bytes=usage.free,
                    percent=usage.percent,
                )
            )
        return out

    @staticmethod
    def users() -> list[pb.LoggedInUser]:
        out = []
        for u in psutil.users():
            user = pb.LoggedInUser(name=u.name, terminal=u.terminal or "", host=u.host or "")
            set_timestamp(user.started, u.started)
            out.append(user)
        return out

    def sample(self) -> pb.TelemetryReport:
        """One report (blocking; call from a thread)."""
        cpu, per_cpu = self._cpu_percent()
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
        load1, load5, load15 = os.getloadavg()
        report = pb.TelemetryReport(
            cpu_percent=cpu,
            cpu_count=psutil.cpu_count() or 0,
            per_cpu_percent=per_cpu,
            memory=pb.MemoryUsage(
                total_bytes=vm.total, used_bytes=vm.total - vm.available, available_bytes=vm.available,
                percent=vm.percent,
            ),
            swap=pb.SwapUsage(total_bytes=sw.total, used_bytes=sw.used, free_bytes=sw.free),
            filesystems=self.filesystems(),
            interfaces=collect_interfaces(self.interface_exclude),
            load1=load1,
            load5=load5,
            load15=load15,
            process_count=len(psutil.pids()),
            uptime_seconds=round(system_uptime(), 3),
            users=self.users(),
        )  # fmt: skip
        set_timestamp(report.collected_at, time.time())
        return report
