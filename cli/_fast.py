"""The start of the ``limiquantix`` program, and ``exec``/``sh`` up to their request leaving.

Everything ``limiquantix exec VM -- true`` runs before its request is sent is here or in
:mod:`._client` (the call itself): the program's entry (:func:`entry`), the global and
exec/sh option tables (declared once: click builds its commands from them in :mod:`._app`,
and :func:`parse` reads exec/sh command lines with them, so the two cannot drift; a test
compares them on many command lines), the parse, and the request. What follows the
command once the request has left (its output, its exit code, the error messages) is in
:mod:`._exec`, imported then: the controller needs about 15 ms to answer, and whatever is
imported or prepared meanwhile costs no wall time. That wall time is measured against curl,
start-up included (bench/cli_bench.py), and each module on the path costs about 0.2 ms of CPU
(found, read, unmarshalled, run): hence one module here for what would otherwise be four
(the entry, the options, the parse, the request).

A command line of the forms ``[GLOBAL OPTIONS] exec [OPTIONS] VM [--] ARGV...`` and
``[GLOBAL OPTIONS] sh [OPTIONS] VM SCRIPT`` is parsed here and run at once; anything else
(``--help``, a typo, an option spelled another way such as ``-t5``, shell completion)
returns None from :func:`run` and click handles it, errors and help included. Importing
click costs about 45 ms on the project's machine, several times what the rest of an
``exec`` takes.
"""

# No ``from __future__ import annotations``: limiquantix exec imports this module before its
# request leaves, and that statement loads the __future__ module (about 0.3 ms of CPU on the
# project's machine: bench/cli_bench.py); annotations naming what only type checkers
# import are strings instead.

import os
import sys

from limiquantix.protocol import ConfigError, command_budget_s, parse_request_timeout

from ._client import VM, ApiError, Client, given

# Names for type checkers only: importing typing and collections costs milliseconds of the
# start-up that bench/cli_bench.py measures.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, NoReturn

    #: (global options, command, command options, positional arguments)
    Parsed = tuple[dict[str, Any], str, dict[str, Any], list[str]]

__all__ = [
    "EXEC_OPTIONS",
    "GLOBAL_OPTIONS",
    "MAX_TIMEOUT_S",
    "Opt",
    "by_name",
    "entry",
    "exec_body",
    "exec_command",
    "main",
    "parse",
    "parse_env_pair",
    "parse_timeout",
    "run",
    "shell_quote",
]

#: Our exit code when stdout is a closed pipe (a shell's for SIGPIPE: 128 + 13).
_BROKEN_PIPE = 141


# ------------------------------------------------------------------------ the program


def _run(argv: list[str]) -> tuple[int, bool]:
    """Run one command line: its exit code, and whether the fast path (exec/sh) ran it.

    Output to a closed pipe (``limiquantix vms | head -1``) ends quietly, like other tools.
    """
    fast = False
    try:
        code = run(argv)
        fast = code is not None
        if code is None:
            from ._app import run_click

            code = run_click(argv)
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        # Python would complain again while flushing stdout at exit: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _BROKEN_PIPE, fast
    return code, fast


def main(argv: list[str] | None = None) -> int:
    """Run one command line (``sys.argv[1:]`` by default); its exit code."""
    return _run(sys.argv[1:] if argv is None else argv)[0]


def entry() -> "NoReturn":
    """The ``limiquantix`` program: run ``sys.argv[1:]`` and exit with its code.

    After exec/sh the process ends at once (``os._exit``, stdout and stderr flushed): the
    interpreter's teardown (module cleanup, the garbage collector's last passes) costs about
    3 ms, and nothing on that path needs it: no thread, no atexit handler, no file left open
    for writing. Click's commands exit normally (rich, progress threads, files written by
    ``cp``).
    """
    code, fast = _run(sys.argv[1:])
    if fast:
        os._exit(code)
    sys.exit(code)


# ------------------------------------------------------------------------ the options


#: The agent's own ceiling for a command's timeout (exec_max_timeout_s).
MAX_TIMEOUT_S = 86400


