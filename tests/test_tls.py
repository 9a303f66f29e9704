"""TLS between every pair: real certificates made per test session with the controller's own
``pki`` code, a real controller and a real hostd (in-process, on loopback ports chosen by the OS)
speaking HTTPS and mutual TLS, and a real simulated VM for the happy path.

Each broken setup (a hostd certificate from another CA, an expired one, one for another host
name, a controller without a client certificate when hostd requires one, hostd trusting the
wrong CA for the controller) gets a clear error on the side that refused, and nothing reaches
hostd's node API. The clients refuse to send a token over plain HTTP to another machine.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import QUIET_AGENT, SimVMPool
from inprocess import run_main_bytes
from test_controller_api import DEADLINE_S, _make_tokens

from limiquantix.cli import main as cli_main
from limiquantix.controller import pki
from limiquantix.controller.__main__ import main as controller_main
from limiquantix.controller._daemon import ControllerConfig
from limiquantix.controller._daemon import check_tls as check_controller_tls
from limiquantix.controller._daemon import serve as controller_serve
from limiquantix.controller._forward import NodeClient
from limiquantix.controller._models import NodeInfo
from limiquantix.hostd import ConfigError, DiscoveryConfig, HostdConfig, VMEntry
from limiquantix.hostd import serve as hostd_serve
from limiquantix.protocol import InsecureTransportError, TLSConfigError, errors
from limiquantix.protocol._gen import node_daemon_pb2 as node_pb
from limiquantix.protocol.rpc.server import ServerTLS, http_config
from limiquantix.tui import ApiError, ControllerClient, parse_args

VM = "/limiquantix.compute.v1.VMService"
ADMIN = "/limiquantix.compute.v1.AdminService"
HOSTD_TOKEN = "hostd-token-0123456789abcdef"
NODE_ID = "host-a"
HEARTBEAT_INTERVAL_S = 0.2


@dataclass(frozen=True)
class Certs:
    """The session's PKI: ``dir`` holds the good CA and its certificates, ``other`` another CA's."""

    dir: Path
    other: Path

    def pem(self, name: str, *, other: bool = False) -> str:
        return str((self.other if other else self.dir) / f"{name}.pem")

    def key(self, name: str, *, other: bool = False) -> str:
        return str((self.other if other else self.dir) / f"{name}.key")

    @property
    def ca(self) -> str:
        return self.pem("ca")


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    good, other = tmp_path_factory.mktemp("pki"), tmp_path_factory.mktemp("pki-other")
    local = {"dns_names": ["localhost"], "ip_addresses": ["127.0.0.1", "::1"]}
    for d in (good, other):
        pki.create_ca(d)
        pki.issue(d, "hostd", pki.CertKind.SERVER, **local)
        pki.issue(d, "controller", pki.CertKind.SERVER, **local)
        pki.issue(d, "controller-client", pki.CertKind.CLIENT)
        pki.issue(d, "node-client", pki.CertKind.CLIENT, common_name=NODE_ID)
    pki.issue(good, "other-node-client", pki.CertKind.CLIENT, common_name="host-b")
    # Another host's certificate: valid, from the right CA, but not for 127.0.0.1.
    pki.issue(good, "hostd-elsewhere", pki.CertKind.SERVER, dns_names=["elsewhere.example"])
    # Expired yesterday.
    ca_cert, ca_key = pki.load_ca(good)
    month_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    cert, key = pki.make_cert(
        ca_cert, ca_key, "hostd-expired", pki.CertKind.SERVER, ip_addresses=["127.0.0.1"], days=29, not_before=month_ago
    )
    pki.write_pair(cert, key, good / "hostd-expired.pem", good / "hostd-expired.key")
    return Certs(good, other)


@dataclass
class TLSStack:
    """A controller on HTTPS and a hostd registered with it, both in this test's nursery."""

    certs: Certs
    tmp: Path
    nursery: trio.Nursery
    tokens: dict[str, str]
    db: Path
    url: str = ""
    hostd_url: str = ""

    async def start_controller(self, **settings: Any) -> None:
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "db": str(self.db),
            "heartbeat_timeout_s": 5.0,
            "tls_cert_file": self.certs.pem("controller"),
            "tls_key_file": self.certs.key("controller"),
            "tls_client_ca_file": self.certs.ca,
            "node_ca_file": self.certs.ca,
            "node_cert_file": self.certs.pem("controller-client"),
            "node_key_file": self.certs.key("controller-client"),
        }
        values.update(settings)
        config = ControllerConfig(**values)
        self.url = (
            await self.nursery.start(
                lambda task_status: controller_serve(config, shutdown=trio.Event(), task_status=task_status)
            )
        )[0]

    async def start_hostd(
        self, *, server_cert: str = "hostd", vms: tuple[str, ...] = ("vm0",), **settings: Any
    ) -> None:
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "token": HOSTD_TOKEN,
            "node_id": NODE_ID,
            "controller_url": self.url,
            "controller_token": self.tokens["node"],
            "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
            "discovery": DiscoveryConfig(socket_dir="", libvirt_channel_root=""),
            "vms": tuple(VMEntry(id=vm, socket=str(self.tmp / f"{vm}.sock")) for vm in vms),
            "tls_cert_file": self.certs.pem(server_cert),
            "tls_key_file": self.certs.key(server_cert),
            "tls_client_ca_file": self.certs.ca,
            "controller_ca_file": self.certs.ca,
            "controller_cert_file": self.certs.pem("node-client"),
            "controller_key_file": self.certs.key("node-client"),
        }
        values.update(settings)
        config = HostdConfig(**values)
        self.hostd_url = (
            await self.nursery.start(
                lambda task_status: hostd_serve(config, shutdown=trio.Event(), task_status=task_status)
            )
        )[0]

    def client(self, **kw: Any) -> httpx.AsyncClient:
        """An API client that trusts the session's CA."""
        return httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=self.certs.ca),
            timeout=DEADLINE_S,
            headers={"Authorization": f"Bearer {self.tokens['admin']}"},
            **kw,
        )

    async def wait_registered(self) -> list[dict[str, Any]]:
        async with self.client() as client:
            with trio.fail_after(DEADLINE_S):
                while True:
                    r = await client.post(f"{self.url}{VM}/ListVMs", json={})
                    vms = r.json().get("vms", [])
                    if vms:
                        return vms
                    await trio.sleep(0.05)

    async def hostd_rpc_count(self) -> int:
        """Node API calls hostd has answered (its /metrics, over mutual TLS, whatever its own
        certificate: some tests give it a bad one)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifying nothing: no CAs to load (~0.1 s of CPU)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.load_cert_chain(self.certs.pem("controller-client"), self.certs.key("controller-client"))
        async with httpx.AsyncClient(verify=ctx, timeout=DEADLINE_S) as client:
            r = await client.get(f"{self.hostd_url}/metrics", headers={"Authorization": f"Bearer {HOSTD_TOKEN}"})
        assert r.status_code == 200, r.text
        return sum(
            int(float(line.rpartition(" ")[2]))
            for line in r.text.splitlines()
            if line.startswith("lqx_hostd_rpcs_total{")
        )


@pytest.fixture
async def tls_stack(nursery: trio.Nursery, short_tmp: Path, certs: Certs, db_tmp: Path) -> AsyncIterator[TLSStack]:
    tokens = await _make_tokens(db_tmp / "controller.db")
    yield TLSStack(certs, short_tmp, nursery, tokens, db_tmp / "controller.db")
    nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------ the happy path


@pytest.mark.trio
async def test_controller_and_hostd_over_mutual_tls(
    tls_stack: TLSStack, short_tmp: Path, simvm_pool: SimVMPool
) -> None:
    """hostd registers over TLS with its client certificate, the controller calls hostd over
    mutual TLS, and a PingAgent reaches the real agent; the TUI's client verifies with --ca-file."""
    with simvm_pool.lend({"vm0": short_tmp / "vm0.sock"}, agent_args=QUIET_AGENT) as sims:
        with trio.fail_after(DEADLINE_S):
            await sims["vm0"].wait_ready()
        await tls_stack.start_controller()
        assert tls_stack.url.startswith("https://127.0.0.1:")
        await tls_stack.start_hostd()
        assert tls_stack.hostd_url.startswith("https://")
        vms = await tls_stack.wait_registered()
        assert [v["vmId"] for v in vms] == ["vm0"]
        async with tls_stack.client() as client:
            with trio.fail_after(DEADLINE_S):
                while True:
                    r = await client.post(f"{tls_stack.url}{VM}/PingAgent", json={"vmId": "vm0"})
                    assert r.status_code == 200, r.text
                    if r.json().get("connected"):
                        break
                    await trio.sleep(0.05)
            nodes = (
                await client.post(f"{tls_stack.url}/limiquantix.compute.v1.NodeRegistryService/ListNodes", json={})
            ).json()
            assert nodes["nodes"][0]["url"] == tls_stack.hostd_url
        # The TUI's client: the CA verifies the controller; without it the system's CAs refuse it.
        async with ControllerClient(tls_stack.url, tls_stack.tokens["admin"], ca_file=tls_stack.certs.ca) as tui:
            assert (await tui.whoami()).user == "admin"
        async with ControllerClient(tls_stack.url, tls_stack.tokens["admin"]) as tui:
            with pytest.raises(ApiError, match="certificate verify failed") as info:
                await tui.whoami()
            assert info.value.code == "unavailable"
        # The command line, the same: a command over HTTPS with the CA; refused without it.
        cli = [str(Path(sys.executable).with_name("limiquantix")), "--url", tls_stack.url]
        env = {**os.environ, "LQX_TOKEN": tls_stack.tokens["admin"]}
        ran = await trio.run_process([*cli, "--ca-file", tls_stack.certs.ca, "sh", "vm0", "echo over tls"], env=env,
                                     capture_stdout=True, capture_stderr=True, check=False)  # fmt: skip
        assert (ran.returncode, ran.stdout) == (0, b"over tls\n"), ran.stderr
        # Refused: the same command line's main, in a thread of this process (tests/inprocess.py).
        refused = await trio.to_thread.run_sync(
            partial(run_main_bytes, cli_main, *cli[1:], "whoami", env={"LQX_TOKEN": tls_stack.tokens["admin"]})
        )
        assert refused.returncode == 69 and b"TLS handshake failed: certificate verify failed" in refused.stderr


