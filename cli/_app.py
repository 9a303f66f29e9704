"""The click application: the ``limiquantix`` group, its global options, ``exec``/``sh``,
shell completion, and the commands of :mod:`._vms`, :mod:`._files`, :mod:`._fleet` and
:mod:`._admin`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from limiquantix.protocol import __version__, parse_request_timeout, refused_token_flag

from . import _admin, _files, _fleet, _vms
from . import _exitcodes as ec
from ._fast import EXEC_OPTIONS, GLOBAL_OPTIONS, exec_command, parse_env_pair, parse_timeout
from ._output import error_line
from ._state import State, click_options, vm_argument

__all__ = ["cli", "run_click"]

_HELP = """The LimiQuantix controller's API from a terminal or a script: VMs, commands,
files, power, fleet runs, audit, tokens.

\b
  limiquantix vms --label env=prod
  limiquantix sh web-1 'uptime; df -h /'
  limiquantix exec web-1 -- systemctl is-active nginx
  limiquantix run --label role=web --max-concurrency 10 'apt-get -qq update'
  limiquantix cp ./app.conf web-1:/etc/app.conf
  limiquantix audit --action vm.exec --follow

Configuration is the TUI's: ~/.config/limiquantix/tui.toml (written by make run) and its
[profiles.NAME] tables, then LQX_CONTROLLER_URL / LQX_TOKEN / LQX_CA_FILE / LQX_PROFILE,
then these options. A token is never taken from the command line (ps shows argv to every
user): --token-file, LQX_TOKEN or the config file.

Every call waits at most --request-timeout seconds (request_timeout_s in the config file;
default 15) for the controller's answer, then says so and exits 69. exec and sh wait for
their command instead (its --timeout plus 10 s); cp and audit exports at least 300 s; run
and audit --follow apply it to each poll, so a long run or a follow is never cut by it.
Connecting (TLS included) and the start of a streamed answer (exec, sh, cp from the guest,
audit exports) wait it at most.

Shell completion: eval "$(limiquantix completion bash)" (or zsh).
"""


def _refuse_token(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.UsageError(refused_token_flag("--token"), ctx=ctx)


@click.group(
    help=_HELP,
    epilog=ec.EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click_options(GLOBAL_OPTIONS)
@click.option("--token", hidden=True, expose_value=False, callback=_refuse_token, is_eager=True)
@click.version_option(__version__, "--version", prog_name="limiquantix")
@click.pass_context
def cli(ctx: click.Context, /, **options: object) -> None:
    if options.get("request_timeout") is not None:
        try:
            parse_request_timeout(options["request_timeout"])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--request-timeout") from None
    ctx.obj = State({k: v for k, v in options.items() if v not in (None, False)})


def _exec_options(timeout: str | None, env: tuple[str, ...]) -> tuple[int, dict[str, str]]:
    """Raises: click.BadParameter: the same values the fast path refuses (:mod:`._fast`)."""
    try:
        timeout_s = parse_timeout(timeout) if timeout is not None else 0
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--timeout") from None
    try:
        pairs = dict(parse_env_pair(pair) for pair in env)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--env") from None
    return timeout_s, pairs


@cli.command("exec", epilog=ec.EXEC_EPILOG, short_help="Run a program in a VM (no shell), output live.")
@click_options(EXEC_OPTIONS)
@vm_argument()
@click.argument("argv", nargs=-1, required=True)
@click.pass_obj
def exec_cmd(
    state: State,
    vm: str,
    argv: tuple[str, ...],
    timeout: str | None,
    user: str | None,
    cwd: str | None,
    env: tuple[str, ...],
) -> None:
    """Run ARGV (a program and its arguments, no shell) in VM; its output streamed live to
    stdout and stderr, its exit code ours.

    \b
      limiquantix exec web-1 -- ls -l /var/log
      limiquantix exec -t 5 -u www-data web-1 -- id
    """
    timeout_s, pairs = _exec_options(timeout, env)
    code = exec_command(state.options, "exec", vm, argv, timeout_s=timeout_s, user=user or "", cwd=cwd or "", env=pairs)
    sys.exit(code)


@cli.command("sh", epilog=ec.EXEC_EPILOG, short_help="Run a shell script in a VM, output live.")
@click_options(EXEC_OPTIONS)
@vm_argument()
@click.argument("script")
@click.pass_obj
def sh_cmd(
    state: State, vm: str, script: str, timeout: str | None, user: str | None, cwd: str | None, env: tuple[str, ...]
) -> None:
    """Run SCRIPT with the guest's shell (/bin/sh -c) in VM; output streamed live, its exit
    code ours. SCRIPT '-' reads the script from stdin.

    \b
      limiquantix sh web-1 'systemctl restart nginx && systemctl is-active nginx'
      limiquantix sh web-1 - < deploy.sh
    """
    timeout_s, pairs = _exec_options(timeout, env)
    code = exec_command(
        state.options, "sh", vm, (script,), timeout_s=timeout_s, user=user or "", cwd=cwd or "", env=pairs
    )
    sys.exit(code)


@cli.command("completion", short_help="Print the bash or zsh completion script.")
@click.argument("shell", type=click.Choice(["bash", "zsh"]))
def completion_cmd(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
      eval "$(limiquantix completion bash)"     # in ~/.bashrc
      eval "$(limiquantix completion zsh)"      # in ~/.zshrc
    (the same as: _LIMIQUANTIX_COMPLETE=bash_source limiquantix)
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None  # both are click's built-ins
    click.echo(completer(cli, {}, "limiquantix", "_LIMIQUANTIX_COMPLETE").source(), nl=False)


for _module in (_vms, _files, _fleet, _admin):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def run_click(argv: Sequence[str]) -> int:
    """Run ``argv`` through click; the exit code (usage errors 2, Ctrl-C 130)."""
    try:
        rv = cli.main(args=list(argv), prog_name="limiquantix", standalone_mode=False)
    except click.exceptions.Abort:
        print("limiquantix: interrupted", file=sys.stderr)
        return ec.INTERRUPTED
    except click.UsageError as exc:
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:
        error_line(exc.format_message())
        return exc.exit_code
    except KeyboardInterrupt:
        print("limiquantix: interrupted", file=sys.stderr)
        return ec.INTERRUPTED
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return rv if isinstance(rv, int) else ec.OK
