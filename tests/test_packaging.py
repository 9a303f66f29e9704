"""The guest agent's .deb and .rpm (packaging/build-packages.sh), built and inspected here.

The real proof available in this container: the .deb is extracted into a temp root and its
launcher runs the agent on the machine's own /usr/bin/python3 (Debian's, not the venv) with
only the vendored dependencies; a client pings it over a Unix socket. Installing the package
into a booted guest (the QEMU VM proof of issue 6) is not done here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from limiquantix.protocol import AgentClient, __version__

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "packaging" / "build-packages.sh"
NAME = "limiquantix-agent"
LIBDIR = "usr/lib/limiquantix-agent"
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build both packages once (the script installs dpkg-dev / rpm itself when missing)."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [str(SCRIPT), "all", "--arch", "amd64"], env={**os.environ, "DIST": str(out)},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="module")
def deb(dist: Path) -> Path:
    path = dist / f"{NAME}_{__version__}_amd64.deb"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def extracted(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def _field(info: str, name: str) -> str:
    m = re.search(rf"^ {name}: (.*)$", info, re.M)
    assert m, f"no {name} in control:\n{info}"
    return m.group(1).strip()


def test_deb_control_and_size(deb: Path) -> None:
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], check=True, capture_output=True, text=True).stdout
    assert _field(info, "Package") == NAME
    assert _field(info, "Version") == __version__
    assert _field(info, "Architecture") == "amd64"
    assert "python3 (>= 3.10)" in _field(info, "Depends")
    assert int(_field(info, "Installed-Size")) * 1024 <= 25 * 1024 * 1024  # KiB -> bytes, target <= 25 MiB
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert script in info


def test_deb_contents(deb: Path, extracted: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True, text=True).stdout
    paths = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    for p in (
        "/usr/bin/limiquantix-agent",
        "/usr/lib/systemd/system/limiquantix-agent.service",
        "/usr/lib/udev/rules.d/99-limiquantix-agent.rules",
        "/etc/limiquantix/agent.toml",
        f"/{LIBDIR}/trio/__init__.py",
        f"/{LIBDIR}/google/protobuf/__init__.py",
        f"/{LIBDIR}/psutil/__init__.py",
        f"/{LIBDIR}/tomli/__init__.py",
        f"/{LIBDIR}/exceptiongroup/__init__.py",
        f"/{LIBDIR}/limiquantix/agent/__main__.py",
        f"/{LIBDIR}/limiquantix/protocol/_agentclient.py",
        f"/{LIBDIR}/limiquantix/protocol/_gen/agent_pb2.py",
    ):
        assert p in paths, p
    # Only the agent's side: no hostd/controller, no rpc layer (httpx, quart, hypercorn) nor how
    # httpx is imported, no daemons' metrics (prometheus_client), no namespace __init__; the rest
    # of protocol/ whole.
    assert not any(p.startswith(f"/{LIBDIR}/limiquantix/hostd") for p in paths)
    assert not any(p.startswith(f"/{LIBDIR}/limiquantix/protocol/rpc") for p in paths)
    assert f"/{LIBDIR}/limiquantix/protocol/_httpstack.py" not in paths
    shipped = {
        p.removeprefix(f"/{LIBDIR}/limiquantix/") for p in paths if p.startswith(f"/{LIBDIR}/limiquantix/protocol/")
    }
    source = {
        str(f.relative_to(ROOT)) for f in (ROOT / "protocol").rglob("*")
        if f.is_file() and f.suffix in (".py", ".pyi") and "__pycache__" not in f.parts and "rpc" not in f.parts
        and f.name not in ("_daemon.py", "_httpstack.py")
    }  # fmt: skip
    assert source <= shipped, sorted(source - shipped)
    # What ships imports no server or HTTP library: it must load on a guest without them.
    for rel in shipped:
        if rel.endswith(".py"):
            text = (extracted / LIBDIR / "limiquantix" / rel).read_text()
            assert not re.search(
                r"^\s*(from|import) (quart|hypercorn|httpx|werkzeug|prometheus_client)\b", text, re.M
            ), rel
    assert f"/{LIBDIR}/limiquantix/__init__.py" not in paths
    # Vendored extension modules are abi3 (any CPython >= 3.10), never one interpreter's build.
    sos = [p for p in paths if p.endswith(".so")]
    assert sos and all(".abi3." in p for p in sos), sos
    assert "-rwxr-xr-x" in next(line for line in listing.splitlines() if line.endswith("/usr/bin/limiquantix-agent"))

    control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True).stdout
    assert "Package: limiquantix-agent" in control
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["dpkg-deb", "-e", str(deb), d], check=True)
        assert Path(d, "conffiles").read_text().split() == ["/etc/limiquantix/agent.toml"]
        postinst = Path(d, "postinst").read_text()
        assert "[ -d /run/systemd/system ]" in postinst and "enable" in postinst and "restart" in postinst
        assert "stop" in Path(d, "prerm").read_text()
        assert "rm -f /etc/limiquantix/agent.toml" in Path(d, "postrm").read_text()
        for s in ("postinst", "prerm", "postrm"):
            subprocess.run(["sh", "-n", str(Path(d, s))], check=True)

    # The conffile is the agent's own commented default configuration.
    toml = (extracted / "etc/limiquantix/agent.toml").read_text()
    assert 'transport = "virtio"' in toml and "/dev/virtio-ports/org.limiquantix.agent.0" in toml


def test_udev_rule(extracted: Path) -> None:
    """udevadm has no offline `verify` in Debian 12's systemd 252: the rule's keys are checked here."""
    lines = [
        line for line in (extracted / "usr/lib/udev/rules.d/99-limiquantix-agent.rules").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    assert len(lines) == 1
    keys = [k.strip() for k in lines[0].split(",")]
    assert keys == [
        'SUBSYSTEM=="virtio-ports"',
        'ATTR{name}=="org.limiquantix.agent.0"',
        'TAG+="systemd"',
        'ENV{SYSTEMD_WANTS}+="limiquantix-agent.service"',
    ]


def test_systemd_unit_verifies(extracted: Path, tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the shipped unit.

    In this container systemd is not PID 1, but ``verify`` works offline. It checks that
    ExecStart exists, so the unit is verified with ExecStart pointing at the extracted launcher
    (``--root`` cannot be used: the temp root has no sysinit.target). Unknown keys are only
    warnings there (exit 0), so any output fails the test too.
    """
    if shutil.which("systemd-analyze") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "systemd"], check=True, capture_output=True)
    unit = (extracted / "usr/lib/systemd/system/limiquantix-agent.service").read_text()
    for line in ("Restart=always", "RestartSec=1", "WantedBy=multi-user.target",
                 "ExecStart=/usr/bin/limiquantix-agent"):  # fmt: skip
        assert line in unit
    # No hardening that would break writing files, chpasswd or shutdown.
    for bad in ("ProtectSystem", "ProtectHome", "ReadOnlyPaths", "NoNewPrivileges", "CapabilityBoundingSet",
                "PrivateDevices", "DynamicUser", "User="):  # fmt: skip
        assert bad not in unit
    copy = tmp_path / "limiquantix-agent.service"
    copy.write_text(unit.replace("/usr/bin/limiquantix-agent", str(extracted / "usr/bin/limiquantix-agent")))
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


