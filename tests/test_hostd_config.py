"""hostd's configuration (TOML, flags, token) and its Unix-socket listener.

The command line is mostly run in the test's process (tests/inprocess.py: its ``main``, as the
process runs it); test_token_is_required_and_read_from_its_file runs it as a real process."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from inprocess import run_main

from limiquantix.hostd import (
    CONTROLLER_TOKEN_ENV,
    TOKEN_ENV,
    ConfigError,
    DiscoveryConfig,
    HostdConfig,
    load_config,
    serve,
)
from limiquantix.hostd import _daemon as hostd_daemon


@pytest.fixture
def hostd(monkeypatch: pytest.MonkeyPatch) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``hostd(*args, env={...})``: ``limiquantix-hostd ARGS`` run in this process."""
    # hostd's main tunes glibc's malloc for the process: not for the test's.
    monkeypatch.setattr(hostd_daemon, "return_big_buffers_to_the_os", lambda: None)

    def run(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
        return run_main(hostd_daemon.main, *args, env=env)

    return run


def test_the_longest_vm_id_is_taken(tmp_path: Path) -> None:
    cfg = tmp_path / "hostd.toml"
    cfg.write_text(f'[[vm]]\nid = "{"v" * 128}"\nsocket = "/a"')
    assert [v.id for v in load_config(["--config", str(cfg)]).vms] == ["v" * 128]


def test_toml_tables_flags_and_vm_entries(tmp_path: Path) -> None:
    cfg = tmp_path / "hostd.toml"
    cfg.write_text(
        'listen = "127.0.0.1:9000"\ntoken_file = "/etc/x.token"\n'
        "[connection]\nping_interval_s = 2.0\n"
        '[discovery]\nsocket_dir = "/srv/vms"\n'
        '[[vm]]\nid = "web-1"\nsocket = "/srv/web-1.sock"\nlabels = { role = "web" }\n'
    )
    c = load_config(["--config", str(cfg), "--listen", "0.0.0.0:9100", "--vm", "db-1=/srv/db-1.sock",
                     "--libvirt-channel-root", ""])  # fmt: skip
    assert c.listen == "0.0.0.0:9100"  # the flag wins
    assert c.connection.ping_interval_s == 2.0
    assert c.discovery.socket_dir == "/srv/vms" and c.discovery.libvirt_channel_root == ""
    assert [(v.id, v.socket) for v in c.vms] == [("web-1", "/srv/web-1.sock"), ("db-1", "/srv/db-1.sock")]
    assert dict(c.vms[0].labels) == {"role": "web"}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("bogus = 1", "unknown configuration keys: bogus"),
        ('listen = "nonsense"', "listen must be host:port"),
        ('listen = ""', "nothing to listen on"),
        ("[connection]\nping_interval_s = 0", "ping_interval_s must be > 0"),
        ('[[vm]]\nid = "x"\nsocket = "relative"', "absolute path"),
        ("[discovery]\nno_such = 1", "discovery"),
        # A typo in a [[vm]] key is named with the known keys (it was a Python TypeError).
        ('[[vm]]\nid = "x"\nsockt = "/a"', r"^unknown key 'sockt' in \[\[vm\]\] \(known: id, socket"),
        # One id rule (protocol.limits.check_id): a VM id no request could name is refused at
        # load, not listed un-addressable (129-255 characters were taken; requests allow 128 bytes).
        (f'[[vm]]\nid = "{"v" * 129}"\nsocket = "/a"', r"vm id 'v{32}'\.\.\. is 129 bytes; the limit is 128"),
        (
            '[[vm]]\nid = "web 1"\nsocket = "/a"',
            r"vm id 'web 1' must be 1-128 letters, digits or _\.:@\+- \(not first\)",
        ),
        ('[[vm]]\nid = "w\u00e9b"\nsocket = "/a"', "must be 1-128 letters"),
        (
            f'node_id = "{"n" * 129}"\ncontroller_url = "https://c"\ncontroller_token = "t"',
            r"node_id 'n{32}'\.\.\. is 129 bytes; the limit is 128",
        ),
    ],
)
def test_invalid_configuration_is_refused_clearly(tmp_path: Path, toml: str, message: str) -> None:
    cfg = tmp_path / "hostd.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(["--config", str(cfg)])


