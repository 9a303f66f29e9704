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
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, final

import psutil

from limiquantix.protocol._gen import agent_pb2 as pb

__all__ = [
    "TelemetryCollector",
    "address_fingerprint",
    "collect_interfaces",
    "read_os_release",
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


def read_os_release(paths: Sequence[str] = ("/etc/os-release", "/usr/lib/os-release")) -> pb.OsInfo:
    """The guest OS as os-release(5) describes it."""
    fields: dict[str, str] = {}
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() and not key.startswith("#"):
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                    value = value[1:-1]
                fields[key.strip()] = value
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
    return frozenset(
        (nic.name, ip.address, ip.prefix_length) for nic in interfaces for ip in (*nic.ipv4, *nic.ipv6)
    )


def _ts(seconds: float, into) -> None:  # type: ignore[no-untyped-def]
    into.seconds = int(seconds)
    into.nanos = int((seconds - int(seconds)) * 1e9)


def boot_time() -> float:
    return psutil.boot_time()


def system_uptime() -> float:
    return max(0.0, time.time() - psutil.boot_time())


@final
class TelemetryCollector:
    """Takes samples; CPU % comes from the delta of CPU times since the last one."""

    def __init__(self, interface_exclude: Iterable[str] = ()) -> None:
        self.interface_exclude = tuple(interface_exclude)
        self._last_total: psutil._common.scputimes | None = None  # type: ignore[name-defined]
        self._last_per_cpu: list | None = None  # type: ignore[type-arg]
        # Prime the baseline so the first report covers a real interval.
        self._cpu_percent()

    @staticmethod
    def _busy_fraction(old, new) -> float:  # type: ignore[no-untyped-def]
        old_all, new_all = sum(old), sum(new)
        # iowait and idle are not busy; guest/guest_nice are already in user/nice.
        old_idle = old.idle + getattr(old, "iowait", 0.0)
        new_idle = new.idle + getattr(new, "iowait", 0.0)
        total = new_all - old_all
        if total <= 0:
            return 0.0
        busy = total - (new_idle - old_idle)
        return min(100.0, max(0.0, 100.0 * busy / total))

    def _cpu_percent(self) -> tuple[float, list[float]]:
        total = psutil.cpu_times()
        per_cpu = psutil.cpu_times(percpu=True)
        pct = 0.0 if self._last_total is None else self._busy_fraction(self._last_total, total)
        per: list[float] = []
        if self._last_per_cpu is not None and len(self._last_per_cpu) == len(per_cpu):
            per = [round(self._busy_fraction(o, n), 2) for o, n in zip(self._last_per_cpu, per_cpu)]
        self._last_total, self._last_per_cpu = total, per_cpu
        return round(pct, 2), per

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
            _ts(u.started, user.started)
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
        _ts(time.time(), report.collected_at)
        return report