class Opt:
    """One option: its names, the parameter it sets, whether it takes a value, its help."""

    __slots__ = ("names", "dest", "value", "multiple", "help", "metavar", "envvar")

    def __init__(
        self,
        *names: str,
        dest: str,
        value: bool = True,
        multiple: bool = False,
        help: str,  # noqa: A002 - click's name
        metavar: str = "",
        envvar: str = "",
    ) -> None:
        self.names = names
        self.dest = dest
        self.value = value
        self.multiple = multiple
        self.help = help
        self.metavar = metavar
        self.envvar = envvar


GLOBAL_OPTIONS: tuple[Opt, ...] = (
    Opt("--url", dest="url", metavar="URL", help="controller URL (env LQX_CONTROLLER_URL; else the config file)"),
    Opt(
        "--token-file",
        dest="token_file",
        metavar="FILE",
        help="read the API token from FILE (else env LQX_TOKEN, else the config file); never --token",
    ),
    Opt(
        "--ca-file",
        dest="ca_file",
        metavar="FILE",
        help="CA the controller's HTTPS certificate must chain to (env LQX_CA_FILE)",
    ),
    Opt(
        "--insecure",
        dest="insecure",
        value=False,
        help="send the token over plain http:// to another machine (anyone on the path can read it)",
    ),
    Opt("--profile", dest="profile", metavar="NAME", help="the config file's [profiles.NAME] (env LQX_PROFILE)"),
    Opt("--config", dest="config", metavar="FILE", help="config file (default ~/.config/limiquantix/tui.toml)"),
    Opt(
        "--request-timeout",
        dest="request_timeout",
        metavar="SECONDS",
        help="how long each call waits for the controller's answer, then we exit 69 (default 15; the config "
        "file's request_timeout_s); exec/sh wait for their command (its --timeout + 10 s), cp and audit "
        "exports at least 300 s, run and audit --follow apply it to each poll",
    ),
)

EXEC_OPTIONS: tuple[Opt, ...] = (
    Opt(
        "-t",
        "--timeout",
        dest="timeout",
        metavar="SECONDS",
        help=f"seconds the command may run, then it is killed and we exit 124 (0: the agent's default, 60; at most {MAX_TIMEOUT_S})",
    ),
    Opt("-u", "--user", dest="user", metavar="USER", help="run as this guest user (default: the agent's, root)"),
    Opt("--cwd", dest="cwd", metavar="DIR", help="working directory in the guest"),
    Opt(
        "-e",
        "--env",
        dest="env",
        multiple=True,
        metavar="NAME=VALUE",
        help="an environment variable for the command (repeatable)",
    ),
)


def parse_timeout(text: str) -> int:
    """Raises: ValueError: not an integer in 0..MAX_TIMEOUT_S."""
    value = int(text)
    if not 0 <= value <= MAX_TIMEOUT_S:
        raise ValueError(f"{value} is not in 0..{MAX_TIMEOUT_S}")
    return value