def test_rpm(dist: Path) -> None:
    rpm = dist / f"{NAME}-{__version__}-1.x86_64.rpm"
    assert rpm.is_file()
    files = subprocess.run(["rpm", "-qpl", str(rpm)], check=True, capture_output=True, text=True).stdout.split()
    for p in ("/usr/bin/limiquantix-agent", "/usr/lib/systemd/system/limiquantix-agent.service",
              "/usr/lib/udev/rules.d/99-limiquantix-agent.rules", f"/{LIBDIR}/trio/__init__.py",
              f"/{LIBDIR}/limiquantix/agent/__main__.py"):  # fmt: skip
        assert p in files, p
    config = subprocess.run(["rpm", "-qpc", str(rpm)], check=True, capture_output=True, text=True).stdout.split()
    assert config == ["/etc/limiquantix/agent.toml"]
    dump = subprocess.run(["rpm", "-qp", "--dump", str(rpm)], check=True, capture_output=True, text=True).stdout
    assert any(line.startswith("/etc/limiquantix/agent.toml ") for line in dump.splitlines())
    requires = subprocess.run(["rpm", "-qpR", str(rpm)], check=True, capture_output=True, text=True).stdout
    assert "python3 >= 3.10" in requires
    scripts = subprocess.run(["rpm", "-qp", "--scripts", str(rpm)], check=True, capture_output=True, text=True).stdout
    assert "systemctl enable" in scripts and "systemctl stop" in scripts and "try-restart" in scripts
    size = int(subprocess.run(["rpm", "-qp", "--qf", "%{SIZE}", str(rpm)], check=True, capture_output=True,
                              text=True).stdout)  # fmt: skip
    assert size <= 25 * 1024 * 1024


@pytest.fixture
def packaged_agent(extracted: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is missing")
    with tempfile.TemporaryDirectory(prefix="lqpkg-") as d:
        sock, log = f"{d}/agent.sock", Path(d, "agent.log")
        # Only the system's directories on PATH: the launcher must pick Debian's python3, and
        # -I keeps the venv and PYTHONPATH out.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": "/nonexistent", "HOME": d}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(extracted / "usr/bin/limiquantix-agent"), "--config", "/dev/null",
                 "--transport", "unix-listen", "--socket", sock, "--telemetry-interval-s", "0"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=d,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(sock):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.02)
            yield proc, sock, log
        finally:
            proc.kill()
            proc.wait()