@pytest.mark.trio
async def test_plain_http_to_the_https_port_is_answered_naming_https(
    tls_stack: TLSStack, caplog: pytest.LogCaptureFixture
) -> None:
    """The README's and the reference's curl lines say http://localhost:8080; make run serves
    HTTPS there. OpenSSL closed such a request without a word (curl: "Empty reply from server";
    the command line: "broke the connection after ListVMs was sent ... outcome not known"): it is
    answered 400 with Connect's error naming https, and the server serves on."""
    caplog.set_level(logging.WARNING, logger="limiquantix.protocol.rpc.server._serving")
    await tls_stack.start_controller()
    plain = "http://" + tls_stack.url.removeprefix("https://")
    headers = {"Authorization": f"Bearer {tls_stack.tokens['admin']}"}
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        for method in ("POST", "GET", "HEAD", "PUT"):
            r = await client.request(method, f"{plain}{VM}/PingAgent", json={"vmId": "vm0"}, headers=headers)
            assert r.status_code == 400, (method, r.text)
            if method != "HEAD":
                body = r.json()
                assert body["code"] == "invalid_argument" and "use an https:// URL" in body["message"]
                assert body["details"][0]["debug"]["reason"] == "plain_http"
    assert any("plain-HTTP request (an http:// URL)" in rec.getMessage() for rec in caplog.records)
    # The command line says it in one line (it read "the outcome is not known" before).
    refused = await trio.to_thread.run_sync(
        partial(run_main_bytes, cli_main, "--url", plain, "whoami", env={"LQX_TOKEN": tls_stack.tokens["admin"]})
    )
    assert refused.returncode == 1, refused.stderr
    assert b"invalid_argument: this port serves HTTPS, not plain HTTP: use an https:// URL" in refused.stderr
    # Serving on, over HTTPS.
    async with tls_stack.client() as client:
        r = await client.post(f"{tls_stack.url}/limiquantix.compute.v1.AdminService/WhoAmI", json={})
        assert r.status_code == 200 and r.json()["user"] == "admin"


