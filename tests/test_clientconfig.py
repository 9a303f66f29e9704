"""protocol/_configfile.py: how the TUI and the command line find their controller (file,
profiles, environment, flags), and what they refuse."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from limiquantix.protocol import ConfigError, is_loopback_url, read_config, resolve, split_url
from limiquantix.protocol import _configfile as configfile

if sys.version_info >= (3, 11):
    import tomllib  # novermin - the 3.11 branch of a version check
else:  # pragma: no cover - the dev venv is 3.11+
    import tomli as tomllib

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
    with pytest.raises(ConfigError, match=r"no profile 'qa' in the config file \(profiles: lab, prod\)"):
        resolve(data, env={}, profile="qa")
    with pytest.raises(ConfigError, match="unknown key 'tokn' in profile 'x'"):
        resolve({"profiles": {"x": {"tokn": "typo"}}}, env={}, profile="x")
    with pytest.raises(ConfigError, match="must hold tables"):
        resolve({"profiles": {"x": "not a table"}}, env={})
    with pytest.raises(ConfigError, match="unknown key 'refresh_s'"):
        resolve({"token": "t", "refresh_s": 1}, env={})
    assert resolve({"token": "t", "refresh_s": 1}, env={}, extra_keys=frozenset({"refresh_s"})).values["refresh_s"] == 1
    with pytest.raises(ConfigError, match="no API token"):
        resolve({}, env={})
    with pytest.raises(ConfigError, match="refusing to send the API token over plain HTTP to 10.0.0.9"):
        resolve({"token": "t", "url": "http://10.0.0.9:8080"}, env={})
    assert resolve({"token": "t", "url": "http://10.0.0.9:8080", "insecure": True}, env={}).insecure
    # A CA file is for https: a stale one in the file does not stop a plain call to loopback.
    missing = str(tmp_path / "gone.pem")
    assert resolve({"token": "t", "ca_file": missing}, env={}).ca_file == missing
    with pytest.raises(ConfigError, match="cannot read the CA file"):
        resolve({"token": "t", "ca_file": missing, "url": "https://c:1"}, env={})
    with pytest.raises(ConfigError, match="does not hold a token"):
        resolve({"token": "two words"}, env={})


def test_read_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert read_config(None) == {}  # no default file: nothing
    with pytest.raises(ConfigError, match="cannot read"):
        read_config(tmp_path / "named-but-missing.toml")
    conf = tmp_path / "limiquantix" / "tui.toml"
    conf.parent.mkdir()
    conf.write_text('token = "t"\n[profiles.a]\nurl = "https://a:1"\n')
    assert read_config(None) == {"token": "t", "profiles": {"a": {"url": "https://a:1"}}}
    conf.write_text("token = ")
    with pytest.raises(ConfigError, match="tui.toml"):
        read_config(None)


def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    conf = tmp_path / "tui.toml"
    conf.write_bytes(b'token = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match=r"tui.toml: not UTF-8 text \(byte 9\)"):
        read_config(conf)


#: Files the simple reader must read itself (configfile's docstring): make run's, profiles.
SIMPLE_FILES = [
    "",
    "# Written by make run: the stack it started.\n"
    'url = "https://127.0.0.1:8080"\ntoken = "lqx_abc_DEF-123"\nca_file = "/tmp/lqx-run/pki/ca.pem"\n',
    "url = \"http://127.0.0.1:8080\"\r\ntoken = 't0k'  # a comment\r\n\r\n[profiles.prod]  # prod\r\n"
    'url = "https://ctl.example.com:8443/#x"\n\ttoken_file = "~/.config/limiquantix/prod.token"\ninsecure = false\n'
    "[profiles.lab]\ninsecure = true\nport = -0\nn = 42\n[profiles]\nnote = 'C:\\path'\n",
]
#: Pieces of lines, valid and not, for generated files.
_TOML_PIECES = [
    "", "# c", "key", "url", "token", "a-b_C9", "a.b", '"q"', "=", " = ", "\t", " ", '"v"', "'v'", '"a\\"b"', '"\\u00e9"',
    '"""m"""', "'''m'''", "true", "false", "True", "1", "-1", "+1", "01", "0", "1_000", "1.5", "1e3", "inf", "nan",
    "12345678901234567890", "2026-12-05", "[", "]", "[t]", "[t.u]", "[[t]]", "[ t ]", "[t.]", "{}", "[1, 2]", "#",
    '"é"', "\x00", "\x7f", "\r", "\u2028", "\ufeff", "\u00a0", '"#"', "'#'", "= =", '"', "'",
]  # fmt: skip


def _generated_toml(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(1, 6)):
        if rng.random() < 0.5:  # mostly well-formed key = value lines and headers
            key = rng.choice(["url", "token", "a", "b", "t", "insecure", rng.choice(_TOML_PIECES)])
            value = rng.choice(['"v"', "'w'", "true", "false", "7", "-3", '"x y # z"', rng.choice(_TOML_PIECES)])
            lines.append(rng.choice([f"{key} = {value}", f"[{rng.choice(['t', 'u', 't.u', 'u.t', key])}]"]))
        else:
            lines.append("".join(rng.choice(_TOML_PIECES) for _ in range(rng.randint(0, 4))))
    return rng.choice(["\n", "\r\n"]).join(lines) + rng.choice(["", "\n"])


def test_the_simple_toml_reader_answers_as_tomllib_or_leaves_it_to_tomllib() -> None:
    """configfile's reader without tomllib: on every file it returns what tomllib returns
    (the same types: True is not 1) or None (tomllib reads it, or refuses it); and it reads
    the files clients actually have."""
    for text in SIMPLE_FILES:
        assert repr(configfile._simple_toml(text)) == repr(tomllib.loads(text))
    rng = random.Random(13)
    read = 0
    for _ in range(5_000):
        text = _generated_toml(rng)
        ours = configfile._simple_toml(text)
        if ours is None:
            continue
        read += 1
        assert repr(ours) == repr(tomllib.loads(text)), text
    assert read > 500  # the generator does reach the reader's side


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
    with pytest.raises(ConfigError, match="refusing to send the API token over plain HTTP"):
        resolve({}, env={"LQX_TOKEN": "t"}, url=url)


def test_the_request_timeout_from_the_file_a_profile_or_the_flag(data: dict[str, object], tmp_path: Path) -> None:
    """How long a call waits for the controller (the TUI's polls, the command line's calls):
    the flag over the profile over the top level over the default; anything but seconds in
    0 < s <= a day is refused, naming where it came from."""
    from limiquantix.protocol import DEFAULT_REQUEST_TIMEOUT_S
    from limiquantix.tui import parse_args

    assert resolve(data, env={}).request_timeout_s == DEFAULT_REQUEST_TIMEOUT_S == 15.0
    timed = {**data, "request_timeout_s": 4, "profiles": {**data["profiles"], "lab": {"request_timeout_s": 2.5}}}  # type: ignore[dict-item]
    assert resolve(timed, env={}).request_timeout_s == 4.0
    assert resolve(timed, env={}, profile="lab").request_timeout_s == 2.5
    assert resolve(timed, env={}, profile="lab", request_timeout="0.5").request_timeout_s == 0.5
    for bad in (0, -1, True, "soon", "nan", 86401, [1]):
        with pytest.raises(ConfigError, match="request_timeout_s in profile 'lab': "):
            resolve({**timed, "profiles": {"lab": {"request_timeout_s": bad}}}, env={}, profile="lab")
    with pytest.raises(ConfigError, match="--request-timeout: "):
        resolve(data, env={}, request_timeout="0")
    # The TUI: the same key and a flag of the same name, to its client's deadline.
    file = tmp_path / "tui.toml"
    file.write_text('token = "t"\nrequest_timeout_s = 7\n')
    assert parse_args(["--config", str(file)], env={}).request_timeout_s == 7.0
    assert parse_args(["--config", str(file), "--request-timeout", "3"], env={}).request_timeout_s == 3.0
