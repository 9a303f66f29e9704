"""Small, pure formatting helpers shared by the screens (and easy to test)."""

from __future__ import annotations

import datetime
import functools
import operator
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp
from rich.text import Text

from limiquantix.protocol import describe_exit, safe_text, uptime_text
from limiquantix.protocol._gen import fleet_pb2 as fleet_pb
from limiquantix.protocol._gen import vm_service_pb2 as vm_pb

__all__ = [
    "guest",
    "STATE_LABELS",
    "STATE_STYLES",
    "age",
    "age_s",
    "bar",
    "effective_state",
    "exit_cell",
    "exit_summary",
    "human_bytes",
    "percent",
    "primary_ip",
    "short_os",
    "spark",
    "state_counts",
    "state_of",
    "state_text",
    "uptime",
    "vm_matches",
]


def guest(value: object, style: str = "", *, multiline: bool = False) -> Text:
    """Text from the API (a guest's names, output, errors) as shown: never markup
    (a ``Text``, not a ``str``), controls and bidi overrides visible (``\\x1b``),
    so a guest cannot style, retitle, clear or otherwise drive the terminal."""
    return Text(safe_text(str(value), multiline=multiline), style=style)


#: Agent state → colour, as hostd names the states; ``off`` and ``gone``: VMs the controller
#: has seen that are no longer reported (shown with their last-seen time). A state not
#: listed here is shown as it arrives, uncoloured.
STATE_STYLES: Final = {
    "connected": "bold green",
    "waiting_for_agent": "yellow",
    "connecting": "cyan",
    "unresponsive": "bold red",
    "no_socket": "red",
    "disabled": "dim",
    "unreachable": "magenta",
    "off": "dim",
    "gone": "dim italic",
}


#: Shorter names for the states where a column is narrow (the API's names elsewhere).
STATE_LABELS: Final = {"waiting_for_agent": "waiting", "no_socket": "no socket"}


def state_text(vm: vm_pb.VM) -> Text:
    """The agent's state, coloured; ``unreachable`` when its node stopped heartbeating.
    One shared Text per known state (a fleet of 5,000 asks at every poll): not to be changed."""
    state = effective_state(vm)
    text = _STATE_TEXTS.get(state)
    if text is None:
        # A state the TUI does not know is shown as it arrives, controls escaped.
        text = Text(safe_text(STATE_LABELS.get(state, state)), style=STATE_STYLES.get(state, ""))
        if state in STATE_STYLES:  # the states the TUI knows; anything else is not kept
            _STATE_TEXTS[state] = text
    return text


_STATE_TEXTS: Final[dict[str, Text]] = {}


@functools.lru_cache(maxsize=4096)  # a fleet has few OS names, asked for at every poll
def short_os(name: str, width: int) -> str:
    """``Debian GNU/Linux 12 (bookworm)`` → ``Debian 12``; cut to ``width`` with an ellipsis."""
    short = re.sub(r"\s*\(.*?\)", "", name).replace("Red Hat Enterprise Linux", "RHEL")
    words = short.split()
    short = " ".join(w for i, w in enumerate(words) if not (i and w in ("GNU/Linux", "Linux", "LTS"))) or "-"
    return short if len(short) <= width else short[: width - 1] + "…"


def effective_state(vm: vm_pb.VM) -> str:
    """What the fleet shows for ``vm``: ``off``/``gone`` (the controller's ``state``: a VM its
    node reports powered off, or no longer reports) before anything the agent said; then
    ``unreachable`` when its node stopped heartbeating; then the agent's state."""
    return state_of(vm.state, vm.node_reachable, vm.agent_state)


def state_of(state: str, node_reachable: bool, agent_state: str) -> str:
    """:func:`effective_state` from the three fields it reads (see :func:`state_counts`)."""
    if state in ("off", "gone"):
        return state
    return "unreachable" if not node_reachable else (agent_state or "unknown")


_STATE_FIELDS: Final = operator.attrgetter("state", "node_reachable", "agent_state")


def state_counts(vms: Iterable[vm_pb.VM]) -> Counter[str]:
    """How many of ``vms`` are in each :func:`effective_state`. The three fields are read
    in C and counted, then each distinct combination is named: a fleet of 5,000 asks at
    every poll, and a Python call per VM was most of the cost."""
    counts: Counter[str] = Counter()
    for fields, count in Counter(map(_STATE_FIELDS, vms)).items():
        counts[state_of(*fields)] += count
    return counts