@pytest.mark.trio
async def test_the_command_line_says_a_server_refused_its_tls_connection(tls_stack: TLSStack) -> None:
    """--url of a hostd (mutual TLS: it asks every client for a certificate): its alert came as
    "broke the connection ... after ListVMs was sent; it may have run: its outcome is not known";
    the server read nothing, so the command line says it refused and nothing was delivered."""
    await tls_stack.start_controller()
    await tls_stack.start_hostd()
    env = {"LQX_TOKEN": tls_stack.tokens["admin"]}
    for command in (("vms",), ("sh", "vm0", "true")):
        refused = await trio.to_thread.run_sync(
            partial(
                run_main_bytes,
                cli_main,
                "--url",
                tls_stack.hostd_url,
                "--ca-file",
                tls_stack.certs.ca,
                *command,
                env=env,
            )
        )
        assert refused.returncode == (69 if command == ("vms",) else 125), refused.stderr
        said = refused.stderr.decode()
        assert (
            f"the controller ({tls_stack.hostd_url}) refused the TLS connection: it requires a client certificate"
            in said
        )
        assert "was not delivered" in said and "outcome is not known" not in said, said


# ------------------------------------------------------- refused: controller → hostd


async def _refused_call(stack: TLSStack, match: str) -> None:
    """PingAgent through the controller fails with node_tls naming ``match``; hostd answered nothing."""
    await stack.wait_registered()
    async with stack.client() as client:
        r = await client.post(f"{stack.url}{VM}/PingAgent", json={"vmId": "vm0"})
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["code"] == "unavailable"
        assert "TLS handshake failed" in body["message"] and match in body["message"], body["message"]
        assert "nothing was sent" in body["message"]
        # A command is refused the same way, before anything runs.
        r = await client.post(f"{stack.url}{VM}/ExecuteScript", json={"vmId": "vm0", "command": "true"})
        assert r.status_code == 503 and "TLS handshake failed" in r.json()["message"]
    assert await stack.hostd_rpc_count() == 0


