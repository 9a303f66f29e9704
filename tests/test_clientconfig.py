"""protocol/clientconfig.py: how the TUI and the command line find their controller (file,
profiles, environment, flags), and what they refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from limiquantix.protocol.clientconfig import ClientConfigError, read_config, resolve
from limiquantix.protocol.loopback import is_loopback_url, split_url

FILE = {
    "url": "http://127.0.0.1:8080",
    "token": "top-token",
    "profiles": {
        "prod": {"url": "https://ctl.example.com:8443", "token_file": "PLACEHOLDER"},
        "lab": {"url": "http://127.0.0.1:9000"},
    },
}


@pytest.fixture
def data(tmp_path: Path) -> dict[str, object]:
    token = tmp_path / "prod.token"
    token.write_text("prod-token\n")
    profiles = {**FILE["profiles"], "prod": {**FILE["profiles"]["prod"], "token_file": str(token)}}  # type: ignore[dict-item]
    return {**FILE, "profiles": profiles}


def test_top_level_then_environment_then_flags(data: dict[str, object], tmp_path: Path) -> None:
    got = resolve(data, env={})
    assert (got.url, got.token, got.source, got.profile) == (
        "http://127.0.0.1:8080",
        "top-token",
        "the config file",
        "",
    )
    got = resolve(data, env={"LQX_CONTROLLER_URL": "http://localhost:1", "LQX_TOKEN": "env-token"})
    assert (got.url, got.token, got.source) == ("http://localhost:1", "env-token", "LQX_TOKEN")
    flag_token = tmp_path / "flag.token"
    flag_token.write_text("flag-token")
    got = resolve(data, env={"LQX_TOKEN": "env-token"}, url="http://[::1]:2/", token_file=flag_token)
    assert (got.url, got.token, got.source) == ("http://[::1]:2", "flag-token", str(flag_token))


def test_a_profile_overrides_the_top_level_and_ignores_the_environment(data: dict[str, object]) -> None:
    env = {"LQX_CONTROLLER_URL": "http://localhost:1", "LQX_TOKEN": "dev-token"}
    got = resolve(data, env=env, profile="prod")
    # The environment's URL and token would mix two controllers: a chosen profile wins over them.
    assert (got.url, got.token, got.profile) == ("https://ctl.example.com:8443", "prod-token", "prod")
    assert got.source.endswith("prod.token")
    got = resolve(data, env={**env, "LQX_PROFILE": "lab"})
    assert (got.url, got.token, got.profile) == ("http://127.0.0.1:9000", "top-token", "lab")
    assert "token" not in repr(got)  # never printed by accident


def test_what_is_refused(data: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match=r"no profile 'qa' in the config file \(profiles: lab, prod\)"):
        resolve(data, env={}, profile="qa")
    with pytest.raises(ClientConfigError, match="unknown key 'tokn' in profile 'x'"):
        resolve({"profiles": {"x": {"tokn": "typo"}}}, env={}, profile="x")
    with pytest.raises(ClientConfigError, match="must hold tables"):
        resolve({"profiles": {"x": "not a table"}}, env={})
    with pytest.raises(ClientConfigError, match="unknown key 'refresh_s'"):
        resolve({"token": "t", "refresh_s": 1}, env={})
    assert resolve({"token": "t", "refresh_s": 1}, env={}, extra_keys=frozenset({"refresh_s"})).values["refresh_s"] == 1
    with pytest.raises(ClientConfigError, match="no API token"):
        resolve({}, env={})
    with pytest.raises(ClientConfigError, match="refusing to send the API token over plain HTTP to 10.0.0.9"):
        resolve({"token": "t", "url": "http://10.0.0.9:8080"}, env={})
    assert resolve({"token": "t", "url": "http://10.0.0.9:8080", "insecure": True}, env={}).insecure
    # A CA file is for https: a stale one in the file does not stop a plain call to loopback.
    missing = str(tmp_path / "gone.pem")
    assert resolve({"token": "t", "ca_file": missing}, env={}).ca_file == missing
    with pytest.raises(ClientConfigError, match="cannot read the CA file"):
        resolve({"token": "t", "ca_file": missing, "url": "https://c:1"}, env={})
    with pytest.raises(ClientConfigError, match="does not hold a token"):
        resolve({"token": "two words"}, env={})


def test_read_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert read_config(None) == {}  # no default file: nothing
    with pytest.raises(ClientConfigError, match="cannot read"):
        read_config(tmp_path / "named-but-missing.toml")
    conf = tmp_path / "limiquantix" / "tui.toml"
    conf.parent.mkdir()
    conf.write_text('token = "t"\n[profiles.a]\nurl = "https://a:1"\n')
    assert read_config(None) == {"token": "t", "profiles": {"a": {"url": "https://a:1"}}}
    conf.write_text("token = ")
    with pytest.raises(ClientConfigError, match="tui.toml"):
        read_config(None)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080", "https://u:p@Ctl.Example.com:8443/api/?x=1#y", "http://[::1]:80/a", "http://[::1]",
        "http://127.0.0.1#@192.0.2.1/", "http://127.0.0.1?@192.0.2.1", "http://a@b@c:5", "http://h:/p", "http://[fe80::1%25eth0]:9",
    ],
)  # fmt: skip
def test_split_url_reads_the_host_as_urlsplit_does(url: str) -> None:
    from urllib.parse import urlsplit

    scheme, host, port, rest = split_url(url)
    parts = urlsplit(url)
    assert (scheme, host.lower(), int(port) if port else None) == (parts.scheme, parts.hostname, parts.port)
    assert url == f"{scheme}://{parts.netloc}{rest}"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1\\@192.0.2.1/",
        "http://127.0.0.1\t@192.0.2.1",
        "http://127.0.0.1 @x",
        "http://[::1",
        "http://a]b",
    ],
)
def test_a_url_parsers_may_read_differently_is_not_loopback(url: str) -> None:
    """The check must read the host the client connects to; where parsers differ, none is
    trusted: the token is refused over plain HTTP."""
    with pytest.raises(ValueError):
        split_url(url)
    assert not is_loopback_url(url)
    with pytest.raises(ClientConfigError, match="refusing to send the API token over plain HTTP"):
        resolve({}, env={"LQX_TOKEN": "t"}, url=url)