def test_token_is_required_and_read_from_its_file(
    tmp_path: Path, hostd: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    with pytest.raises(ConfigError, match="bearer token is required"):
        HostdConfig().bearer_token()
    (tmp_path / "t").write_text("s3cret-token\n")
    assert HostdConfig(token_file=str(tmp_path / "t")).bearer_token() == "s3cret-token"
    with pytest.raises(ConfigError, match="cannot read token_file"):
        HostdConfig(token_file=str(tmp_path / "missing")).bearer_token()
    out = hostd(env={TOKEN_ENV: None})  # as a process: tests/test_controller_api.py runs one
    assert out.returncode == 2 and "bearer token is required" in out.stderr


def test_tokens_come_from_files_or_the_environment_never_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hostd: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    (tmp_path / "node.token").write_text("lqx_node-token-from-file\n")
    url = ["--controller-url", "https://c:8080"]
    with pytest.raises(
        ConfigError, match=f"controller_url needs controller_token_file \\(or {CONTROLLER_TOKEN_ENV}\\)"
    ):
        load_config(url)
    c = load_config([*url, "--controller-token-file", str(tmp_path / "node.token")])
    assert c.controller_bearer_token() == "lqx_node-token-from-file"
    monkeypatch.setenv(CONTROLLER_TOKEN_ENV, "lqx_node-token-from-env")
    monkeypatch.setenv(TOKEN_ENV, "hostd-token-from-env")
    c = load_config(url)
    assert (c.controller_bearer_token(), c.bearer_token()) == ("lqx_node-token-from-env", "hostd-token-from-env")
    # A file named on the command line wins over the environment.
    c = load_config([*url, "--controller-token-file", str(tmp_path / "node.token")])
    assert c.controller_bearer_token() == "lqx_node-token-from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        HostdConfig(controller_url="https://c", controller_token_file=str(tmp_path / "empty")).controller_bearer_token()
    # A secret on the command line is refused, saying why and what to use instead.
    for flag, instead in (("--token", "--token-file"), ("--controller-token", "--controller-token-file")):
        out = hostd(flag, "s3cret")
        assert out.returncode == 2 and f"{flag} is refused" in out.stderr and instead in out.stderr, out.stderr
        assert "ps" in out.stderr


def test_cli_refuses_a_short_token_and_warns_of_missing_directories(
    tmp_path: Path, hostd: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    def with_token(*args: str, token: str) -> subprocess.CompletedProcess[str]:
        return hostd("--config", "/dev/null", *args, env={TOKEN_ENV: token})

    out = with_token(token="abc")
    assert out.returncode == 2 and "the bearer token is too short (3 characters; at least 16" in out.stderr, out.stderr
    # Missing discovery directories are said at start (here it then stops on a port in use).
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        out = with_token("--listen", f"127.0.0.1:{busy.getsockname()[1]}", "--socket-dir", str(tmp_path / "no-vms"),
                         "--libvirt-channel-root", str(tmp_path / "no-libvirt"), token="a-long-enough-hostd-token")  # fmt: skip
    assert out.returncode == 1
    assert f"socket_dir {tmp_path / 'no-vms'} does not exist" in out.stderr
    assert f"libvirt_channel_root {tmp_path / 'no-libvirt'} does not exist" in out.stderr
    # --help describes every flag.
    helped = hostd("--help")
    text = " ".join(helped.stdout.split())
    for flag, words in (("--listen", "TCP address of the node API"), ("--node-id", "This host's name in the controller"),
                        ("--heartbeat-interval-s", "Seconds between heartbeats"), ("--socket-dir", "Directory of <vm-id>.agent.sock sockets")):  # fmt: skip
        assert f"{flag} {flag[2:].upper().replace('-', '_')} {words}" in text, (flag, text)
    assert "``" not in helped.stdout


def test_port_in_use_is_one_line(tmp_path: Path, hostd: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        out = hostd("--config", "/dev/null", "--listen", address, "--socket-dir", str(tmp_path),
                    "--libvirt-channel-root", "", env={TOKEN_ENV: "a-long-enough-hostd-token"})  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"limiquantix-hostd: unavailable: cannot listen on {address}: Address already in use"
    ]


@pytest.mark.trio
async def test_metrics_need_the_token_unless_opened(nursery: trio.Nursery, short_tmp: Path) -> None:
    for metrics_open in (False, True):
        sock = short_tmp / f"hostd-{metrics_open}.sock"
        config = HostdConfig(listen="", unix_socket=str(sock), token="t", metrics_open=metrics_open,
                             discovery=DiscoveryConfig(socket_dir="", libvirt_channel_root=""))  # fmt: skip
        stop = trio.Event()
        await nursery.start(partial(serve, config, shutdown=stop))
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock))) as client:
            anonymous = await client.get("http://hostd/metrics")
            with_token = await client.get("http://hostd/metrics", headers={"Authorization": "Bearer t"})
        assert anonymous.status_code == (200 if metrics_open else 401)
        assert with_token.status_code == 200 and "lqx_hostd_vms" in with_token.text
        stop.set()
    assert load_config(["--token-file", "/x", "--metrics-open"]).metrics_open is True
    assert load_config(["--token-file", "/x"]).metrics_open is False


@pytest.mark.trio
async def test_serves_on_a_unix_socket(nursery: trio.Nursery, short_tmp: Path) -> None:
    sock = short_tmp / "hostd.sock"
    config = HostdConfig(
        listen="", unix_socket=str(sock), token="t",
        discovery=DiscoveryConfig(socket_dir=str(short_tmp), libvirt_channel_root=""),
    )  # fmt: skip
    stop = trio.Event()
    binds = await nursery.start(partial(serve, config, shutdown=stop))
    assert any("unix" in b for b in binds)
    assert sock.stat().st_mode & 0o777 == 0o600
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.post(
            "http://hostd/limiquantix.node.v1.NodeDaemonService/ListVMs",
            json={}, headers={"Authorization": "Bearer t"},
        )  # fmt: skip
    assert r.status_code == 200 and r.json() == {"vms": []}
    stop.set()