async def _refused_by_hostd(stack: TLSStack, refusal: str) -> None:
    """hostd refused the controller's client certificate: under TLS 1.3 its alert fails the
    controller's first read, after the request was written; hostd sends it before closing, so the
    controller says what happened (``refusal``) and that the request was not delivered, not that
    its outcome is unknown. The audit row of a refused command says failure; hostd answered nothing."""
    await stack.wait_registered()
    async with stack.client() as client:
        r = await client.post(f"{stack.url}{VM}/PingAgent", json={"vmId": "vm0"})
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["code"] == "unavailable" and body["details"][0]["debug"]["reason"] == "node_tls", body
        assert "refused the TLS connection: " + refusal in body["message"], body["message"]
        assert "PingAgent was not delivered" in body["message"]
        r = await client.post(f"{stack.url}{VM}/ExecuteScript", json={"vmId": "vm0", "command": "true"})
        assert r.status_code == 503 and refusal in r.json()["message"], r.text
        r = await client.post(f"{stack.url}{ADMIN}/QueryAudit", json={"filter": {"action": "vm.exec"}})
        assert r.status_code == 200, r.text
        [row] = r.json()["records"]
        assert row["outcome"] == "error" and refusal in row["error"], row  # not "unknown": nothing ran
    assert await stack.hostd_rpc_count() == 0


@pytest.mark.trio
async def test_hostd_certificate_from_another_ca_is_refused(tls_stack: TLSStack) -> None:
    await tls_stack.start_controller()
    other = tls_stack.certs.other
    await tls_stack.start_hostd(
        tls_cert_file=str(other / "hostd.pem"), tls_key_file=str(other / "hostd.key"), server_cert="hostd"
    )
    await _refused_call(tls_stack, "unable to get local issuer certificate")


@pytest.mark.trio
async def test_expired_hostd_certificate_is_refused(tls_stack: TLSStack) -> None:
    await tls_stack.start_controller()
    await tls_stack.start_hostd(server_cert="hostd-expired")
    await _refused_call(tls_stack, "certificate has expired")


@pytest.mark.trio
async def test_hostd_certificate_for_another_host_name_is_refused(tls_stack: TLSStack) -> None:
    await tls_stack.start_controller()
    await tls_stack.start_hostd(server_cert="hostd-elsewhere")
    await _refused_call(tls_stack, "IP address mismatch")


@pytest.mark.trio
async def test_controller_without_client_certificate_is_refused_by_hostd(
    tls_stack: TLSStack, caplog: pytest.LogCaptureFixture
) -> None:
    """hostd requires a client certificate (mutual TLS): the controller without one gets the
    alert, and hostd logs why it refused."""
    caplog.set_level(logging.WARNING, logger="limiquantix.protocol.rpc.server._serving")
    await tls_stack.start_controller(node_mtls=False)
    await tls_stack.start_hostd()
    await _refused_by_hostd(tls_stack, "it requires a client certificate and none was presented")
    assert any("TLS handshake refused: the client presented no certificate" in r.getMessage() for r in caplog.records)


@pytest.mark.trio
async def test_client_certificate_from_another_ca_is_refused_by_hostd(
    tls_stack: TLSStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="limiquantix.protocol.rpc.server._serving")
    other = tls_stack.certs.other
    await tls_stack.start_controller(
        node_cert_file=str(other / "controller-client.pem"), node_key_file=str(other / "controller-client.key")
    )
    await tls_stack.start_hostd()
    await _refused_by_hostd(tls_stack, "it does not trust the CA of this client's certificate")
    assert any(
        "client certificate not accepted: unable to get local issuer certificate" in r.getMessage()
        for r in caplog.records
    )


