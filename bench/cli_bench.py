#!/usr/bin/env python3
"""Benchmark ``limiquantix exec VM -- true`` against curl (issue 13, "Targets").

One stack runs on this machine, started and stopped here in a fresh temp dir (rpc_bench's
``start_stack``: a real controller process, a real hostd registered with it, one simulated
VM with the real agent). Each sample is a whole process, start-up included, as a script
or an operator runs it:

* **curl** (the baseline): ``curl -sS -X POST .../VMService/ExecuteScript`` with the bearer
  token and the body ``{"vmId": VM, "command": "exec true"}``: what ``limiquantix exec VM --
  true`` asks of the guest (a program alone goes through the guest's shell as ``exec PROG``, so
  that the program runs, never a shell builtin of its name), so that both do the same work in the
  guest: the guest's ``sh`` starting ``/bin/true``, about 0.5 ms more than the README's
  ``"command": "true"``, which ``sh`` answers with its builtin and starts no program;
* **curl, the README's body** (for the record): the same call with ``"command": "true"``;
* **limiquantix sh VM true** (for the record): the CLI sending that same body (``sh -c true``
  in the guest, the builtin);
* **limiquantix, installed**: the console script of a venv holding only the project's
  wheel (built from this checkout, installed with ``pip --no-deps``: no click, no rich, no
  httpx in it, so the run also proves that ``exec`` needs none of them), as an operator's
  ``pip install`` gives it; this is the figure with the target;
* **limiquantix, editable** (for the record): ``.venv/bin/limiquantix``, the development
  venv's, whose start-up also runs setuptools' editable-install finder (``.pth`` hook:
  pathlib, importlib.util ... on every Python start in that venv);
* **limiquantix, config file** (for the record): the installed CLI with the URL and token in
  the config file ``make run`` writes (``tui.toml``) instead of the environment, as an
  operator has it;
* **curl, stream** (for the record): curl of ExecuteScriptStream, the route the CLI calls (one
  Connect envelope in, the streamed events out): the server side of the stream beside the
  unary call's;
* floors (for the record): that venv's ``python -c pass`` (interpreter and site), and
  ``python -I -S -c pass`` (the interpreter alone); and the **Python client floor**: the least a
  Python program can do for the CLI's call, in that venv's Python (site included, as the CLI's
  script has it): the stdlib's C socket module, the request's bytes made before the run (the
  CLI's own request: same headers, same body), sent on one connection, the answer read until its
  chunked end, ``os._exit`` (:data:`_FLOOR_CLIENT`). It reads nothing, parses nothing, prints
  nothing: what the CLI costs beyond it is all of its own work, configuration included; what it
  costs beyond curl is the interpreter's start (the brief's rule for ping: "accepted at the Python
  floor ... measured in the same run").

Both ``limiquantix`` rows stream the command (ExecuteScriptStream), check its exit code
and print its output as ``limiquantix exec`` always does. The paths run interleaved, one
sample of each per round in a rotating order, so background load hits all alike; each
run's exit code is checked. Target: the installed CLI's median ≤ 1.5 × curl's median.

Prints a table and writes ``bench/results/cli.json`` (``--quick``: ``cli-quick.json``).
Exits non-zero only on errors; a missed target is reported, not fatal. See bench/README.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

BENCH_DIR: Final = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import benchlib as bl  # noqa: E402 - bench/ is not a package: found by file name
import rpc_bench  # noqa: E402

from limiquantix.protocol import __version__ as VERSION  # noqa: E402
from limiquantix.protocol import errors  # noqa: E402

__all__ = ["Settings", "install_wheel", "main", "measure"]

REPO: Final = BENCH_DIR.parent
#: Target (issue 13): the CLI's wall time over curl's, medians.
RATIO_TARGET: Final = 1.5
#: What a wheel is built from (copied first: setuptools builds in the source tree).
_SOURCES: Final = ("pyproject.toml", "README.md", "protocol", "agent", "hostd", "controller", "tui", "cli")
#: One sample's limit (a stuck run is an error, not a figure).
_RUN_TIMEOUT_S: Final = 30.0
#: The Python client floor (see the module's docstring): argv[1] the port, argv[2] a file holding
#: the request's bytes. Exits 0 once the chunked answer has ended with the command's exit code 0, 1
#: if the connection closes first, 2 for another answer.
_FLOOR_CLIENT: Final = (
    "import os, sys, _socket\n"
    "request = open(sys.argv[2], 'rb').read()\n"
    "s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
    "s.connect(('127.0.0.1', int(sys.argv[1])))\n"
    "s.sendall(request)\n"
    "answer = b''\n"
    "while not answer.endswith(b'\\r\\n0\\r\\n\\r\\n'):\n"
    "    data = s.recv(262144)\n"
    "    if not data:\n"
    "        os._exit(1)\n"
    "    answer += data\n"
    "os._exit(0 if b'\"exitCode\":0' in answer else 2)\n"
)


@dataclass(frozen=True)
class Settings:
    """What one run measures (``--quick`` shortens it)."""

    quick: bool
    rounds: int
    output: Path
    keep_workdir: bool

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> Settings:
        """Raises: SystemExit: bad flags (argparse)."""
        parser = bl.bench_parser(__doc__, "cli", "20 rounds instead of 100")
        parser.add_argument("--rounds", type=int, default=None, help="samples of each path")
        ns = parser.parse_args(argv)
        return cls(
            quick=ns.quick,
            rounds=ns.rounds or (20 if ns.quick else 100),
            output=bl.output_path("cli", ns),
            keep_workdir=ns.keep_workdir,
        )


def install_wheel(work: Path) -> Path:
    """A venv holding only this checkout's wheel (no dependencies); its ``bin/`` directory.

    Raises:
        bl.BenchError: the wheel could not be built or installed.
    """
    src = work / "src"
    src.mkdir()
    for name in _SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    wheels = work / "wheels"
    venv = work / "venv"
    steps = (
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
    )
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=work)
        if done.returncode != 0:
            raise bl.BenchError(f"{' '.join(argv[:4])}: {done.stderr[-2000:]}")
    wheel = next(wheels.glob("limiquantix-*.whl"))
    argv = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps"]
    done = subprocess.run([*argv, "--no-index", str(wheel)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise bl.BenchError(f"pip install {wheel.name}: {done.stderr[-2000:]}")
    return venv / "bin"


def _run(argv: list[str], env: dict[str, str], name: str) -> tuple[float, float]:
    """One sample: the wall time of ``argv`` and the CPU time it used (user + system, from
    ``wait4``: less moved by the machine's load than the wall time), in ms.

    Raises:
        bl.BenchError: it failed, took longer than a sample may, or printed something unexpected.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        timer = threading.Timer(_RUN_TIMEOUT_S, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        elapsed = (time.perf_counter() - t0) * 1000
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise bl.BenchError(f"{name}: exit {proc.returncode}: {stderr.decode(errors='replace')[-500:]}")
    if name.startswith("curl") and b'"exitCode":0' not in stdout.replace(b" ", b""):
        raise bl.BenchError(f"curl: unexpected answer {stdout[:300]!r}")
    return elapsed, (usage.ru_utime + usage.ru_stime) * 1000


async def measure(work: Path, settings: Settings) -> dict[str, list[tuple[float, float]]]:
    """Start the stack, take the samples, stop everything; (wall, CPU) samples in ms by path.

    Raises:
        bl.BenchError, OSError, trio.TooSlowError: the run cannot give figures.
    """
    bin_dir = await trio.to_thread.run_sync(install_wheel, work)
    bl.say(f"installed the wheel into {bin_dir.parent}")
    async with contextlib.AsyncExitStack() as stack:
        st = await rpc_bench.start_stack(stack, work, "plain", None)
        token = st.headers["Authorization"].removeprefix("Bearer ")
        config_home = work / "config-home"  # empty: no config file is read
        config_home.mkdir()
        # PYTHONDONTWRITEBYTECODE (set in some shells) would make the editable row recompile every
        # module at every start: a user's Python caches bytecode, so the runs here do too.
        base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("LQX_")}
        env = {**base, "XDG_CONFIG_HOME": str(config_home), "LQX_CONTROLLER_URL": st.url, "LQX_TOKEN": token}
        # What make run writes (scripts/run.py's write_tui_config), for this stack.
        file_home = work / "file-home"
        (file_home / "limiquantix").mkdir(parents=True)
        (file_home / "limiquantix" / "tui.toml").write_text(
            f'# Written by make run: the stack it started.\nurl = "{st.url}"\ntoken = "{token}"\n'
        )
        file_env = {**base, "XDG_CONFIG_HOME": str(file_home)}
        # The CLI's body for ``exec VM -- true`` (tests/test_cli_http.py checks it), and the README's.
        message = f'{{"vmId": "{st.vm}", "command": "exec true"}}'.encode()
        builtin = f'{{"vmId": "{st.vm}", "command": "true"}}'
        envelope = work / "stream.bin"
        envelope.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
        # The CLI's own request, byte for byte (its headers, its body), for the Python client floor.
        body = b'{"vmId": "' + st.vm.encode() + b'", "command": "exec true"}'
        port = st.url.rpartition(":")[2]
        floor_request = work / "floor-request.bin"
        floor_request.write_bytes(
            (
                f"POST /limiquantix.compute.v1.VMService/ExecuteScriptStream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Length: {len(body) + 5}\r\nConnection: close\r\nContent-Type: application/connect+json\r\n"
                f"Connect-Protocol-Version: 1\r\nConnect-Timeout-Ms: 70000\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode()
            + b"\x00"
            + len(body).to_bytes(4, "big")
            + body
        )
        curl = shutil.which("curl")
        if curl is None:
            raise bl.BenchError("curl is not installed (apt-get install curl)")
        auth = f"Authorization: Bearer {token}"
        paths = {
            "curl": [
                curl, "-sS", "-X", "POST", f"{st.url}/limiquantix.compute.v1.VMService/ExecuteScript",
                "-H", "Content-Type: application/json", "-H", auth, "-d", message.decode(),
            ],
            "curl true": [
                curl, "-sS", "-X", "POST", f"{st.url}/limiquantix.compute.v1.VMService/ExecuteScript",
                "-H", "Content-Type: application/json", "-H", auth, "-d", builtin,
            ],
            "installed": [str(bin_dir / "limiquantix"), "exec", st.vm, "--", "true"],
            "sh": [str(bin_dir / "limiquantix"), "sh", st.vm, "true"],
            "editable": [str(REPO / ".venv" / "bin" / "limiquantix"), "exec", st.vm, "--", "true"],
            "config file": [str(bin_dir / "limiquantix"), "exec", st.vm, "--", "true"],
            "curl stream": [
                curl, "-sS", "-X", "POST", f"{st.url}/limiquantix.compute.v1.VMService/ExecuteScriptStream",
                "-H", "Content-Type: application/connect+json", "-H", auth, "--data-binary", f"@{envelope}",
            ],
            "python": [str(bin_dir / "python"), "-c", "pass"],
            # What any Python client of a JSON API imports at least (json loads re, enum ...).
            "python json": [str(bin_dir / "python"), "-c", "import json, _socket"],
            "python client": [str(bin_dir / "python"), "-c", _FLOOR_CLIENT, port, str(floor_request)],
            "python -I -S": [str(bin_dir / "python"), "-I", "-S", "-c", "pass"],
        }  # fmt: skip
        envs = {name: file_env if name == "config file" else env for name in paths}
        if not Path(paths["editable"][0]).exists():
            del paths["editable"]
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
        names = list(paths)
        for name in names:  # warm-up: page cache, .pyc files, the controller's first calls
            await trio.to_thread.run_sync(_run, paths[name], envs[name], name)
        for n in range(settings.rounds):
            order = names[n % len(names) :] + names[: n % len(names)]
            for name in order:
                samples[name].append(await trio.to_thread.run_sync(_run, paths[name], envs[name], name))
        for child in st.children:
            child.check_alive()
        return samples


def figures_from(samples: dict[str, list[tuple[float, float]]], rounds: int) -> list[bl.Figure]:
    wall = {name: [w for w, _ in values] for name, values in samples.items()}
    cpu = {name: bl.median([c for _, c in values]) for name, values in samples.items()}
    curl = bl.median(wall["curl"])
    figures = [
        bl.Figure(
            "limiquantix exec VM -- true (installed wheel), median wall time",
            bl.median(wall["installed"]),
            curl,
            "ms",
            f"ratio <= {RATIO_TARGET}",
            note=f"{rounds} interleaved runs of each; baseline: curl of ExecuteScript, the same command, same run",
        ),
        bl.Figure("installed, p90 (info)", bl.percentile(wall["installed"], 90), bl.percentile(wall["curl"], 90), "ms", None),
        bl.Figure("installed, CPU time (user + system), median (info)", cpu["installed"], cpu["curl"], "ms", None),
    ]  # fmt: skip
    if "editable" in samples:
        figures.append(
            bl.Figure(
                "limiquantix exec, development venv (editable install's finder), median (info)",
                bl.median(wall["editable"]),
                curl,
                "ms",
                None,
            )
        )
    figures.append(
        bl.Figure(
            "installed, URL and token from make run's config file, median (info)",
            bl.median(wall["config file"]),
            curl,
            "ms",
            None,
        )
    )
    figures.append(
        bl.Figure(
            "curl of ExecuteScript with the README's body (command true: the shell's builtin), median (info)",
            bl.median(wall["curl true"]),
            curl,
            "ms",
            None,
        )
    )
    figures.append(
        bl.Figure(
            "limiquantix sh VM true (that same body) over it, median (info)",
            bl.median(wall["sh"]),
            bl.median(wall["curl true"]),
            "ms",
            None,
        )
    )
    floor = bl.median(wall["python client"])
    figures.append(
        bl.Figure(
            "the Python client floor: the CLI's request by the least Python program, median (info)",
            floor,
            curl,
            "ms",
            None,
        )
    )
    figures.append(
        bl.Figure(
            "limiquantix exec over the Python client floor, median (info)",
            bl.median(wall["installed"]),
            floor,
            "ms",
            None,
        )
    )
    figures.append(
        bl.Figure(
            "curl of ExecuteScriptStream (the CLI's route), median (info)",
            bl.median(wall["curl stream"]),
            curl,
            "ms",
            None,
        )
    )
    for name, what in (
        ("python json", "python -c 'import json, _socket' (a Python JSON client's floor)"),
        ("python", "python -c pass in the installed venv"),
        ("python -I -S", "python -I -S -c pass (the interpreter alone)"),
    ):
        figures.append(bl.Figure(f"{what}, median (info)", bl.median(wall[name]), curl, "ms", None))
        figures.append(bl.Figure(f"{what}, CPU time, median (info)", cpu[name], cpu["curl"], "ms", None))
    return [f.evaluate() for f in figures]


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_args(argv)
    load0 = os.getloadavg()
    try:
        with bl.workdir("lqx-cli-", keep=settings.keep_workdir) as work:
            bl.say(f"work dir {work}")
            samples = trio.run(measure, work, settings)
    except BaseException as exc:
        return bl.report_failure(
            "cli_bench", exc, (bl.BenchError, errors.AgentError, OSError, trio.TooSlowError, subprocess.TimeoutExpired)
        )
    figures = figures_from(samples, settings.rounds)
    load1 = os.getloadavg()
    context = f"load average {load0[0]:.2f} at start, {load1[0]:.2f} at end; {os.cpu_count()} CPUs"
    bl.print_table(
        figures, f"limiquantix {VERSION}" + (" (--quick)" if settings.quick else ""), context, baseline="curl"
    )
    bl.write_figures(figures, settings.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
