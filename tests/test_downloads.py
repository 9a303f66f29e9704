"""``/downloads/`` and ``packaging/cloud-init/``: a real controller (in-process, real HTTP on
loopback, temp SQLite and downloads directory) serving files, and the real install-agent.sh run
by /bin/sh against it.

Stand-ins, because the real programs would change this machine: install-agent.sh installs a
package and starts a service, so ``dpkg``, ``dpkg-query``, ``rpm``, ``systemctl`` and (in one
test) ``apt-get`` are small shell scripts that record their arguments, keep a copy of the package
they were given, and remember the "installed" version (read from the package itself with the
real, read-only ``dpkg-deb -f`` / ``rpm -qp``). PATH holds only those stand-ins and links to the
real tools the script says it needs (curl or wget, sha256sum, awk, sort ...), so no real package
manager can be reached. Everything else is real: the controller, the HTTP transfers, the
checksums, and in the tests marked slow the packages built by packaging/build-packages.sh.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
import socket
import ssl
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import reaper
import trio

from limiquantix.controller import pki as pki_tool
from limiquantix.controller._auth import Role
from limiquantix.controller._daemon import ControllerConfig, load_config
from limiquantix.controller._daemon import serve as controller_serve
from limiquantix.controller._downloads import DEFAULT_DOWNLOADS_DIR, Downloads
from limiquantix.controller.store import SQLiteStore
from limiquantix.protocol import ConfigError, __version__

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "packaging" / "cloud-init" / "install-agent.sh"
USER_DATA = ROOT / "packaging" / "cloud-init" / "install-agent.yaml"
BUILD = ROOT / "packaging" / "build-packages.sh"
DEADLINE_S = 30
NAME = "limiquantix-agent"
#: This machine's architectures, as the script maps ``uname -m``; OTHER is the one it must not take.
DEB_ARCH, RPM_ARCH, OTHER_DEB_ARCH = (
    ("arm64", "aarch64", "amd64") if platform.machine() in ("aarch64", "arm64") else ("amd64", "x86_64", "arm64")
)
#: Real tools the script (and the stand-ins) may use; anything else is absent from its PATH.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("awk", "sort", "tail", "grep", "mktemp", "rm", "uname", "id", "cat", "cp", "sha256sum")


# ------------------------------------------------------------------ the controller


@dataclass
class Server:
    url: str
    dir: Path
    tokens: dict[str, str]
    client: httpx.AsyncClient

    def headers(self, who: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.get(who, who)}"} if who else {}

    async def get(self, path: str, *, who: str | None = None, method: str = "GET", **kw: object) -> httpx.Response:
        headers = {**self.headers(who), **kw.pop("headers", {})}  # type: ignore[dict-item]
        return await self.client.request(method, f"{self.url}{path}", headers=headers, **kw)  # type: ignore[arg-type]

    async def downloads_counter(self, name: str) -> float:
        """``lqx_controller_downloads_total{file=name}`` from /metrics (0 when absent)."""
        r = await self.get("/metrics", who="admin")
        assert r.status_code == 200, r.text
        m = re.search(rf'^lqx_controller_downloads_total{{file="{re.escape(name)}"}} (\S+)$', r.text, re.M)
        return float(m.group(1)) if m else 0.0


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[StartServer]:
    """``await start_server(require_token=False, downloads_dir=<a new empty dir>, pki=None)`` -> a running
    controller (on HTTPS with ``pki``'s ``controller.pem`` when given: see :func:`private_ca`)."""
    running: list[tuple[Server, trio.Event, trio.Event]] = []

    async def start(
        *, require_token: bool = False, downloads_dir: str | None = None, pki: Path | None = None
    ) -> Server:
        n = len(running)
        db = tmp_path / f"db{n}" / "controller.db"
        tokens: dict[str, str] = {}
        async with await SQLiteStore.open(db) as store:
            for who, role in (("admin", Role.ADMIN), ("viewer", Role.VIEWER)):
                await store.ensure_user(who)
                _, tokens[who] = await store.create_token(user=who, role=role)
        directory = tmp_path / f"downloads{n}"
        directory.mkdir()
        config = ControllerConfig(
            listen="127.0.0.1:0",
            db=str(db),
            downloads_dir=str(directory) if downloads_dir is None else downloads_dir,
            downloads_require_token=require_token,
            tls_cert_file=str(pki / "controller.pem") if pki else "",
            tls_key_file=str(pki / "controller.key") if pki else "",
        )
        stop, done = trio.Event(), trio.Event()

        async def run(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await controller_serve(config, shutdown=stop, task_status=task_status)
            finally:
                done.set()

        url = (await nursery.start(run))[0]
        verify = ssl.create_default_context(cafile=str(pki / "ca.pem")) if pki else _system_context()
        server = Server(url, directory, tokens, httpx.AsyncClient(timeout=DEADLINE_S, verify=verify))
        running.append((server, stop, done))
        return server

    yield start
    for server, stop, done in running:
        await server.client.aclose()
        stop.set()
        with trio.fail_after(DEADLINE_S):
            await done.wait()


@functools.cache
def _system_context() -> ssl.SSLContext:
    """The system's CAs, loaded once for the module (verify=True would load a CA bundle for every
    client, ~0.1 CPU-s each); only plain-HTTP servers use it."""
    return ssl.create_default_context()


async def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` sent byte for byte (httpx would normalise ``..`` and ``%2e``): (status, whole response)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    with trio.fail_after(DEADLINE_S):
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            # Read up to the end of the body (Content-Length): hypercorn leaves the connection
            # open for the client to close, even after "Connection: close".
            data = b""
            while b"\r\n\r\n" not in data or len(data) < _response_length(data):
                chunk = await stream.receive_some(65536)
                assert chunk, f"connection closed early: {data!r}"
                data += chunk
    return int(data.split(b" ", 2)[1]), data


def _response_length(data: bytes) -> int:
    """The length of the whole response whose head is in ``data``."""
    head, _, _ = data.partition(b"\r\n\r\n")
    m = re.search(rb"^content-length: *(\d+)", head, re.M | re.I)
    return len(head) + 4 + (int(m.group(1)) if m else 0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ serving


@pytest.mark.trio
async def test_index_sums_download_and_head(start_server: StartServer) -> None:
    server = await start_server()
    big = os.urandom(3 * 1024 * 1024 + 17)  # several of the server's 256 KiB chunks, and a remainder
    deb = f"{NAME}_{__version__}_{DEB_ARCH}.deb"
    (server.dir / deb).write_bytes(big)
    (server.dir / "notes.txt").write_bytes(b"hello\n")
    script = SCRIPT.read_bytes()

    r = await server.get("/downloads/")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    files = {f["name"]: f for f in r.json()["files"]}
    assert list(files) == sorted(["install-agent.sh", "notes.txt", deb])
    assert files[deb]["size"] == len(big) and files[deb]["sha256"] == sha256(big)
    assert files["install-agent.sh"]["sha256"] == sha256(script)  # the built-in copy
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", files[deb]["modified"])

    r = await server.get("/downloads/SHA256SUMS")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.text == "".join(f"{files[n]['sha256']}  {n}\n" for n in sorted(files))

    r = await server.get(f"/downloads/{deb}")
    assert r.status_code == 200 and r.content == big
    assert r.headers["content-length"] == str(len(big))
    assert r.headers["content-type"] == "application/vnd.debian.binary-package"
    etag, modified = r.headers["etag"], r.headers["last-modified"]
    assert etag and modified

    head = await server.get(f"/downloads/{deb}", method="HEAD")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(big)) and head.headers["etag"] == etag
    assert head.headers["last-modified"] == modified

    r = await server.get(f"/downloads/{deb}", headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""

    r = await server.get("/downloads/install-agent.sh")
    assert r.status_code == 200 and r.content == script

    # Replaced in place (same inode and size): the cached digest is not reused.
    changed = os.urandom(len(big))
    st = (server.dir / deb).stat()
    (server.dir / deb).write_bytes(changed)
    os.utime(server.dir / deb, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert f"{sha256(changed)}  {deb}\n" in (await server.get("/downloads/SHA256SUMS")).text

    # Whole GETs are counted (not HEAD, not 304).
    assert await server.downloads_counter(deb) == 1
    assert await server.downloads_counter("install-agent.sh") == 1


@pytest.mark.trio
async def test_directory_copy_of_the_script_wins_and_missing_dir_serves_the_builtin(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server()
    (server.dir / "install-agent.sh").write_bytes(b"#!/bin/sh\necho adapted\n")
    assert (await server.get("/downloads/install-agent.sh")).content == b"#!/bin/sh\necho adapted\n"

    for directory in (str(tmp_path / "does-not-exist"), ""):
        other = await start_server(downloads_dir=directory)
        r = await other.get("/downloads/")
        assert [f["name"] for f in r.json()["files"]] == ["install-agent.sh"]
        assert (await other.get("/downloads/install-agent.sh")).content == SCRIPT.read_bytes()


@pytest.mark.trio
async def test_missing_and_refused_names_answer_404(start_server: StartServer, tmp_path: Path) -> None:
    server = await start_server()
    secret = tmp_path / "secret.deb"
    secret.write_bytes(b"SECRET-OUTSIDE-THE-DIRECTORY")
    (server.dir / "real.deb").write_bytes(b"inside")
    (server.dir / "alias.deb").symlink_to("real.deb")  # a link to a file inside: served
    (server.dir / "escape.deb").symlink_to(secret)  # absolute link outside
    (server.dir / "escape2.deb").symlink_to("../secret.deb")  # relative link outside
    (server.dir / ".hidden").write_bytes(b"dotfile")
    (server.dir / "sub").mkdir()
    (server.dir / "sub" / "x.deb").write_bytes(b"nested")
    os.mkfifo(server.dir / "pipe.deb")  # reading it would block: must be refused, not opened for reading

    assert (await server.get("/downloads/alias.deb")).content == b"inside"
    listed = [f["name"] for f in (await server.get("/downloads/")).json()["files"]]
    assert listed == ["alias.deb", "install-agent.sh", "real.deb"]

    for path in (
        "/downloads/nope.deb",
        "/downloads/escape.deb",
        "/downloads/escape2.deb",
        "/downloads/.hidden",
        "/downloads/sub",
        "/downloads/sub/x.deb",
        "/downloads/pipe.deb",
        "/downloads/../secret.deb",
        "/downloads/..%2fsecret.deb",
        "/downloads/%2e%2e/secret.deb",
        "/downloads/%2e%2e%2fsecret.deb",
        "/downloads/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        f"/downloads/{secret}",
        f"/downloads/%2f{str(secret).lstrip('/').replace('/', '%2f')}",
        "/downloads//etc/passwd",
        "/downloads/real.deb%00.txt",
        "/downloads/SHA256SUMS/x",
    ):
        status, data = await raw_get(server.url, path)
        if status == 308:  # werkzeug merges "//" into "/" by redirecting: still under /downloads/
            m = re.search(rb"^location: *(\S+)", data, re.M | re.I)
            target = urllib.parse.urlsplit(m.group(1).decode()).path if m else ""
            assert target.startswith("/downloads/") and ".." not in target, data
            status, data = await raw_get(server.url, target)
        assert status == 404, (path, data)
        assert b"SECRET" not in data and b"root:" not in data, path
    r = await server.get("/downloads/nope.deb")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


@pytest.mark.trio
async def test_token_required_mode(start_server: StartServer) -> None:
    server = await start_server(require_token=True)
    (server.dir / "a.deb").write_bytes(b"a")
    for path in ("/downloads/", "/downloads/SHA256SUMS", "/downloads/a.deb", "/downloads/install-agent.sh"):
        for who in (None, "lqx_000000000000_not-a-real-token-at-all"):
            r = await server.get(path, who=who)
            assert r.status_code == 401 and r.json()["code"] == "unauthenticated", (path, who)
        assert (await server.get(path, who="viewer")).status_code == 200, path
    # Open by default.
    assert (await (await start_server()).get("/downloads/SHA256SUMS")).status_code == 200


def test_config_keys_and_flags(tmp_path: Path) -> None:
    assert ControllerConfig().downloads_dir == str(DEFAULT_DOWNLOADS_DIR)
    assert ControllerConfig().downloads_require_token is False
    toml = tmp_path / "controller.toml"
    toml.write_text('downloads_dir = "/srv/agent"\ndownloads_require_token = true\n')
    config = load_config(["--config", str(toml)])
    assert (config.downloads_dir, config.downloads_require_token) == ("/srv/agent", True)
    config = load_config(["--config", str(toml), "--downloads-dir", "", "--downloads-require-token", "false"])
    assert (config.downloads_dir, config.downloads_require_token) == ("", False)
    with pytest.raises(ConfigError, match="downloads_require_token must be true or false"):
        load_config(["--config", str(toml), "--downloads-require-token", "maybe"])
    assert Downloads("").directory is None


# ------------------------------------------------------------------ install-agent.sh with stand-ins


_STANDINS = {
    "dpkg": r"""
printf '%s\n' "dpkg $*" >>"$S/calls"
[ "$1" = -i ] || exit 0
cp "$2" "$S/installed.pkg" && /usr/bin/dpkg-deb -f "$2" Version >"$S/version"
""",
    "apt-get": r"""
printf '%s\n' "apt-get $*" >>"$S/calls"
[ "$1" = install ] || exit 0
for last; do :; done
cp "$last" "$S/installed.pkg" && /usr/bin/dpkg-deb -f "$last" Version >"$S/version"
""",
    "dpkg-query": r"""
printf '%s\n' "dpkg-query $*" >>"$S/calls"
if [ -s "$S/version" ]; then printf 'install ok installed|%s\n' "$(cat "$S/version")"
else echo "dpkg-query: no packages found matching limiquantix-agent" >&2; exit 1; fi
""",
    "rpm": r"""
printf '%s\n' "rpm $*" >>"$S/calls"
case "$1" in
    -Uvh) cp "$2" "$S/installed.pkg" && /usr/bin/rpm -qp --qf '%{VERSION}-%{RELEASE}' "$2" >"$S/version" ;;
    -q) if [ -s "$S/version" ]; then cat "$S/version"; echo; else echo "package limiquantix-agent is not installed"; exit 1; fi ;;
esac
""",
    "systemctl": r"""
printf '%s\n' "systemctl $*" >>"$S/calls"
[ "$1" != is-system-running ] || echo running
""",
    # Tampering in transit: the real curl, then one byte of a downloaded package changed.
    "curl-tampering": r"""
/usr/bin/curl "$@" || exit
prev=; out=
for a; do [ "$prev" != -o ] || out=$a; prev=$a; done
case "$out" in *.deb|*.rpm) printf X | /bin/dd of="$out" bs=1 seek=100 conv=notrunc 2>/dev/null ;; esac
""",
}


@dataclass
class Guest:
    """A stand-in guest: a PATH of chosen tools and stand-ins, and the stand-ins' record."""

    bin: Path
    state: Path

    def calls(self) -> list[str]:
        path = self.state / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def set_installed(self, version: str) -> None:
        (self.state / "version").write_text(version + "\n")

    def installed_sha256(self) -> str:
        return sha256((self.state / "installed.pkg").read_bytes())

    async def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """install-agent.sh under /bin/sh with only this guest's PATH."""
        with trio.fail_after(DEADLINE_S):
            proc = await trio.run_process(
                ["/bin/sh", str(SCRIPT), *args],
                env=reaper.marked({"PATH": str(self.bin), "TMPDIR": str(self.state), **(env or {})}),
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture
def make_guest(tmp_path: Path) -> Callable[..., Guest]:
    """``make_guest("dpkg", "dpkg-query", "systemctl", fetcher="curl")`` -> a Guest with those stand-ins."""
    counter = [0]

    def make(*standins: str, fetcher: str = "curl") -> Guest:
        counter[0] += 1
        root = tmp_path / f"guest{counter[0]}"
        bin_dir, state = root / "bin", root / "state"
        bin_dir.mkdir(parents=True)
        state.mkdir()
        for tool in (*TOOLS, fetcher):
            real = shutil.which(tool)
            assert real, f"{tool} is missing on this machine"
            (bin_dir / tool).symlink_to(real)
        for name in standins:
            target = bin_dir / ("curl" if name == "curl-tampering" else name)
            target.unlink(missing_ok=True)
            # The stand-ins' own helpers (dpkg-deb runs tar) get the machine's PATH, not the guest's.
            header = f"#!/bin/sh\n# Stand-in for {name} (see the module docstring).\nS='{state}'\nPATH={SYSTEM_PATH}\n"
            target.write_text(header + _STANDINS[name])
            target.chmod(0o755)
        return Guest(bin_dir, state)

    return make


DEB_GUEST = ("dpkg", "dpkg-query", "systemctl")
RPM_GUEST = ("rpm", "systemctl")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.trio
async def test_script_errors(start_server: StartServer, make_guest: Callable[..., Guest]) -> None:
    server = await start_server()
    (server.dir / f"{NAME}_{__version__}_{OTHER_DEB_ARCH}.deb").write_bytes(b"other arch")
    guest = make_guest(*DEB_GUEST)

    out = await guest.run()
    assert out.returncode == 2 and "usage: install-agent.sh [--cacert CA_FILE] CONTROLLER_URL" in out.stderr

    out = await guest.run("ftp://example.invalid")
    assert out.returncode == 1 and "must start with http:// or https://" in out.stderr

    out = await guest.run(f"http://127.0.0.1:{_closed_port()}")
    assert out.returncode == 1, out
    assert "cannot fetch" in out.stderr and "is the controller running and reachable" in out.stderr

    out = await guest.run(server.url)
    assert out.returncode == 1, out
    assert f"has no .deb package for {DEB_ARCH}" in out.stderr

    bare = make_guest("systemctl")  # neither dpkg nor rpm
    out = await bare.run(server.url)
    assert out.returncode == 1 and "unsupported OS: neither dpkg nor rpm" in out.stderr, out
    assert not any(c.startswith(("dpkg -i", "rpm -U")) for c in guest.calls() + bare.calls())


@pytest.fixture
def private_ca(tmp_path: Path) -> Path:
    """A private CA (``limiquantix-controller pki``'s code) and the controller's certificate for 127.0.0.1."""
    directory = tmp_path / "pki"
    pki_tool.create_ca(directory)
    pki_tool.issue(directory, "controller", pki_tool.CertKind.SERVER, ip_addresses=["127.0.0.1"])
    return directory


@pytest.mark.trio
@pytest.mark.parametrize("fetcher", ["curl", "wget"])
async def test_script_trusts_a_private_ca_given_with_cacert(
    start_server: StartServer, make_guest: Callable[..., Guest], private_ca: Path, fetcher: str
) -> None:
    server = await start_server(pki=private_ca)
    assert server.url.startswith("https://")
    (server.dir / f"{NAME}_{__version__}_{DEB_ARCH}.deb").write_bytes(b"fake")
    guest = make_guest(*DEB_GUEST, fetcher=fetcher)
    guest.set_installed(__version__)
    ca = str(private_ca / "ca.pem")

    # The system's CAs do not know it: refused, and told how to trust it.
    out = await guest.run(server.url)
    assert out.returncode == 1 and "give that CA with --cacert CA_FILE" in out.stderr, out
    for args, env in (
        (("--cacert", ca, server.url), None),
        ((f"--cacert={ca}", server.url), None),
        ((server.url,), {"LQX_CACERT": ca}),
    ):
        out = await guest.run(*args, env=env)
        assert out.returncode == 0 and "already installed" in out.stdout, (args, out)

    # Another CA's file: the controller's certificate is not trusted, nothing is fetched.
    other = private_ca.parent / "other"
    pki_tool.create_ca(other)
    out = await guest.run("--cacert", str(other / "ca.pem"), server.url)
    assert out.returncode == 1 and "cannot fetch" in out.stderr, out
    assert not any(c.startswith(("dpkg -i", "systemctl")) for c in guest.calls())


@pytest.mark.trio
async def test_script_refuses_a_cacert_it_cannot_use(
    start_server: StartServer, make_guest: Callable[..., Guest], private_ca: Path, tmp_path: Path
) -> None:
    server = await start_server(pki=private_ca)
    guest = make_guest(*DEB_GUEST)
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    for args, message in (
        (("--cacert", str(tmp_path / "missing.pem"), server.url), "cannot read the CA file"),
        (("--cacert", str(not_pem), server.url), "holds no PEM certificate"),
        (("--cacert", str(private_ca / "ca.pem"), "http://127.0.0.1:9"), "--cacert is for a controller on https://"),
    ):
        out = await guest.run(*args)
        assert out.returncode == 1 and message in out.stderr, (args, out)
    for args in (("--cacert",), ("--bogus", server.url), ("--cacert", "x", server.url, "extra")):
        out = await guest.run(*args)
        assert out.returncode == 2 and "usage: install-agent.sh [--cacert CA_FILE]" in out.stderr, (args, out)
    assert not guest.calls()  # refused before anything was looked at or fetched


@pytest.mark.trio
async def test_script_picks_the_newest_version_and_respects_an_installed_one(
    start_server: StartServer, make_guest: Callable[..., Guest]
) -> None:
    """Fake package files: nothing is installed here, only the choice is checked."""
    server = await start_server()
    for version, arch in (("0.9.0", DEB_ARCH), ("0.10.0", DEB_ARCH), ("0.11.0", OTHER_DEB_ARCH)):
        (server.dir / f"{NAME}_{version}_{arch}.deb").write_bytes(version.encode())
    guest = make_guest(*DEB_GUEST)

    guest.set_installed("0.10.0")  # 0.10.0 > 0.9.0 as versions (not as strings); 0.11.0 is another arch
    out = await guest.run(server.url)
    assert out.returncode == 0 and f"{NAME} 0.10.0 is already installed; nothing to do" in out.stdout, out

    guest.set_installed("1.2.0")
    out = await guest.run(server.url)
    assert out.returncode == 0 and "1.2.0 is installed, newer than the controller's 0.10.0" in out.stdout, out
    assert not any(c.startswith("dpkg -i") or c.startswith("systemctl") for c in guest.calls())
    assert await server.downloads_counter(f"{NAME}_0.10.0_{DEB_ARCH}.deb") == 0


@pytest.mark.trio
async def test_script_with_a_token(start_server: StartServer, make_guest: Callable[..., Guest]) -> None:
    server = await start_server(require_token=True)
    (server.dir / f"{NAME}_{__version__}_{DEB_ARCH}.deb").write_bytes(b"fake")
    guest = make_guest(*DEB_GUEST)
    guest.set_installed(__version__)

    out = await guest.run(server.url)
    assert out.returncode == 1 and "set LQX_TOKEN" in out.stderr, out
    out = await guest.run(env={"LQX_CONTROLLER_URL": server.url, "LQX_TOKEN": server.tokens["viewer"]})
    assert out.returncode == 0 and "already installed" in out.stdout, out
    assert server.tokens["viewer"] not in out.stdout + out.stderr


def test_shellcheck() -> None:
    """The script is POSIX sh, shellcheck-clean (Debian's shellcheck, installed with apt when missing)."""
    if shutil.which("shellcheck") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "shellcheck"], check=True, capture_output=True)
    out = subprocess.run(["shellcheck", "-s", "sh", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert SCRIPT.read_text().startswith("#!/bin/sh\n") and os.access(SCRIPT, os.X_OK)
    assert subprocess.run(["sh", "-n", str(SCRIPT)]).returncode == 0


# ------------------------------------------------------------------ with the real packages (slow)


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real .deb and .rpm for this machine's architecture, built once."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [str(BUILD), "all", "--arch", DEB_ARCH], env={**os.environ, "DIST": str(out)},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deb, rpm = out / f"{NAME}_{__version__}_{DEB_ARCH}.deb", out / f"{NAME}-{__version__}-1.{RPM_ARCH}.rpm"
    assert deb.is_file() and rpm.is_file()
    return {"deb": deb, "rpm": rpm}


async def _serve_packages(start_server: StartServer, packages: dict[str, Path]) -> Server:
    """A controller serving the real packages, plus decoys the script must not take."""
    server = await start_server()
    for path in packages.values():
        shutil.copy(path, server.dir / path.name)
    (server.dir / f"{NAME}_0.0.9_{DEB_ARCH}.deb").write_bytes(b"older")
    (server.dir / f"{NAME}_99.0.0_{OTHER_DEB_ARCH}.deb").write_bytes(b"newer, other arch")
    return server


@pytest.mark.slow
@pytest.mark.trio
async def test_script_installs_the_real_deb_once(
    start_server: StartServer, make_guest: Callable[..., Guest], packages: dict[str, Path]
) -> None:
    server = await _serve_packages(start_server, packages)
    deb = packages["deb"]
    guest = make_guest(*DEB_GUEST)

    out = await guest.run(server.url)
    assert out.returncode == 0, out
    assert f"verified SHA-256 of {deb.name} ({sha256(deb.read_bytes())})" in out.stdout
    installs = [c for c in guest.calls() if c.startswith("dpkg -i ")]
    assert len(installs) == 1 and installs[0].endswith(f"/{deb.name}"), guest.calls()
    assert guest.installed_sha256() == sha256(deb.read_bytes())  # dpkg got the file, whole
    assert "systemctl enable --now limiquantix-agent.service" in guest.calls()
    assert f"installed {NAME} {__version__}" in out.stdout
    assert await server.downloads_counter(deb.name) == 1
    assert not list(guest.state.glob("lqx-install.*")), "the temp dir is left behind"

    # Second run (URL from the environment this time): the stand-in dpkg-query now reports the version.
    before = guest.calls()
    out = await guest.run(env={"LQX_CONTROLLER_URL": server.url + "/"})
    assert out.returncode == 0 and f"{NAME} {__version__} is already installed; nothing to do" in out.stdout, out
    assert [c for c in guest.calls()[len(before) :] if not c.startswith("dpkg-query ")] == []
    assert await server.downloads_counter(deb.name) == 1  # not even downloaded


@pytest.mark.slow
@pytest.mark.trio
async def test_script_uses_apt_get_when_present(
    start_server: StartServer, make_guest: Callable[..., Guest], packages: dict[str, Path]
) -> None:
    server = await _serve_packages(start_server, packages)
    guest = make_guest(*DEB_GUEST, "apt-get")
    out = await guest.run(server.url)
    assert out.returncode == 0, out
    [call] = [c for c in guest.calls() if c.startswith("apt-get ")]
    assert call.startswith("apt-get install -y") and call.endswith(f"/{packages['deb'].name}")
    assert not any(c.startswith("dpkg -i") for c in guest.calls())
    assert guest.installed_sha256() == sha256(packages["deb"].read_bytes())


@pytest.mark.slow
@pytest.mark.trio
async def test_script_refuses_a_tampered_package(
    start_server: StartServer, make_guest: Callable[..., Guest], packages: dict[str, Path]
) -> None:
    server = await _serve_packages(start_server, packages)
    guest = make_guest(*DEB_GUEST, "curl-tampering")
    out = await guest.run(server.url)
    assert out.returncode == 1, out
    assert f"checksum mismatch for {packages['deb'].name}" in out.stderr and "not installing" in out.stderr
    assert not any(c.startswith(("dpkg -i", "systemctl")) for c in guest.calls()), guest.calls()
    assert not (guest.state / "installed.pkg").exists()


@pytest.mark.slow
@pytest.mark.trio
@pytest.mark.parametrize("fetcher", ["curl", "wget"])
async def test_script_on_an_rpm_system_picks_the_rpm(
    start_server: StartServer, make_guest: Callable[..., Guest], packages: dict[str, Path], fetcher: str
) -> None:
    server = await _serve_packages(start_server, packages)
    rpm = packages["rpm"]
    guest = make_guest(*RPM_GUEST, fetcher=fetcher)
    out = await guest.run(server.url)
    assert out.returncode == 0, out
    installs = [c for c in guest.calls() if c.startswith("rpm -U")]
    assert len(installs) == 1, guest.calls()
    assert re.fullmatch(rf"rpm -Uvh {re.escape(str(guest.state))}/lqx-install\.\w+/{re.escape(rpm.name)}", installs[0])
    assert guest.installed_sha256() == sha256(rpm.read_bytes())
    out = await guest.run(server.url)
    assert out.returncode == 0 and f"{NAME} {__version__}-1 is already installed" in out.stdout, out


@pytest.mark.slow
def test_user_data_passes_cloud_init_schema(tmp_path: Path) -> None:
    """``cloud-init schema`` (Debian 12's cloud-init 22.4) on install-agent.yaml.

    cloud-init is not installed (it would run at this machine's next boot): its .deb is
    downloaded with ``apt-get download`` (cached), extracted, and its schema module run on the
    system python3 with the pure-Python libraries it imports, installed from Debian with apt.
    """
    cache = Path(os.environ.get("LIMIQUANTIX_PACKAGING_CACHE", Path.home() / ".cache/limiquantix-packaging"))
    root = cache / "cloud-init-root"
    if not (root / "usr/lib/python3/dist-packages/cloudinit").is_dir():
        debs = cache / "cloud-init-deb"
        debs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "cloud-init"], cwd=debs, check=True, capture_output=True)
        [deb] = debs.glob("cloud-init_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    libs = ("python3-yaml", "python3-jsonschema", "python3-jinja2", "python3-configobj", "python3-requests",
            "python3-jsonpatch")  # fmt: skip
    missing = subprocess.run(["dpkg-query", "-W", *libs], capture_output=True).returncode != 0
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *libs], check=True,
                       capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip

    def schema(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/usr/bin/python3", "-W", "ignore", "-m", "cloudinit.config.schema", "-c", str(path)],
            env=reaper.marked({"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root / "usr/lib/python3/dist-packages")}),
            capture_output=True, text=True,
        )  # fmt: skip

    out = schema(USER_DATA)
    assert out.returncode == 0 and "Valid cloud-config" in out.stdout, out.stdout + out.stderr
    # The check has teeth: a broken copy is refused.
    broken = tmp_path / "broken.yaml"
    broken.write_text(USER_DATA.read_text().replace("runcmd:", "runcmd: 42\nignored:"))
    assert schema(broken).returncode != 0
    text = USER_DATA.read_text()
    assert text.startswith("#cloud-config\n")
    # Saved, then run: a failed download fails the command (a pipe into sh would exit 0).
    assert (
        "curl -fsSL -o /run/lqx-install-agent.sh http://CONTROLLER:8080/downloads/install-agent.sh"
        " && sh /run/lqx-install-agent.sh http://CONTROLLER:8080" in text
    )
    assert "| sh" not in text


def test_user_data_runcmd_fails_when_the_controller_is_unreachable(tmp_path: Path) -> None:
    """The runcmd as written (only the controller's address and the saved script's path
    changed) exits non-zero when nothing answers, so cloud-init reports the failure."""
    (runcmd,) = re.findall(r"^  - \[sh, -c, '(.+)'\]$", USER_DATA.read_text(), re.MULTILINE)
    with socket.socket() as s:  # a port the OS picks, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    saved = tmp_path / "install-agent.sh"
    command = runcmd.replace("CONTROLLER:8080", closed).replace("/run/lqx-install-agent.sh", str(saved))
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and not saved.exists(), out
    assert "curl" in out.stderr
