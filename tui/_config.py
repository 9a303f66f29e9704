"""Where the TUI finds its controller: flags, then environment, then the config file.

The resolution is shared with the ``limiquantix`` command line
(:mod:`limiquantix.protocol._configfile`): ``make run`` writes
``~/.config/limiquantix/tui.toml`` (``$XDG_CONFIG_HOME`` is honoured) with ``url`` and
``token``, ``[profiles.NAME]`` tables hold other controllers (``--profile``, ``LQX_PROFILE``);
``LQX_CONTROLLER_URL`` / ``LQX_TOKEN`` override the file, and ``--url`` / ``--token-file``
override both. ``--token`` is refused: a secret on the command line is visible to every user
of the machine (``ps``). ``ca_file`` (``--ca-file``, ``LQX_CA_FILE``) is the CA the
controller's HTTPS certificate must chain to (default: the system's CAs). The token is never
sent over plain ``http://`` to another machine unless ``--insecure`` (or ``insecure = true``)
says so. ``request_timeout_s`` (``--request-timeout``) bounds every call that names no budget
of its own, as for the command line. The TUI's own key: ``refresh_s``. Every error is the one
:class:`~limiquantix.protocol.ConfigError` (the daemons' and the command line's).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from limiquantix.protocol import (
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_URL,
    ConfigError,
    default_config_path,
    read_config,
    refused_token_flag,
    resolve,
)

__all__ = [
    "DEFAULT_REFRESH_S",
    "DEFAULT_URL",
    "TuiConfig",
    "api_examples_path",
    "default_config_path",
    "parse_args",
]

#: Seconds between fleet refreshes.
DEFAULT_REFRESH_S: Final = 2.0


def api_examples_path() -> Path:
    """Where ``make run`` writes its curl lines to try the API (beside the config file; the
    TUI's help names it: printed under the TUI, nobody saw them)."""
    return default_config_path().parent / "api-examples.sh"


@dataclass(frozen=True)
class TuiConfig:
    url: str = DEFAULT_URL
    token: str = ""
    refresh_s: float = DEFAULT_REFRESH_S
    source: str = "defaults"
    """Where the token came from (shown when the controller refuses it)."""
    ca_file: str = ""
    """CA the controller's certificate must chain to; empty: the system's CAs."""
    insecure: bool = False
    """Send the token over plain http:// to another machine anyway."""
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    """How long a call that names no budget of its own (a poll, a ping) waits for its answer."""


class _RefuseToken(argparse.Action):
    """``--token``: a secret in argv is readable by every local user (``ps``, /proc)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
        raise ConfigError(refused_token_flag(option or "--token"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="limiquantix-tui",
        description="The operators' terminal dashboard for LimiQuantix guest agents (talks to the controller).",
    )
    p.add_argument(
        "--url", help=f"controller URL (env LQX_CONTROLLER_URL; default from the config file, else {DEFAULT_URL})"
    )
    # Refused with a reason rather than "unrecognized arguments" (hidden from --help).
    p.add_argument("--token", action=_RefuseToken, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument(
        "--token-file", type=Path, help="read the API token from this file (else env LQX_TOKEN, else the config file)"
    )
    p.add_argument("--config", type=Path, help="config file (default: ~/.config/limiquantix/tui.toml)")
    p.add_argument("--profile", help="the config file's [profiles.NAME] to use (env LQX_PROFILE)")
    p.add_argument("--ca-file", type=Path, help="CA the controller's HTTPS certificate must chain to (env LQX_CA_FILE)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="send the token over plain http:// to another machine (anyone on the network path can read it)",
    )
    p.add_argument(
        "--request-timeout",
        metavar="SECONDS",
        help=f"how long each call waits for the controller's answer (default {DEFAULT_REQUEST_TIMEOUT_S:g}; "
        "request_timeout_s in the config file)",
    )
    p.add_argument("--refresh-s", type=float, help=f"seconds between fleet refreshes (default {DEFAULT_REFRESH_S})")
    return p


def parse_args(argv: list[str] | None = None, env: dict[str, str] | None = None) -> TuiConfig:
    """Resolve the configuration.

    Raises:
        ConfigError: an unreadable file, a bad value, or no token anywhere.
    """
    args = _parser().parse_args(argv)
    env = dict(os.environ if env is None else env)
    settings = resolve(
        read_config(args.config),
        env=env,
        url=args.url,
        token_file=args.token_file,
        ca_file=args.ca_file,
        insecure=args.insecure,
        profile=args.profile,
        request_timeout=args.request_timeout,
        extra_keys=frozenset({"refresh_s"}),
    )
    refresh = (
        args.refresh_s if args.refresh_s is not None else float(settings.values.get("refresh_s", DEFAULT_REFRESH_S))
    )
    if not refresh > 0:
        raise ConfigError("refresh_s must be > 0")
    return TuiConfig(
        url=settings.url,
        token=settings.token,
        refresh_s=refresh,
        source=settings.source,
        ca_file=settings.ca_file,
        insecure=settings.insecure,
        request_timeout_s=settings.request_timeout_s,
    )