def parse_env_pair(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` → (name, value).

    Raises:
        ValueError: no ``=``, or an empty name.
    """
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"{text!r} is not NAME=VALUE")
    return name, value


def by_name(options: "Iterable[Opt]") -> dict[str, Opt]:
    """Every name of ``options`` → its option."""
    return {name: opt for opt in options for name in opt.names}


# ------------------------------------------------------------------------ the parse


def _option(argv: "Sequence[str]", i: int, table: dict[str, Opt], into: "dict[str, Any]") -> int | None:
    """Parse the option at ``argv[i]`` into ``into``; the next index, or None if click must."""
    token = argv[i]
    name, eq, value = token.partition("=") if token.startswith("--") else (token, "", "")
    opt = table.get(name)
    if opt is None:
        return None
    if not opt.value:
        if eq:
            return None
        into[opt.dest] = True
        return i + 1
    if eq:
        i += 1
    elif i + 1 < len(argv):
        value, i = argv[i + 1], i + 2
    else:
        return None
    if opt.multiple:
        into.setdefault(opt.dest, []).append(value)
    else:
        into[opt.dest] = value
    return i


def parse(argv: "Sequence[str]") -> "Parsed | None":
    """An exec/sh command line, as click would read it; None for anything else."""
    glob: dict[str, Any] = {}
    table = by_name(GLOBAL_OPTIONS)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        nxt = _option(argv, i, table, glob)
        if nxt is None:
            return None
        i = nxt
    if i >= len(argv) or argv[i] not in ("exec", "sh"):
        return None
    if "request_timeout" in glob:
        try:
            parse_request_timeout(glob["request_timeout"])
        except ValueError:
            return None  # click says what is wrong with it
    command, i = argv[i], i + 1
    opts: dict[str, Any] = {}
    table = by_name(EXEC_OPTIONS)
    positional: list[str] = []
    while i < len(argv):
        token = argv[i]
        if token == "--":
            positional.extend(argv[i + 1 :])
            break
        if token.startswith("-") and token != "-":
            nxt = _option(argv, i, table, opts)
            if nxt is None:
                return None
            i = nxt
            continue
        positional.append(token)
        i += 1
    if len(positional) < 2 or (command == "sh" and len(positional) != 2):
        return None
    try:
        if "timeout" in opts:
            opts["timeout"] = parse_timeout(opts["timeout"])
        if "env" in opts:
            opts["env"] = [parse_env_pair(pair) for pair in opts["env"]]
    except ValueError:
        return None  # click says what is wrong with it
    return glob, command, opts, positional


# ------------------------------------------------------------------------ the request


#: What a word may hold and need no quotes in a POSIX shell (shlex.quote's set: ``\w``
#: in ASCII, and ``@%+=:,./-``).
_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


def shell_quote(word: str) -> str:
    """``shlex.quote(word)``: the word as a POSIX shell reads it back. Not shlex's own: its
    module imports ``re``, which ``exec PROG``'s start-up does not otherwise pay for."""
    if word and _SHELL_SAFE.issuperset(word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def exec_body(
    vm: str,
    command: str,
    args: "Sequence[str]",
    *,
    timeout_s: int,
    user: str = "",
    cwd: str = "",
    env: "Mapping[str, str] | None" = None,
) -> "dict[str, Any]":
    """An ExecuteScriptRequest in proto3 JSON: ``command`` + ``args`` is an argv, ``command``
    alone a shell script."""
    return {
        "vmId": vm,
        "command": command,
        **given(
            args=list(args),
            timeoutSeconds=timeout_s,
            runAsUser=user,
            workingDirectory=cwd,
            environment=dict(env or {}),
        ),
    }


def exec_command(
    options: "Mapping[str, Any]",
    command: str,
    vm: str,
    argv: "Sequence[str]",
    *,
    timeout_s: int = 0,
    user: str = "",
    cwd: str = "",
    env: "Mapping[str, str] | None" = None,
) -> int:
    """``exec`` (``argv`` is the command) or ``sh`` (``argv[0]`` is the script, ``-``: read
    from stdin) with the global ``options``: the exit code, every failure of ours said on
    stderr and exited 125 (the guest's codes are the command's).

    The request leaves first; :mod:`._exec`, which follows the command, is imported after.
    """
    try:
        client = Client.from_options(**options)
        if command == "sh":
            script = sys.stdin.read() if argv[0] == "-" else argv[0]
            body = exec_body(vm, script, (), timeout_s=timeout_s, user=user, cwd=cwd, env=env)
        elif len(argv) == 1:
            # The API runs an argv only when it has arguments (``command`` alone is a shell
            # script), so a lone program goes through the guest's shell, which execs it.
            body = exec_body(vm, f"exec {shell_quote(argv[0])}", (), timeout_s=timeout_s, user=user, cwd=cwd, env=env)
        else:
            body = exec_body(vm, argv[0], argv[1:], timeout_s=timeout_s, user=user, cwd=cwd, env=env)
        events = client.stream(VM, "ExecuteScriptStream", body, timeout_s=command_budget_s(timeout_s))
    except (ConfigError, ApiError) as exc:
        from ._exec import cli_error

        return cli_error(exc)
    from ._exec import follow  # while the controller works on the request

    return follow(events)


def run(argv: "Sequence[str]") -> int | None:
    """Run an exec/sh command line; its exit code, or None when click must handle it."""
    if os.environ.get("_LIMIQUANTIX_COMPLETE"):
        return None
    parsed = parse(argv)
    if parsed is None:
        return None
    glob, command, opts, positional = parsed
    return exec_command(
        glob,
        command,
        positional[0],
        positional[1:],
        timeout_s=opts.get("timeout", 0),
        user=opts.get("user", ""),
        cwd=opts.get("cwd", ""),
        env=dict(opts.get("env", ())),
    )
