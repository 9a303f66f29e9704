"""Caps on what a guest reports (identity, telemetry, addresses): what hostd keeps and forwards.

The guest is untrusted: its root can send a 1 MiB hostname, 100 000 interfaces
or 10 000 addresses on one interface, each within the frame limit. Kept whole,
that grows hostd's memory for as long as the VM is known, one GetVM answer to
tens of megabytes, and a node's heartbeat beyond what the controller accepts
(which then marks every VM of the node unreachable). hostd therefore applies
:func:`cap_identity`, :func:`cap_telemetry` and :func:`cap_interfaces` to what it
receives and keeps only the capped copy; a message that was cut carries
``truncated = true``. The controller cuts a heartbeat's strings with the same
:func:`cut` and bounds (defence in depth: a heartbeat comes from another machine).

Order of the cuts: every list to its count, every string to its length, then,
while the whole message is over its byte budget, entries from the end of its
largest list (a report keeps its first interfaces whole rather than every
interface half).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, TypeVar, final

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ._gen import agent_pb2 as pb
from .limits import MAX_TEXT_BYTES, clip_utf8

__all__ = [
    "ADDRESS_BYTES",
    "HEARTBEAT_ADDRESSES",
    "MAX_ADDRESSES",
    "MAX_ADDRESSES_PER_INTERFACE",
    "MAX_CPUS",
    "MAX_ENTRIES",
    "MAX_INTERFACES",
    "MESSAGE_BYTES",
    "NAME_BYTES",
    "TEXT_BYTES",
    "Cuts",
    "brief_list",
    "cap_identity",
    "cap_interfaces",
    "cap_message",
    "cap_telemetry",
    "cut",
]

#: A name, in UTF-8 bytes: hostname (a DNS name is at most 253), interface, OS
#: fields, kernel release, user, mount point, capability. 255 is the common
#: limit of names in file systems and DNS; longer is never a real name.
NAME_BYTES: Final = 255
#: Free text (``uname -v``, a shutdown message, a stop reason): the bound of a
#: request's free text too (protocol.limits), room for a short paragraph.
TEXT_BYTES: Final = MAX_TEXT_BYTES
#: One address as text: INET6_ADDRSTRLEN is 46, plus room for a ``%zone``.
ADDRESS_BYTES: Final = 64
#: Interfaces per identity, report or ip_changed: a busy container host has a
#: few hundred veths; past that the list says nothing an operator reads.
MAX_INTERFACES: Final = 256
#: Addresses per interface, IPv4 and IPv6 together (IPv4 first).
MAX_ADDRESSES_PER_INTERFACE: Final = 64
#: Addresses in one identity, report or address set, every interface together
#: (16 on each of 64 interfaces): an operator reads a few; and capping visits
#: each address kept, so this also bounds the work one message costs hostd.
MAX_ADDRESSES: Final = 1024
#: CPUs in ``per_cpu_percent``: more vCPUs than a guest is given in practice,
#: and at 8 bytes each still a small part of a report's budget.
MAX_CPUS: Final = 1024
#: Entries of any other list (capabilities, filesystems, logged-in users).
MAX_ENTRIES: Final = 256
#: One identity, one telemetry report, one address set, serialized. Per VM hostd
#: keeps one of each, so a VM costs at most a few of these whatever it sends;
#: a normal report is 1-4 KiB.
MESSAGE_BYTES: Final = 64 * 1024
#: Addresses of a VM in a heartbeat (the fleet list shows the first; GetVM has all).
HEARTBEAT_ADDRESSES: Final = 64

_PKG: Final = pb.DESCRIPTOR.package
#: Strings that are free text or addresses rather than names (everything else: NAME_BYTES).
_STRING_CAPS: Final[dict[str, int]] = {
    f"{_PKG}.AgentIdentity.kernel_version": TEXT_BYTES,
    f"{_PKG}.ShutdownStartedEvent.message": TEXT_BYTES,
    f"{_PKG}.AgentStoppingEvent.reason": TEXT_BYTES,
    f"{_PKG}.IpAddress.address": ADDRESS_BYTES,
}
#: Lists with a count of their own (everything else: MAX_ENTRIES).
_LIST_CAPS: Final[dict[str, int]] = {
    f"{_PKG}.AgentIdentity.interfaces": MAX_INTERFACES,
    f"{_PKG}.TelemetryReport.interfaces": MAX_INTERFACES,
    f"{_PKG}.IpChangedEvent.interfaces": MAX_INTERFACES,
    f"{_PKG}.NetworkInterface.ipv4": MAX_ADDRESSES_PER_INTERFACE,
    f"{_PKG}.NetworkInterface.ipv6": MAX_ADDRESSES_PER_INTERFACE,
    f"{_PKG}.TelemetryReport.per_cpu_percent": MAX_CPUS,
}
_ADDRESS_LISTS: Final = frozenset({f"{_PKG}.NetworkInterface.ipv4", f"{_PKG}.NetworkInterface.ipv6"})

M = TypeVar("M", bound=Message)


def cut(value: str, limit: int = NAME_BYTES) -> str:
    """``value`` cut to at most ``limit`` bytes of UTF-8 (on a character boundary)."""
    return clip_utf8(value, limit)


def brief_list(items: Sequence[str], limit: int = 8) -> str:
    """``a, b, c … (+97 more)``: a list for one log line (items already capped)."""
    shown = ", ".join(items[:limit]) or "none"
    return shown + (f" … (+{len(items) - limit} more)" if len(items) > limit else "")


@final
@dataclass(slots=True)
class Cuts:
    """What one capping cut: field path → (largest size received, size kept).

    Sizes are UTF-8 bytes for strings, entries for lists; a path names the field
    at every index (``interfaces.ipv4``: the largest list seen, the fewest kept).
    """

    fields: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.fields)

    def note(self, path: str, received: int, kept: int) -> None:
        old = self.fields.get(path)
        self.fields[path] = (max(received, old[0]) if old else received, min(kept, old[1]) if old else kept)

    def under(self, prefix: str) -> bool:
        """Whether something at or below the field path ``prefix`` was cut."""
        return any(path == prefix or path.startswith(prefix + ".") for path in self.fields)

    def summary(self, limit: int = 8) -> str:
        """One line for the log: ``hostname 1048576→255, interfaces 100000→256``."""
        return brief_list([f"{path} {got}→{kept}" for path, (got, kept) in self.fields.items()], limit)


class _Rule(NamedTuple):
    """How one field is capped (worked out once per field: descriptor lookups are slow)."""

    name: str
    repeated: bool
    message: bool
    string: bool
    max_items: int
    """Entries kept (lists). Not ``count``: that would shadow the tuple's method."""
    max_bytes: int
    """UTF-8 bytes kept (strings)."""
    address: bool
    """A list of addresses: IPv4 and IPv6 share the interface's count and the message's total."""