def test_extracted_deb_runs_on_system_python(packaged_agent: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    proc, sock, log = packaged_agent
    exe = os.path.realpath(f"/proc/{proc.pid}/exe")
    assert exe == os.path.realpath(SYSTEM_PYTHON), exe
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-I" in cmdline and b"-S" in cmdline

    async def ping() -> bytes:
        async with AgentClient.connect_unix(sock) as client:
            return (await client.ping(b"packaged")).payload

    assert trio.run(ping) == b"packaged", log.read_text(errors="replace")


def test_launcher_reports_version_and_config(extracted: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    launcher = str(extracted / "usr/bin/limiquantix-agent")
    out = subprocess.run([launcher, "--version"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"limiquantix-agent {__version__}"
    cfg = subprocess.run([launcher, "--config", "/dev/null", "--print-config"], env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert cfg.strip() == (extracted / "etc/limiquantix/agent.toml").read_text().strip()


def test_launcher_picks_python_by_name(extracted: Path, tmp_path: Path) -> None:
    """The launcher starts one interpreter, not two: where a candidate is, or links to,
    python3.N in its directory, that decides without running it; an unversioned one is asked.
    Stand-ins record being run. (Each process started costs a tenth of a second or more at
    boot in a slow guest, where the announce time is a target.)"""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runs = tmp_path / "runs"

    def stand_in(name: str, *, exit_code: int) -> Path:
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> {runs}\nexit {exit_code}\n')
        path.chmod(0o755)
        return path

    # python3 is a link to a too-old python3.9: rejected by its name, never run.
    stand_in("python3.9", exit_code=1)
    (bin_dir / "python3").symlink_to("python3.9")
    # python3.11 is the real interpreter (the machine's own, whatever its version: the name decides).
    (bin_dir / "python3.11").symlink_to(os.path.realpath(SYSTEM_PYTHON))
    launcher = str(extracted / "usr/bin/limiquantix-agent")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    out = subprocess.run([launcher, "--version"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"limiquantix-agent {__version__}"
    assert not runs.exists(), runs.read_text()

    # An explicit interpreter with an unversioned name is asked for its version (it says "too old").
    stand_in("custom-python", exit_code=1)
    proc = subprocess.run([launcher, "--version"], env={**env, "LIMIQUANTIX_AGENT_PYTHON": "custom-python"},
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert proc.stdout.strip() == f"limiquantix-agent {__version__}"  # then python3.11 ran it
    assert runs.read_text().startswith("custom-python -c import sys;")

    # Started through a link from another directory: the private directory is still found.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "lqa").symlink_to(launcher)
    out = subprocess.run([str(tmp_path / "elsewhere" / "lqa"), "--version"], env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert out.strip() == f"limiquantix-agent {__version__}"

    # Nothing new enough: a clear error, exit 1.
    (bin_dir / "python3.11").unlink()
    proc = subprocess.run([launcher, "--version"], env={"PATH": str(bin_dir)}, capture_output=True, text=True)
    assert proc.returncode == 1 and "needs Python 3.10 or newer" in proc.stderr


def test_launcher_compiles_bytecode(extracted: Path, tmp_path: Path) -> None:
    """--compile-bytecode (what postinst runs) byte-compiles the private directory for the
    python3 the agent runs on, so a slow guest's first start does not compile ~300 modules."""
    lib = tmp_path / LIBDIR
    shutil.copytree(extracted / LIBDIR, lib, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "usr/bin").mkdir(parents=True)
    shutil.copy2(extracted / "usr/bin/limiquantix-agent", tmp_path / "usr/bin/limiquantix-agent")
    assert not list(lib.rglob("*.pyc"))
    subprocess.run([str(tmp_path / "usr/bin/limiquantix-agent"), "--compile-bytecode"],
                   env={"PATH": "/usr/bin:/bin"}, check=True, timeout=300)  # fmt: skip
    compiled = {p.parent.parent / p.name.split(".")[0] for p in lib.rglob("__pycache__/*.pyc")}
    assert lib / "limiquantix/agent/_daemon" in compiled and lib / "trio/_core/_run" in compiled
    for script in ("debian/postinst", "limiquantix-agent.spec"):
        assert "limiquantix-agent --compile-bytecode" in (ROOT / "packaging" / script).read_text()


def test_arm64_packages(tmp_path: Path) -> None:
    """--arch arm64 vendors aarch64 extension modules (ELF e_machine 183) into both packages."""
    proc = subprocess.run(
        [str(SCRIPT), "all", "--arch", "arm64"], env={**os.environ, "DIST": str(tmp_path)},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deb = tmp_path / f"{NAME}_{__version__}_arm64.deb"
    rpm = tmp_path / f"{NAME}-{__version__}-1.aarch64.rpm"
    assert rpm.is_file()
    assert subprocess.run(["rpm", "-qp", "--qf", "%{ARCH}", str(rpm)], check=True, capture_output=True,
                          text=True).stdout == "aarch64"  # fmt: skip
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    sos = list((root / LIBDIR).rglob("*.so"))
    assert sos
    for so in sos:
        assert int.from_bytes(so.read_bytes()[18:20], "little") == 183, so
