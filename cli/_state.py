"""What every click command shares: the global options, the client made from them on first
use (so ``--help`` and ``completion`` need no token), option helpers, and the one place
where failures become an error line and an exit code."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from limiquantix.protocol import ConfigError, check_labels

from . import _exitcodes as ec
from ._fast import REQUEST_TIMEOUT_HINT, ApiError, Client, Opt, parse_env_pair
from ._output import error_line

__all__ = [
    "State",
    "click_options",
    "complete_vm",
    "json_option",
    "label_option",
    "labels_dict",
    "pass_client",
    "vm_argument",
]

#: How long a shell's TAB may wait for the controller's VM list: a completion that hangs the
#: prompt is worse than none.
COMPLETION_TIMEOUT_S = 2.0

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """``ctx.obj``: the global options, and the client once a command needs it."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self._client: Client | None = None

    def client(self) -> Client:
        """Raises: ConfigError: see :meth:`Client.from_options`."""
        if self._client is None:
            self._client = Client.from_options(**self.options)
        return self._client


def pass_client(func: F) -> F:
    """Call ``func(client, ...)``; a configuration or API failure is one line on stderr and
    the exit code of :mod:`._exitcodes` (not a traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = click.get_current_context().find_object(State)
        assert state is not None  # the group always makes one
        try:
            return func(state.client(), *args, **kwargs)
        except ConfigError as exc:
            error_line(str(exc))
            raise SystemExit(ec.CONFIG) from None
        except ApiError as exc:
            message = exc.message
            if exc.timed_out:
                message += f" {REQUEST_TIMEOUT_HINT}"
            error_line(message, code=exc.code)
            raise SystemExit(ec.for_code(exc.code)) from None

    return wrapper  # type: ignore[return-value]


def click_options(options: tuple[Opt, ...]) -> Callable[[F], F]:
    """Click options from one of :mod:`._fast`'s tables."""

    def decorate(func: F) -> F:
        for opt in reversed(options):
            func = click.option(
                *opt.names,
                opt.dest,
                is_flag=not opt.value,
                multiple=opt.multiple,
                help=opt.help,
                metavar=opt.metavar or None,
                default=None if opt.value and not opt.multiple else (() if opt.multiple else False),
            )(func)
        return func

    return decorate


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="print the answer as JSON (for scripts)")(func)


def _label_pairs(values: tuple[str, ...]) -> None:
    """Raises: click.BadParameter: a value that is not KEY=VALUE."""
    for value in values:
        try:
            parse_env_pair(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE") from None


def _check_labels(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    _label_pairs(values)
    return values


def _check_server_labels(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """KEY=VALUE pairs the controller accepts as labels (its own rules: a usage error here,
    not a request it refuses)."""
    _label_pairs(values)
    try:
        check_labels(labels_dict(values))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return values


def label_option(help_text: str, *, server_checked: bool = False) -> Callable[[F], F]:
    """``--label KEY=VALUE`` (repeatable); ``server_checked``: the controller refuses labels
    outside its rules for this command (a run's selector, a token's scope), so they are
    checked here first. A filter (``vms --label``) only matches: any pair is fine."""
    return click.option(
        "--label",
        "-l",
        "labels",
        multiple=True,
        metavar="KEY=VALUE",
        callback=_check_server_labels if server_checked else _check_labels,
        help=help_text,
    )


def labels_dict(values: tuple[str, ...]) -> dict[str, str]:
    return dict(parse_env_pair(v) for v in values)


def complete_vm(ctx: click.Context, param: click.Parameter | None, incomplete: str) -> list[str]:
    """The VM ids starting with ``incomplete``, for shell completion (ListVMs with the command
    line's global options, the environment and the config file; nothing at all on any failure,
    since a completion must never print an error into the operator's prompt)."""
    root = ctx.find_root()
    options = {k: v for k, v in root.params.items() if v not in (None, False)}
    try:
        client = Client.from_options(**options)
        from ._fast import VM

        answer = client.call(VM, "ListVMs", {"pageSize": 1000}, timeout_s=COMPLETION_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - any failure (config, network, answer): no candidates
        return []
    ids = sorted(str(vm.get("vmId", "")) for vm in answer.get("vms", ()) if isinstance(vm, dict))
    return [vm for vm in ids if vm.startswith(incomplete)]


def vm_argument(name: str = "vm") -> Callable[[F], F]:
    """``click.argument(name)`` naming a VM: completed from the controller's VM list."""
    return click.argument(name, shell_complete=complete_vm)