@functools.cache
def _rule(fd: FieldDescriptor) -> _Rule:
    full = fd.full_name
    return _Rule(
        name=fd.name,
        repeated=fd.is_repeated,
        message=fd.message_type is not None,
        string=fd.type == FieldDescriptor.TYPE_STRING,
        max_items=_LIST_CAPS.get(full, MAX_ENTRIES),
        max_bytes=_STRING_CAPS.get(full, NAME_BYTES),
        address=full in _ADDRESS_LISTS,
    )


@final
class _Copy:
    """One capping's running state: what was cut, and how many addresses may still be kept."""

    __slots__ = ("addresses_left", "cuts")

    def __init__(self) -> None:
        self.cuts = Cuts()
        self.addresses_left = MAX_ADDRESSES


def _copy_capped(src: Message, dst: Message, path: str, state: _Copy) -> None:
    """Copy ``src`` into the empty ``dst``: lists to their counts, strings to their lengths.

    Only what is kept is read and copied (the first 256 of 100 000 interfaces,
    not the rest), so capping costs what the result costs, not what the guest sent.
    """
    cuts = state.cuts
    for fd, value in src.ListFields():
        rule = _rule(fd)
        name = path + rule.name
        if rule.repeated:
            limit = rule.max_items
            if rule.address:
                # IPv4 first (listed first), then IPv6, within the interface's and the message's counts.
                if rule.name == "ipv6":
                    # dst is an interface here; the Message base class declares no fields.
                    limit = MAX_ADDRESSES_PER_INTERFACE - len(dst.ipv4)  # type: ignore[attr-defined]
                limit = min(limit, state.addresses_left)
                state.addresses_left -= min(limit, len(value))
            if len(value) > limit:
                cuts.note(name, len(value), limit)
            out = getattr(dst, rule.name)
            if rule.message:
                for item in value[:limit]:
                    _copy_capped(item, out.add(), name + ".", state)
            elif rule.string:
                out.extend(_cut_noted(item, rule.max_bytes, name, cuts) for item in value[:limit])
            else:
                out.extend(value[:limit])
        elif rule.message:
            sub = getattr(dst, rule.name)
            sub.SetInParent()  # a set sub-message stays set, even empty
            _copy_capped(value, sub, name + ".", state)
        elif rule.string:
            setattr(dst, rule.name, _cut_noted(value, rule.max_bytes, name, cuts))
        else:
            setattr(dst, rule.name, value)


