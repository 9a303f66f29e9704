"""Where the TUI finds its controller: flags, then environment, then the config file.

``make run`` writes ``~/.config/limiquantix/tui.toml`` (``$XDG_CONFIG_HOME`` is
honoured) with ``url`` and ``token``; ``LQX_CONTROLLER_URL`` / ``LQX_TOKEN``
override it, and ``--url`` / ``--token-file`` override both. ``--token`` is refused:
a secret on the command line is visible to every user of the machine (``ps``).
``ca_file`` (``--ca-file``, ``LQX_CA_FILE``) is the CA the controller's HTTPS certificate
must chain to (default: the system's CAs). The token is never sent over plain ``http://`` to
another machine unless ``--insecure`` (or ``insecure = true``) says so.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from limiquantix.protocol.configfile import read_toml
from limiquantix.protocol.tls import InsecureTransportError, check_token_transport

__all__ = [
    "DEFAULT_REFRESH_S",
    "DEFAULT_URL",
    "TuiConfig",
    "TuiConfigError",
    "api_examples_path",
    "default_config_path",
    "parse_args",
]

DEFAULT_URL: Final = "http://127.0.0.1:8080"
#: Seconds between fleet refreshes.
DEFAULT_REFRESH_S: Final = 2.0


class TuiConfigError(ValueError):
    """The configuration is unreadable or incomplete."""


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/limiquantix/tui.toml`` (``~/.config`` when unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "limiquantix" / "tui.toml"


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


class _RefuseToken(argparse.Action):
    """``--token``: a secret in argv is readable by every local user (``ps``, /proc)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
        raise TuiConfigError(
            f"{option} is refused: a token on the command line is visible to every user (ps); "
            "use --token-file FILE, the environment variable LQX_TOKEN, or the config file"
        )


def _check_token(token: str, source: str) -> None:
    """A token is one word of visible ASCII: it goes into an HTTP header as it is.

    Raises:
        TuiConfigError: anything else, naming where it came from (not, later, as an
            unreachable controller: httpx refuses such a header before sending).
    """
    if all(33 <= ord(c) <= 126 for c in token):
        return
    if any(c.isspace() for c in token):
        what = "spaces or line breaks" + (" (a TOML file? pass it with --config)" if "=" in token else "")
    else:
        what = "characters that are not printable ASCII"
    raise TuiConfigError(f"{source} does not hold a token: it has {what}; a token is one line of one word")


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
    p.add_argument("--ca-file", type=Path, help="CA the controller's HTTPS certificate must chain to (env LQX_CA_FILE)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="send the token over plain http:// to another machine (anyone on the network path can read it)",
    )
    p.add_argument("--refresh-s", type=float, help=f"seconds between fleet refreshes (default {DEFAULT_REFRESH_S})")
    return p


def parse_args(argv: list[str] | None = None, env: dict[str, str] | None = None) -> TuiConfig:
    """Resolve the configuration.

    Raises:
        TuiConfigError: an unreadable file, a bad value, or no token anywhere.
    """
    args = _parser().parse_args(argv)
    env = dict(os.environ if env is None else env)
    data = read_toml(args.config, default_config_path(), TuiConfigError)
    unknown = sorted(set(data) - {"url", "token", "refresh_s", "ca_file", "insecure"})
    if unknown:
        raise TuiConfigError(f"unknown key {unknown[0]!r} in the TUI config file")
    url, token, source = str(data.get("url", DEFAULT_URL)), str(data.get("token", "")), "the config file"
    if env.get("LQX_CONTROLLER_URL"):
        url = env["LQX_CONTROLLER_URL"]
    if env.get("LQX_TOKEN"):
        token, source = env["LQX_TOKEN"], "LQX_TOKEN"
    if args.url:
        url = args.url
    if args.token_file:
        try:
            token, source = args.token_file.read_text().strip(), str(args.token_file)
        except OSError as exc:
            raise TuiConfigError(f"cannot read {args.token_file}: {exc.strerror}") from exc
    if token:
        _check_token(token, source)
    if not token:
        raise TuiConfigError(
            f"no API token: pass --token-file, set LQX_TOKEN, or run `make run` (which writes {default_config_path()})"
        )
    if not url.startswith(("http://", "https://")):
        raise TuiConfigError(f"controller URL must start with http:// or https://, not {url!r}")
    ca_file = str(args.ca_file or env.get("LQX_CA_FILE") or data.get("ca_file", ""))
    if ca_file and not os.path.isfile(ca_file):
        raise TuiConfigError(f"cannot read the CA file {ca_file}")
    insecure = bool(args.insecure or data.get("insecure", False) is True)
    try:
        check_token_transport(url, insecure=insecure)
    except InsecureTransportError as exc:
        raise TuiConfigError(str(exc)) from None
    refresh = args.refresh_s if args.refresh_s is not None else float(data.get("refresh_s", DEFAULT_REFRESH_S))
    if not refresh > 0:
        raise TuiConfigError("refresh_s must be > 0")
    return TuiConfig(
        url=url.rstrip("/"), token=token, refresh_s=refresh, source=source, ca_file=ca_file, insecure=insecure
    )