# ------------------------------------------------------- refused: hostd → controller


@pytest.mark.trio
async def test_hostd_refuses_a_controller_it_cannot_verify(
    tls_stack: TLSStack, caplog: pytest.LogCaptureFixture
) -> None:
    """hostd trusting another CA never sends its registration (its token) to the controller."""
    caplog.set_level(logging.WARNING, logger="limiquantix.hostd._registration")
    await tls_stack.start_controller()
    await tls_stack.start_hostd(controller_ca_file=tls_stack.certs.pem("ca", other=True))
    with trio.fail_after(DEADLINE_S):
        while not any("TLS handshake failed: certificate verify failed" in r.getMessage() for r in caplog.records):
            await trio.sleep(0.05)
    async with tls_stack.client() as client:
        r = await client.post(f"{tls_stack.url}/limiquantix.compute.v1.NodeRegistryService/ListNodes", json={})
        assert r.json().get("nodes", []) == []


async def _registration_refused(stack: TLSStack, caplog: pytest.LogCaptureFixture, match: str) -> None:
    """hostd logs its registration refused naming ``match``; no node is listed, the refusal is audited."""
    with trio.fail_after(DEADLINE_S):
        while not any(match in r.getMessage() for r in caplog.records):
            await trio.sleep(0.05)
    async with stack.client() as client:
        r = await client.post(f"{stack.url}/limiquantix.compute.v1.NodeRegistryService/ListNodes", json={})
        assert r.json().get("nodes", []) == []
        r = await client.post(
            f"{stack.url}/limiquantix.compute.v1.AdminService/QueryAudit", json={"filter": {"action": "node.register"}}
        )
        assert r.status_code == 200, r.text
        rows = r.json().get("records", [])
        assert rows and all(row["outcome"] == "denied" for row in rows), rows


@pytest.mark.trio
async def test_a_node_token_without_the_node_certificate_cannot_register(
    tls_stack: TLSStack, caplog: pytest.LogCaptureFixture
) -> None:
    """The controller asks for client certificates: a hostd with the node token but without its
    certificate is refused (a stolen token alone does not speak for a node)."""
    caplog.set_level(logging.WARNING, logger="limiquantix.hostd._registration")
    await tls_stack.start_controller()
    await tls_stack.start_hostd(controller_cert_file="", controller_key_file="")
    await _registration_refused(tls_stack, caplog, "must present its client certificate")


@pytest.mark.trio
async def test_another_nodes_certificate_cannot_register_this_node(
    tls_stack: TLSStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="limiquantix.hostd._registration")
    await tls_stack.start_controller()
    await tls_stack.start_hostd(
        controller_cert_file=tls_stack.certs.pem("other-node-client"),
        controller_key_file=tls_stack.certs.key("other-node-client"),
    )
    await _registration_refused(tls_stack, caplog, "presented the client certificate of 'host-b'")


# ----------------------------------------------------------------- plain HTTP and tokens


def test_clients_refuse_a_token_over_plain_http_to_another_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    token_env = {"LQX_TOKEN": "t"}  # never --token: the TUI refuses a token in argv
    with pytest.raises(
        ConfigError, match=r"refusing to send the API token over plain HTTP to 10\.1\.2\.3: .*--insecure"
    ):
        parse_args(["--url", "http://10.1.2.3:8080"], env=token_env)
    assert parse_args(["--url", "http://10.1.2.3:8080", "--insecure"], env=token_env).insecure
    for ok in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "https://10.1.2.3:8443"):
        assert parse_args(["--url", ok], env=token_env).url == ok
    with pytest.raises(ConfigError, match="cannot read the CA file"):
        parse_args(["--url", "https://c:1", "--ca-file", str(tmp_path / "missing.pem")], env=token_env)
    with pytest.raises(InsecureTransportError, match="plain HTTP to c.example"):
        ControllerClient("http://c.example:8080", "t")
    with pytest.raises(
        ConfigError, match="refusing to send the controller token over plain HTTP .*controller_insecure"
    ):
        HostdConfig(token="x", controller_url="http://10.1.2.3:8080", controller_token="y")
    HostdConfig(token="x", controller_url="http://10.1.2.3:8080", controller_token="y", controller_insecure=True)