def _cut_noted(value: str, max_bytes: int, path: str, cuts: Cuts) -> str:
    """:func:`cut`, noting it in ``cuts`` when something was cut."""
    kept = clip_utf8(value, max_bytes)
    if len(kept) != len(value):
        cuts.note(path, len(value.encode("utf-8", "surrogatepass")), len(kept.encode("utf-8", "surrogatepass")))
    return kept


def _entry_bytes(item: object) -> int:
    """Serialized bytes of one list entry, tag and length included (close enough to budget by)."""
    if isinstance(item, Message):
        n = item.ByteSize()
    elif isinstance(item, str):
        n = len(item.encode("utf-8", "surrogatepass"))
    else:
        return 8  # a packed double (per_cpu_percent): no tag of its own
    return n + 2 + (n.bit_length() + 6) // 7


def _shrink(msg: Message, budget: int, cuts: Cuts) -> bool:
    """Drop entries from the ends of ``msg``'s lists until it fits ``budget`` bytes.

    The largest list is cut first, only down to the size of the next largest,
    then both, and so on: a report over budget keeps some of every list (its
    first interfaces and its first filesystems), not all of one and none of another.
    Returns whether anything was dropped.
    """
    size = msg.ByteSize()
    shrunk = False
    while size > budget:
        lists = {fd.name: value for fd, value in msg.ListFields() if _rule(fd).repeated and len(value)}
        if not lists:  # pragma: no cover - every string is capped: the rest is far below any budget
            return shrunk
        sizes = {name: [_entry_bytes(item) for item in value] for name, value in lists.items()}
        keep = {name: len(value) for name, value in lists.items()}
        totals = {name: sum(entry) for name, entry in sizes.items()}
        excess = size - budget
        while excess > 0 and any(keep.values()):
            largest, *rest = sorted((n for n in keep if keep[n]), key=totals.__getitem__, reverse=True)
            floor = totals[rest[0]] if rest else 0
            while keep[largest] and excess > 0:
                keep[largest] -= 1
                dropped = sizes[largest][keep[largest]]
                totals[largest] -= dropped
                excess -= dropped
                if totals[largest] < floor:
                    break
        for name, value in lists.items():
            if keep[name] < len(value):
                cuts.note(name, len(value), keep[name])
                del value[keep[name] :]
                shrunk = True
        size = msg.ByteSize()
    return shrunk


def cap_message(msg: M, budget: int = MESSAGE_BYTES) -> tuple[M, Cuts]:
    """A capped copy of ``msg`` (never ``msg`` itself, which is left as it is) and what was cut.

    The copy has an arena of its own: keeping it does not keep the original's
    memory alive (a sub-message would keep its whole envelope). ``msg`` has no
    map fields (none of the guest's messages has one).
    """
    out = type(msg)()
    state = _Copy()
    _copy_capped(msg, out, "", state)
    cuts = state.cuts
    if _shrink(out, budget, cuts):
        # Rebuilt from its bytes: the entries deleted to fit would stay in the
        # copy's arena until it is freed.
        fresh = type(msg)()
        fresh.ParseFromString(out.SerializeToString())
        out = fresh
    if cuts and "truncated" in out.DESCRIPTOR.fields_by_name:
        out.truncated = True  # type: ignore[attr-defined]
    return out, cuts


def cap_identity(identity: pb.AgentIdentity) -> tuple[pb.AgentIdentity, Cuts]:
    """The identity hostd keeps and serves (``truncated`` when cut)."""
    return cap_message(identity)


def cap_telemetry(report: pb.TelemetryReport) -> tuple[pb.TelemetryReport, Cuts]:
    """The telemetry report hostd keeps and serves (``truncated`` when cut)."""
    return cap_message(report)


def cap_interfaces(interfaces: Iterable[pb.NetworkInterface]) -> tuple[list[pb.NetworkInterface], Cuts]:
    """An address set (an ip_changed event's interfaces), capped as one message."""
    capped, cuts = cap_message(pb.IpChangedEvent(interfaces=interfaces))
    return list(capped.interfaces), cuts
