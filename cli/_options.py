"""The global options and exec/sh's options, declared once: click builds the commands from
these tables (:mod:`._app`), and the start-up fast path (:mod:`._fast`) parses ``exec`` and
``sh`` command lines with the same tables, so the two cannot drift (a test compares them
on many command lines).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # for type checkers only (start-up time)
    from collections.abc import Iterable

__all__ = [
    "EXEC_OPTIONS",
    "GLOBAL_OPTIONS",
    "MAX_TIMEOUT_S",
    "Opt",
    "parse_env_pair",
    "parse_timeout",
]

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


def by_name(options: Iterable[Opt]) -> dict[str, Opt]:
    """Every name of ``options`` → its option."""
    return {name: opt for opt in options for name in opt.names}