def primary_ip(vm: vm_pb.VM) -> str:
    """The first IPv4 address, else the first address, else ``-``."""
    addresses = vm.ip_addresses
    for address in addresses:
        if ":" not in address:
            return address
    return addresses[0] if addresses else "-"


def percent(value: float | None, *, connected: bool = True, digits: int = 1) -> str:
    if not connected or value is None:
        return "-"
    return f"{value:5.1f}%" if digits else f"{value:3.0f}%"


def uptime(seconds: float | None) -> str:
    """``36d02h``, ``5h07m``, ``4m09s``: a table column's uptime (the VM screen shows
    :func:`~limiquantix.protocol.uptime_text`'s full form, as the command line does); ``-``
    for none, and for a value no uptime has (a guest reports the figure: negative, NaN or
    infinite)."""
    return uptime_text(seconds, compact=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def bar(fraction: float, width: int = 20) -> Text:
    """A usage bar, green / yellow / red by how full."""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    style = "green" if fraction < 0.75 else "yellow" if fraction < 0.9 else "red"
    out = Text("█" * filled, style=style)
    out.append("░" * (width - filled), style="dim")
    return out


def age(timestamp: Timestamp | None, now: datetime.datetime | None = None) -> str:
    """``12 s ago`` for a Timestamp from the API (``-`` when absent or unset)."""
    if timestamp is None or not (timestamp.seconds or timestamp.nanos):
        return "-"
    try:
        when = timestamp.ToDatetime(datetime.timezone.utc)
    except (ValueError, OverflowError):  # beyond datetime's years 1-9999
        return "-"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    seconds = (now - when).total_seconds()
    if seconds < 7200:
        return f"{age_s(seconds)} ago"
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def age_s(seconds: float) -> str:
    """A duration the way ages are shown: ``12 s``, ``5 min``, ``3 h``."""
    whole = max(0, int(seconds))
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{whole // 60} min"
    return f"{whole // 3600} h"


def vm_matches(vm: vm_pb.VM, needle: str) -> bool:
    """Whether the filter text appears in the VM's id, name, node, state, OS, addresses or labels."""
    if not needle:
        return True
    needle = needle.lower()
    fields = [
        vm.vm_id,
        vm.name,
        vm.node_id,
        effective_state(vm),
        vm.os,
        vm.agent_version,
        vm.hostname,
        *vm.ip_addresses,
        *(f"{k}={v}" for k, v in vm.labels.items()),
    ]
    return any(needle in f.lower() for f in fields)


_TICKS: Final = " ▁▂▃▄▅▆▇█"


def spark(values: Sequence[float], width: int, *, top: float | None = None) -> str:
    """The last ``width`` values as a one-line sparkline, scaled 0..``top``
    (default: their maximum), so that an idle 2 % reads low, not full."""
    shown = list(values)[-width:]
    if not shown:
        return ""
    high = top if top is not None else max(shown)
    if high <= 0:
        return _TICKS[1] * len(shown)
    last = len(_TICKS) - 1
    return "".join(_TICKS[max(1, min(last, round(v / high * last)))] for v in shown)


def exit_summary(result: vm_pb.ExecuteScriptResponse | fleet_pb.FleetTarget) -> str:
    """How a command ended, from an ``ExecuteScriptResponse`` or a fleet run's target (the
    same fields: exit code, exit reason, signal, duration).

    ``exit_code`` is present only when the command exited: a timeout, a cancel or a
    signal says so instead of a made-up "exit code 0" (a script checking for 0 must
    not count a timeout as success).
    """
    timed_out = isinstance(result, vm_pb.ExecuteScriptResponse) and result.timed_out
    return describe_exit(
        result.exit_code if result.HasField("exit_code") else None,
        result.exit_reason or ("timed_out" if timed_out else ""),
        result.signal,
        result.duration_ms,
    )


def exit_cell(target: fleet_pb.FleetTarget) -> str:
    """A fleet target's exit in a narrow column: its code, ``SIG9`` when a signal ended it
    (killed, or sent on a timeout or cancel), else nothing."""
    if target.HasField("exit_code"):
        return str(target.exit_code)
    return f"SIG{target.signal}" if target.signal else ""