@pytest.mark.trio
async def test_controller_refuses_a_node_token_over_plain_http_to_another_machine() -> None:
    node = NodeInfo(
        node_id="n",
        url="http://10.1.2.3:8081",
        token="secret",
        registered_at=0,
        last_heartbeat=None,
        reachable=True,
        vm_count=0,
    )
    async with NodeClient() as nodes:
        with pytest.raises(errors.Unavailable, match="refusing to send node n's token over plain HTTP") as info:
            await nodes.call(
                node, "PingAgent", node_pb.PingAgentRequest(vm_id="vm0"), node_pb.AgentPingResponse, budget_s=1
            )
        assert info.value.reason == "insecure_transport"


def test_tls_configuration_errors_name_the_file(tmp_path: Path, certs: Certs) -> None:
    with pytest.raises(TLSConfigError, match="cannot load the certificate .*missing.pem"):
        http_config(
            ["127.0.0.1:0"], graceful_timeout_s=1, tls=ServerTLS(cert_file=str(tmp_path / "missing.pem"), key_file="k")
        )
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match="junk.pem"):
        http_config(
            ["127.0.0.1:0"],
            graceful_timeout_s=1,
            tls=ServerTLS(cert_file=str(tmp_path / "junk.pem"), key_file=str(tmp_path / "junk.pem")),
        )
    with pytest.raises(ConfigError, match="node_ca_file turns on mutual TLS"):
        ControllerConfig(node_ca_file=certs.ca)
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file go together"):
        HostdConfig(token="x", tls_cert_file=certs.pem("hostd"))
    # At start, each daemon loads its files once: a bad one is a configuration error, named.
    junk = str(tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="cannot load the certificate .*junk.pem"):
        HostdConfig(token="x", tls_cert_file=junk, tls_key_file=junk).check_tls()
    hostd = HostdConfig(token="x", controller_url="https://c.example:8080", controller_token="t",
                        controller_ca_file=junk)  # fmt: skip
    with pytest.raises(ConfigError, match="cannot load the CA file .*junk.pem"):
        hostd.check_tls()
    with pytest.raises(ConfigError, match="cannot load the certificate .*junk.pem"):
        check_controller_tls(ControllerConfig(tls_cert_file=junk, tls_key_file=junk))
    with pytest.raises(ConfigError, match="cannot load the client certificate .*junk.pem"):
        check_controller_tls(ControllerConfig(node_ca_file=certs.ca, node_cert_file=junk, node_key_file=junk))


# ----------------------------------------------------------------------------- pki


def test_pki_cli_makes_a_ca_and_certificates_0600_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography import x509

    d = tmp_path / "pki"
    assert controller_main(["pki", "ca", "--dir", str(d)]) == 0
    assert (
        controller_main(["pki", "server", "hostd-1", "--dir", str(d), "--dns", "h1.example", "--ip", "10.0.0.5"]) == 0
    )
    assert controller_main(["pki", "client", "node-1-client", "--cn", "node-1", "--dir", str(d)]) == 0
    for f in d.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    cert = x509.load_pem_x509_certificate((d / "hostd-1.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["h1.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    client = x509.load_pem_x509_certificate((d / "node-1-client.pem").read_bytes())
    assert client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "node-1"
    # The CA signs certificates (and nothing below it does); the others only sign handshakes.
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    for c, is_ca in ((ca, True), (cert, False), (client, False)):
        basic = c.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = c.extensions.get_extension_for_class(x509.KeyUsage).value
        assert (basic.ca, basic.path_length) == (is_ca, 0 if is_ca else None)
        assert usage.digital_signature and not usage.key_encipherment
        assert (usage.key_cert_sign, usage.crl_sign) == (is_ca, is_ca)
    assert cert.issuer == ca.subject == ca.issuer
    ca_key = (d / "ca.key").read_bytes()
    capsys.readouterr()
    assert controller_main(["pki", "ca", "--dir", str(d)]) == 1
    assert "already exist" in capsys.readouterr().err and (d / "ca.key").read_bytes() == ca_key
    assert controller_main(["pki", "server", "hostd-1", "--dir", str(d)]) == 1
    assert controller_main(["pki", "server", "hostd-1", "--dir", str(d), "--force"]) == 0
    assert controller_main(["pki", "server", "bad", "--dir", str(d), "--ip", "not-an-ip"]) == 1
    assert "'not-an-ip' is not an IP address" in capsys.readouterr().err
    assert controller_main(["pki", "server", "x", "--dir", str(tmp_path / "nothing")]) == 1
    assert "create one with `pki ca`" in capsys.readouterr().err
