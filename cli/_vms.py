"""VMs, nodes and the caller: ``vms``, ``vm``, ``ping``, ``nodes``, ``whoami``, and the VM's
power and password: ``shutdown``, ``reboot``, ``password``."""

from __future__ import annotations

import getpass
import sys
from typing import Any

import click
from click.shell_completion import CompletionItem

from limiquantix.protocol import uptime_text

from . import _exitcodes as ec
from ._fast import ADMIN, NODES, VM, Client, given
from ._output import error_line, print_json, print_table, say, short_time
from ._state import complete_vm, json_option, label_option, labels_dict, pass_client, vm_argument

__all__ = ["COMMANDS"]

#: ListVMs page size (the API's maximum).
_PAGE_SIZE = 1000


def list_vms(
    client: Client, *, node: str = "", state: str = "", labels: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every VM the token may see that matches the filters (all pages)."""
    out: list[dict[str, Any]] = []
    token = ""
    while True:
        body = {"pageSize": _PAGE_SIZE, "pageToken": token, **given(nodeId=node, state=state, labels=labels)}
        answer = client.call(VM, "ListVMs", body)
        out.extend(answer.get("vms", ()))
        token = answer.get("nextPageToken", "")
        if not token:
            return out


def _labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _pct(value: float | str | None) -> str:
    return f"{float(value or 0):.0f}"


def _seconds(value: object) -> float | None:
    """A JSON number of seconds (proto3 JSON may write a double as a string, "NaN" included);
    None for anything else."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _live(vm: dict[str, Any]) -> bool:
    """Whether the VM's figures are current: its agent connected, its node reachable (else they
    are the last ones reported, as the TUI shows "-" for them)."""
    return vm.get("agentState") == "connected" and bool(vm.get("nodeReachable"))


@click.command("vms", short_help="List VMs (filters: node, state, label).")
@click.option("--node", "-n", default="", metavar="NODE", help="only the VMs of this node")
@click.option(
    "--state",
    "-s",
    default="",
    metavar="STATE",
    help="only VMs in this state (running, off, unknown, gone) or whose agent is (connected ...)",
)
@label_option("only VMs carrying this label (repeatable: all must match)")
@json_option
@pass_client
def vms_cmd(client: Client, node: str, state: str, labels: tuple[str, ...], as_json: bool) -> None:
    """List the VMs the token may see, from the nodes' last heartbeats.

    \b
      limiquantix vms --label env=prod --state connected
      limiquantix vms --json | jq -r '.[].vmId'
    """
    vms = list_vms(client, node=node, state=state, labels=labels_dict(labels))
    if as_json:
        print_json(vms)
        return
    rows = [
        (
            v.get("vmId", ""),
            v.get("nodeId", "") + ("" if v.get("nodeReachable") else " (unreachable)"),
            v.get("state", ""),
            " ".join(x for x in (v.get("agentState", ""), v.get("agentVersion", "")) if x),
            v.get("os", ""),
            " ".join(v.get("ipAddresses", ())[:2]),
            _pct(v.get("cpuPercent")) if _live(v) else "-",
            _pct(v.get("memoryPercent")) if _live(v) else "-",
            _labels_text(v.get("labels", {})),
        )
        for v in vms
    ]
    print_table(("VM", "NODE", "STATE", "AGENT", "OS", "ADDRESSES", "CPU%", "MEM%", "LABELS"), rows)


class _VMGroup(click.Group):
    """``vm NAME`` is ``vm show NAME`` (the short form); ``vm show``/``vm remove`` name the action
    (``vm show remove`` shows a VM named ``remove``)."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "show", self.commands["show"], args
        return super().resolve_command(ctx, args)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        """``vm <TAB>``: the subcommands and, for the short form, the VM ids."""
        return [*super().shell_complete(ctx, incomplete), *map(CompletionItem, complete_vm(ctx, None, incomplete))]


@click.group("vm", cls=_VMGroup, short_help="Show one VM, or remove a gone one.")
def vm_group() -> None:
    """One VM: 'limiquantix vm NAME' (or 'vm show NAME') shows it live from its node;
    'vm remove NAME' makes the controller forget a VM that is gone (admin token).

    \b
      limiquantix vm web-1
      limiquantix vm remove old-vm
    """


@vm_group.command("show", short_help="Show one VM, live from its node (vm NAME).")
@vm_argument()
@json_option
@pass_client
def vm_cmd(client: Client, vm: str, as_json: bool) -> None:
    """Show one VM, live from its node: state, agent, OS, addresses, telemetry in brief (the
    last reported record while its node is unreachable or it is gone)."""
    answer = client.call(VM, "GetVM", {"vmId": vm})
    if as_json:
        print_json(answer)
        return
    identity = answer.get("identity", {})
    rows = [
        ("vm", answer.get("vmId", "")),
        ("name", answer.get("name", "")),
        ("node", answer.get("nodeId", "") + ("" if answer.get("nodeReachable") else " (unreachable)")),
        ("state", answer.get("state", "")),
        ("agent state", answer.get("agentState", "")),
        ("agent version", answer.get("agentVersion", "")),
        ("hostname", answer.get("hostname", "")),
        ("os", answer.get("os", "")),
        ("kernel", answer.get("kernel", "")),
        ("architecture", identity.get("architecture", "")),
        ("addresses", " ".join(answer.get("ipAddresses", ()))),
        # Not live: the figures last reported, said so (the table shows "-").
        ("cpu %", _pct(answer.get("cpuPercent")) + ("" if _live(answer) else " (last reported)")),
        ("memory %", _pct(answer.get("memoryPercent")) + ("" if _live(answer) else " (last reported)")),
        ("uptime", uptime_text(_seconds(answer.get("uptimeSeconds")))),
        ("labels", _labels_text(answer.get("labels", {}))),
        ("last seen", answer.get("lastSeen", "")),
        ("last reported", answer.get("lastReported", "")),
    ]
    if answer.get("lastDisconnectReason"):
        rows.append(("last disconnect", answer["lastDisconnectReason"]))
    print_table(("FIELD", "VALUE"), [r for r in rows if r[1]])


@click.command("ping", short_help="Ping a VM's agent.")
@vm_argument()
@json_option
@pass_client
def ping_cmd(client: Client, vm: str, as_json: bool) -> None:
    """Ping VM's agent through its node; exit 1 when the agent does not answer."""
    answer = client.call(VM, "PingAgent", {"vmId": vm})
    if as_json:
        print_json(answer)
    elif answer.get("connected"):
        say(
            f"{vm}: agent {answer.get('version', '?')} answered in {float(answer.get('latencyMs') or 0):.2f} ms "
            f"(agent up {uptime_text(_seconds(answer.get('uptimeSeconds')))})"
        )
    else:
        error_line(f"{vm}: the agent did not answer: {answer.get('error') or 'not connected'}")
    if not answer.get("connected"):
        sys.exit(ec.FAILED)


@click.command("nodes", short_help="List the hostds (nodes).")
@json_option
@pass_client
def nodes_cmd(client: Client, as_json: bool) -> None:
    """List the hostds (nodes) registered with the controller."""
    nodes = client.call(NODES, "ListNodes").get("nodes", [])
    if as_json:
        print_json(nodes)
        return
    rows = [
        (
            n.get("nodeId", ""),
            n.get("url", ""),
            "yes" if n.get("reachable") else "NO",
            n.get("vmCount", 0),
            short_time(n.get("lastHeartbeat", "")),
        )
        for n in nodes
    ]
    print_table(("NODE", "URL", "REACHABLE", "VMS", "LAST HEARTBEAT"), rows)


@click.command("whoami", short_help="Show the token's user, role and permissions.")
@json_option
@pass_client
def whoami_cmd(client: Client, as_json: bool) -> None:
    """Who the token stands for: user, role, label scope, permissions."""
    answer = client.call(ADMIN, "WhoAmI")
    if as_json:
        print_json(answer)
        return
    rows = [
        ("user", answer.get("user", "")),
        ("role", answer.get("role", "")),
        ("token", answer.get("tokenId", "")),
        ("scope", _labels_text(answer.get("labelScope", {})) or "every VM"),
        ("permissions", " ".join(answer.get("permissions", ()))),
    ]
    print_table(("FIELD", "VALUE"), rows)


def _power(client: Client, vm: str, reboot: bool, delay: int, message: str, as_json: bool) -> None:
    body = {"vmId": vm, "reboot": reboot, **given(delaySeconds=delay, message=message)}
    answer = client.call(VM, "GuestShutdown", body)
    if as_json:
        print_json(answer)
    elif answer.get("accepted"):
        say(f"{vm}: {'reboot' if reboot else 'shutdown'} accepted, at {answer.get('scheduledAt', 'once')}")
    else:
        error_line(f"{vm}: the guest did not accept the {'reboot' if reboot else 'shutdown'}")
        sys.exit(ec.FAILED)


def _power_options(func: Any) -> Any:
    func = click.option("--delay", type=click.IntRange(0, 86400), default=0, metavar="SECONDS", help="wait first")(func)
    func = click.option("--message", default="", help="wall message for logged-in users")(func)
    return json_option(func)


@click.command("shutdown", short_help="Power a VM off from inside.")
@vm_argument()
@_power_options
@pass_client
def shutdown_cmd(client: Client, vm: str, delay: int, message: str, as_json: bool) -> None:
    """Power VM off from inside (the agent runs the guest's poweroff)."""
    _power(client, vm, False, delay, message, as_json)


@click.command("reboot", short_help="Reboot a VM from inside.")
@vm_argument()
@_power_options
@pass_client
def reboot_cmd(client: Client, vm: str, delay: int, message: str, as_json: bool) -> None:
    """Reboot VM from inside (the agent runs the guest's reboot)."""
    _power(client, vm, True, delay, message, as_json)


def _refuse_password_arg(ctx: click.Context, param: click.Parameter | None, value: Any) -> None:
    if value:
        raise click.UsageError(
            "a password on the command line is refused: every user of this machine sees argv (ps); "
            "type it at the prompt, or pipe it on stdin (one line)",
            ctx=ctx,
        )


def _read_password() -> str:
    """Twice at a prompt on a terminal, else one line of stdin.

    Raises:
        click.ClickException: the two differ, or it is empty.
    """
    if sys.stdin.isatty():
        first = getpass.getpass("new password: ")
        if getpass.getpass("again: ") != first:
            raise click.ClickException("the two passwords differ: nothing was changed")
        password = first
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise click.ClickException("an empty password is refused: nothing was changed")
    return password


@click.command(
    "password", context_settings={"allow_extra_args": True}, short_help="Set a guest user's password (prompt or stdin)."
)
@vm_argument()
@click.argument("username")
@click.option("--password", "-p", hidden=True, expose_value=False, callback=_refuse_password_arg)
@click.option("--expire", is_flag=True, help="force a change at the next login")
@pass_client
def password_cmd(client: Client, vm: str, username: str, expire: bool) -> None:
    """Set USERNAME's password in VM: typed twice at a prompt, or one line on stdin
    (never an argument: ps shows argv to every user).

    \b
      limiquantix password web-1 deploy
      pass show web-1/deploy | limiquantix password web-1 deploy
    """
    # A third argument is a password typed into argv: refused (not "unexpected extra argument").
    _refuse_password_arg(click.get_current_context(), None, click.get_current_context().args)
    password = _read_password()
    client.call(VM, "ResetGuestPassword", {"vmId": vm, "username": username, "password": password, "expire": expire})
    say(f"{vm}: password of {username} set" + (" (to be changed at the next login)" if expire else ""))


@vm_group.command("remove", short_help="Forget a VM that is gone (admin token).")
@vm_argument()
@pass_client
def vm_remove_cmd(client: Client, vm: str) -> None:
    """Make the controller forget VM (admin token): one whose node no longer reports it (state
    gone) or is unreachable. Refused while a reachable node still reports it: its next heartbeat
    would list it again."""
    client.call(ADMIN, "RemoveVM", {"vmId": vm})
    say(f"{vm}: removed from the controller's inventory")


COMMANDS = (vms_cmd, vm_group, ping_cmd, nodes_cmd, whoami_cmd, shutdown_cmd, reboot_cmd, password_cmd)
