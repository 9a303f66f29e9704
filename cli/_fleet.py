"""``run``: one command over many VMs through the controller's fleet runs (FleetService),
like ``aws ssm send-command``: live per-VM progress, a summary, output per VM to files."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from limiquantix.protocol import MAX_CONCURRENCY_LIMIT, parse_max_errors

from . import _exitcodes as ec
from ._exec import ending
from ._fast import FLEET, MAX_TIMEOUT_S, ApiError, Client, given
from ._output import error_line, print_json, progress_line, say, warn
from ._state import complete_vm, json_option, label_option, labels_dict, pass_client

__all__ = ["COMMANDS", "output_name"]

#: Target statuses after which a target changes no more.
_DONE = frozenset({"success", "failed", "timed_out", "cancelled", "undeliverable", "skipped"})
#: Run statuses after which the run changes no more.
_RUN_DONE = frozenset({"success", "failed", "cancelled"})
#: What may stay in a file name made of a VM id (anything else becomes "_").
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def output_name(vm_id: str) -> str:
    """A file name for ``vm_id`` that stays in the output directory (no ``/``, no leading dot)."""
    name = _UNSAFE.sub("_", vm_id)[:200]
    return "_" + name if name.startswith(".") or not name else name


def _target_line(t: dict[str, Any]) -> str:
    """``web-2  failed  killed by signal 9  12 ms  error``: how it ended, as ``exec`` says it."""
    status = t.get("status", "")
    parts = [t.get("vmId", ""), status]
    ended = ending(t)
    if ended:
        parts.append(ended)
    if t.get("durationMs"):
        parts.append(f"{t['durationMs']} ms")
    if t.get("error"):
        parts.append(t["error"])
    return "  ".join(str(p) for p in parts)


def _write_outputs(directory: Path, t: dict[str, Any]) -> None:
    """``DIR/<vm>.stdout`` and ``.stderr`` (the controller keeps at most 64 KiB of each)."""
    base = output_name(t.get("vmId", ""))
    for stream in ("stdout", "stderr"):
        (directory / f"{base}.{stream}").write_text(t.get(stream, ""), encoding="utf-8", errors="replace")
        if t.get(f"{stream}Truncated"):
            warn(f"{t.get('vmId', '')}: {stream} was cut (the controller keeps 64 KiB per target)")


def _check_max_errors(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The controller's own rule (SSM's MaxErrors: a count or a percentage), checked before
    anything is sent."""
    if value:
        try:
            parse_max_errors(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@click.command("run", short_help="Run a script on many VMs (a fleet run).")
@label_option("target every VM carrying this label (repeatable: all must match)", server_checked=True)
@click.option(
    "--vm", "vm_ids", multiple=True, metavar="VM", help="target this VM (repeatable)", shell_complete=complete_vm
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(0, MAX_CONCURRENCY_LIMIT),
    default=0,
    help=f"targets running at once, at most {MAX_CONCURRENCY_LIMIT} (0: the controller's 50)",
)
@click.option(
    "--max-errors",
    default="",
    metavar="N|N%",
    callback=_check_max_errors,
    help="failed targets tolerated before the rest is skipped: a count (2) or a percentage of the targets "
    "(10%, at most 100%); default 0",
)
@click.option("-t", "--timeout", type=click.IntRange(0, MAX_TIMEOUT_S), default=0, help="seconds per VM (0: 60)")
@click.option("-u", "--user", default="", help="run as this guest user")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="write each VM's output to DIR/VM.stdout and DIR/VM.stderr",
)
@click.option("--interval", type=click.FloatRange(0.05, 60), default=0.5, help="seconds between progress polls")
@json_option
@click.argument("script")
@pass_client
def run_cmd(
    client: Client,
    labels: tuple[str, ...],
    vm_ids: tuple[str, ...],
    max_concurrency: int,
    max_errors: str,
    timeout: int,
    user: str,
    output_dir: Path | None,
    interval: float,
    as_json: bool,
    script: str,
) -> None:
    """Run SCRIPT (shell) on every VM matching --label and/or named by --vm, as one fleet run
    in the controller (it goes on if this command stops). A line per VM as it starts and
    ends (stderr), a summary at the end (stdout); exit 1 unless every VM succeeded. When no
    VM matched, nothing ran: one line on stderr says so, nothing on stdout (nor --json's
    run, which the controller records as a success with 0 targets), exit 1.

    \b
      limiquantix run --label role=web --max-concurrency 5 --max-errors 10% 'apt-get -qq update'
      limiquantix run --vm web-1 --vm web-2 --output-dir out/ 'journalctl -n 50'
    """
    if not labels and not vm_ids:
        raise click.UsageError("name the targets: --label KEY=VALUE and/or --vm VM")
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
    body = {
        "command": script,
        "vmIds": list(vm_ids),
        "labels": labels_dict(labels),
        **given(maxConcurrency=max_concurrency, maxErrors=max_errors, timeoutSeconds=timeout, runAsUser=user),
    }
    started = client.call(FLEET, "RunCommand", body)
    command_id = started.get("commandId", "")
    if not started.get("targetCount"):
        # The controller records such a run as a success with 0 targets (as SSM does): a
        # mistyped label must not pass for one, so neither the summary nor the JSON (whose
        # status says success) is printed; the one line says why, on stderr.
        shown = " ".join(f"--label {label}" for label in labels)
        error_line(f"no VM matched {shown}: nothing ran (run {command_id})")
        sys.exit(ec.FAILED)
    warn(f"run {command_id}: {_targets(started.get('targetCount', 0))}")
    seen: dict[str, str] = {}
    try:
        while True:
            run = client.call(FLEET, "GetCommand", {"commandId": command_id})
            for t in run.get("targets", ()):
                vm, status = t.get("vmId", ""), t.get("status", "")
                if seen.get(vm) == status:
                    continue
                seen[vm] = status
                if status in _DONE:
                    progress_line(_target_line(t))
                    if output_dir is not None:
                        _write_outputs(output_dir, t)
                elif status == "in_progress":
                    progress_line(f"{vm}  started")
            if run.get("status") in _RUN_DONE and all(s in _DONE for s in seen.values()):
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        try:
            client.call(FLEET, "CancelCommand", {"commandId": command_id})
            warn(f"interrupted: run {command_id} cancelled")
        except ApiError as exc:
            warn(f"interrupted; cancelling run {command_id} failed: {exc.message}")
        sys.exit(ec.INTERRUPTED)
    counts = run.get("counts", {})
    if as_json:
        print_json(run)
    else:
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()) if n)
        line = f"run {command_id} {run.get('status', '')}: {_targets(run.get('targetCount', 0))}"
        say(f"{line}: {summary}" if summary else line)
    if run.get("status") != "success" or any(s != "success" for s in counts if counts[s]):
        sys.exit(ec.FAILED)


COMMANDS = (run_cmd,)


def _targets(count: int) -> str:
    """``1 target``, ``3 targets``."""
    return f"{count} target{'' if count == 1 else 's'}"
