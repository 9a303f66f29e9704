"""Build a minimal Debian bookworm guest image with the agent's .deb installed, for QEMU.

    python scripts/guest_image.py [--deb dist/limiquantix-agent_<ver>_amd64.deb] [--json]

Without ``--deb`` the package is built first (``packaging/build-packages.sh deb`` into a temp
dir). Prints the paths of the kernel, initrd and raw disk image (``--json``: as JSON).

Two steps, each cached under ``~/.cache/limiquantix-guest/`` (``LIMIQUANTIX_GUEST_CACHE``):

1. **rootfs**: ``debootstrap --variant=minbase`` of bookworm with :data:`PACKAGES` (systemd,
   udev, the kernel, python3, Debian's qemu-guest-agent, ...) from the mirror apt uses here,
   kept as a tarball keyed by a hash of the recipe (suite, mirror, packages, this format's
   version). About 1.5 minutes on a fresh machine.
2. **image**: the rootfs unpacked into a temp dir, :func:`configure` (hostname, fstab,
   passwordless root on the serial console, DHCP with systemd-networkd, boot-time trims), the
   .deb installed with ``chroot DIR dpkg -i``, then ``mkfs.ext4 -d DIR`` writes a raw image
   (no loop mounts, no privileges beyond root for the chroot). Keyed by the rootfs key, the
   configuration's hash and a hash of the package's *contents* (its files and control data;
   the .deb itself carries build-time mtimes), so a rebuilt but unchanged package reuses the
   image. About 15 s. The .deb installed is kept beside the image, alone in a directory
   (:attr:`GuestImage.deb`), so a controller can serve it with ``--downloads-dir`` (the
   cloud-init install path, tests/test_vm_qemu.py).

The kernel and initrd are copied out of the rootfs, so QEMU boots with ``-kernel/-initrd``
(``root=/dev/vda``): no bootloader. Boots use a qcow2 overlay on the cached image
(:mod:`qemu_guest`), so the cached image is never written to.

Missing tools (``debootstrap``, ``qemu-system-x86_64``, ``qemu-img``, ``mkfs.ext4``) are
installed with apt-get, saying so. Needs root (debootstrap, chroot). Concurrent builds of the
same image wait for each other (a lock file); the two newest images are kept, older ones are
removed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LIMIQUANTIX_GUEST_CACHE") or Path.home() / ".cache" / "limiquantix-guest")
SUITE = "bookworm"
#: What goes into the guest besides minbase. qemu-guest-agent is the benchmarks' baseline;
#: curl is what packaging/cloud-init/install-agent.yaml fetches the install script with (Debian's
#: cloud images have it).
PACKAGES = (
    "systemd", "systemd-sysv", "udev", "dbus", "linux-image-amd64", "initramfs-tools",
    "python3", "qemu-guest-agent", "iproute2", "procps", "kmod", "curl",
)  # fmt: skip
#: Bump when the rootfs recipe changes in a way the lists above do not show.
ROOTFS_FORMAT = 1
#: Host tools: command -> Debian package.
TOOLS = {
    "debootstrap": "debootstrap",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "mkfs.ext4": "e2fsprogs",
}
HOSTNAME = "lqx-guest"
#: Free space left in the image beyond the rootfs.
SLACK_MIB = 768
KEEP_IMAGES = 2
#: The image directory's subdirectory holding only the installed .deb.
DEB_DIR = "deb"

# The guest's configuration, written by configure(); its text is part of the image's key.
GUEST_FILES = {
    "etc/hostname": f"{HOSTNAME}\n",
    "etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n::1 localhost ip6-localhost ip6-loopback\n",
    "etc/fstab": "/dev/vda / ext4 rw,errors=remount-ro 0 0\n",
    # DHCP on the virtio NIC (QEMU's user network hands out 10.0.2.15).
    "etc/systemd/network/80-lqx-dhcp.network": "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n",
    # Root logs in on the serial console without a password (a throwaway test guest).
    "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf": (
        "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM\n"
    ),
    # A small journal in RAM: less disk traffic under TCG.
    "etc/systemd/journald.conf.d/lqx.conf": "[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n",
}
#: Units that only slow a test guest's boot down.
MASKED_UNITS = (
    "systemd-networkd-wait-online.service", "apt-daily.timer", "apt-daily-upgrade.timer",
    "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "systemd-timesyncd.service",
    "man-db.timer", "dpkg-db-backup.timer",
)  # fmt: skip
ENABLED_UNITS = ("systemd-networkd.service",)


@dataclass(frozen=True)
class GuestImage:
    """A built image: boot ``kernel``/``initrd`` with ``disk`` as /dev/vda.

    ``deb`` is the package installed in it, alone in its directory (``deb.parent`` can be a
    controller's ``--downloads-dir``); None for an image cached before it was kept.
    """

    kernel: Path
    initrd: Path
    disk: Path
    kernel_release: str
    key: str
    deb: Path | None = None

    @classmethod
    def load(cls, directory: Path) -> GuestImage:
        data = json.loads((directory / "image.json").read_text())
        deb = directory / DEB_DIR / data["deb"]
        return cls(
            kernel=directory / "vmlinuz", initrd=directory / "initrd.img", disk=directory / "disk.img",
            kernel_release=data["kernel_release"], key=data["key"], deb=deb if deb.is_file() else None,
        )  # fmt: skip


class GuestImageError(Exception):
    """The image could not be built; the message says why."""


def log(text: str) -> None:
    print(f"guest-image: {text}", file=sys.stderr, flush=True)


def _run(argv: list[str], what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    # debootstrap, chroot and mkfs live in /usr/sbin, which a non-login shell's PATH may lack.
    env = dict(kwargs.pop("env", None) or os.environ)  # type: ignore[call-overload]
    env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise GuestImageError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")
    return proc


def which(command: str) -> str | None:
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin:/usr/bin:/bin")


def ensure_tools(commands: tuple[str, ...] = tuple(TOOLS)) -> None:
    """Install the Debian packages of missing host tools with apt-get (saying so)."""
    missing = sorted({TOOLS[c] for c in commands if which(c) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise GuestImageError(f"missing {', '.join(missing)}; run as root (apt-get install) or install them")
    log(f"installing Debian packages {' '.join(missing)} with apt-get (needed for the QEMU guest)")
    _run(["apt-get", "update", "-q"], "apt-get update")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], "apt-get install", env=env)
    still = [c for c in commands if which(c) is None]
    if still:
        raise GuestImageError(f"still missing after apt-get install: {', '.join(still)}")


def apt_mirror() -> str:
    """The Debian mirror apt uses here (deb822 .sources or one-line sources.list)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        uris = suites = None
        for stanza in path.read_text().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith("#"):
                    k, _, v = line.partition(":")
                    fields[k.strip().lower()] = v.strip()
            uris, suites = fields.get("uris", ""), fields.get("suites", "").split()
            if fields.get("enabled", "yes") != "no" and SUITE in suites and uris:
                return uris.split()[0].rstrip("/")
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            parts = line.split("#")[0].split()
            if len(parts) >= 3 and parts[0] == "deb":
                rest = [p for p in parts[1:] if not p.startswith("[")]
                if len(rest) >= 2 and rest[1] == SUITE:
                    return rest[0].rstrip("/")
    raise GuestImageError(f"no enabled {SUITE} source in /etc/apt/sources.list*: debootstrap uses the mirror apt uses")


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rootfs_key(mirror: str) -> str:
    return _digest(ROOTFS_FORMAT, SUITE, mirror, sorted(PACKAGES))


def image_recipe_key() -> str:
    return _digest(GUEST_FILES, MASKED_UNITS, ENABLED_UNITS, SLACK_MIB)


def deb_content_key(deb: Path) -> str:
    """A hash of what the package installs (paths, modes, contents) and its control data."""
    with tempfile.TemporaryDirectory(prefix="lqx-debkey-") as tmp:
        _run(["dpkg-deb", "-R", str(deb), tmp], "dpkg-deb -R")
        h = hashlib.sha256()
        for path in sorted(Path(tmp).rglob("*")):
            rel = path.relative_to(tmp).as_posix()
            st = path.lstat()
            h.update(f"{rel}\0{st.st_mode:o}\0".encode())
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            elif path.is_file():
                h.update(path.read_bytes())
        return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_rootfs(mirror: str) -> Path:
    """The cached debootstrap tarball (built when missing)."""
    key = rootfs_key(mirror)
    tarball = CACHE / f"rootfs-{SUITE}-{key}.tar"
    with _locked("rootfs"):
        if tarball.is_file():
            return tarball
        log(f"debootstrap {SUITE} from {mirror} (about 1.5 minutes; cached in {tarball})")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="lqx-rootfs-", dir=CACHE) as tmp:
            target = Path(tmp) / "root"
            _run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(target), mirror],
                "debootstrap", timeout=1800,
            )  # fmt: skip
            # apt's downloaded .debs are not needed in the image.
            for deb in (target / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            partial = tarball.with_suffix(".tar.part")
            _run(["tar", "--numeric-owner", "--xattrs", "-C", str(target), "-cf", str(partial), "."], "tar")
            partial.rename(tarball)
        for old in CACHE.glob(f"rootfs-{SUITE}-*.tar"):
            if old != tarball:
                old.unlink()
        log(f"rootfs built in {time.monotonic() - t0:.0f} s")
        return tarball


def configure(root: Path) -> None:
    """Turn the bare rootfs into a bootable test guest (see GUEST_FILES, MASKED_UNITS)."""
    for rel, text in GUEST_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    _run(["chroot", str(root), "passwd", "-d", "root"], "passwd -d root")
    for unit in ENABLED_UNITS:
        _run(["chroot", str(root), "systemctl", "enable", unit], f"systemctl enable {unit}")
    system = root / "etc/systemd/system"
    for unit in MASKED_UNITS:
        link = system / unit
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/dev/null")
    # A fresh machine-id at first boot (systemd writes one when the file is empty).
    (root / "etc/machine-id").write_text("")


def _install_deb(root: Path, deb: Path) -> None:
    inside = root / "tmp" / deb.name
    shutil.copy2(deb, inside)
    try:
        _run(["chroot", str(root), "dpkg", "-i", f"/tmp/{deb.name}"], "dpkg -i in the chroot")
    finally:
        inside.unlink()
    enabled = root / "etc/systemd/system/multi-user.target.wants/limiquantix-agent.service"
    if not enabled.is_symlink():
        raise GuestImageError("dpkg -i did not enable limiquantix-agent.service in the chroot")


def _du_bytes(root: Path) -> int:
    out = _run(["du", "-sx", "--block-size=1", str(root)], "du").stdout
    return int(out.split()[0])


def build_image(deb: Path) -> GuestImage:
    """The cached image for this package (built when missing)."""
    ensure_tools()
    deb = deb.resolve()
    mirror = apt_mirror()
    key = f"{rootfs_key(mirror)}-{image_recipe_key()}-{deb_content_key(deb)}"
    directory = CACHE / f"image-{key}"
    if (directory / "image.json").is_file():
        os.utime(directory)  # most recently used
        return _with_deb(directory, deb)
    tarball = build_rootfs(mirror)
    with _locked("image"):
        if (directory / "image.json").is_file():
            return _with_deb(directory, deb, locked=True)
        t0 = time.monotonic()
        log(f"building the guest image with {deb.name} (cached in {directory})")
        with tempfile.TemporaryDirectory(prefix="lqx-image-", dir=CACHE) as tmp:
            root = Path(tmp) / "root"
            root.mkdir()
            _run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-xf", str(tarball)], "untar the rootfs")
            configure(root)
            _install_deb(root, deb)
            kernels = sorted((root / "boot").glob("vmlinuz-*"))
            if not kernels:
                raise GuestImageError("no /boot/vmlinuz-* in the rootfs")
            release = kernels[-1].name.removeprefix("vmlinuz-")
            initrd = root / "boot" / f"initrd.img-{release}"
            if not initrd.is_file():
                raise GuestImageError(f"no {initrd.relative_to(root)} in the rootfs")
            out = Path(tmp) / "out"
            out.mkdir()
            shutil.copyfile(kernels[-1], out / "vmlinuz")
            shutil.copyfile(initrd, out / "initrd.img")
            (out / DEB_DIR).mkdir()
            shutil.copy2(deb, out / DEB_DIR / deb.name)
            size_mib = _du_bytes(root) // (1024 * 1024) * 5 // 4 + SLACK_MIB
            _run(
                ["mkfs.ext4", "-q", "-F", "-L", "lqx-root", "-E", "root_owner=0:0", "-d", str(root),
                 str(out / "disk.img"), f"{size_mib}M"],
                "mkfs.ext4 -d",
            )  # fmt: skip
            (out / "image.json").write_text(
                json.dumps({"key": key, "kernel_release": release, "deb": deb.name, "mirror": mirror,
                            "packages": PACKAGES, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                           indent=2) + "\n"
            )  # fmt: skip
            out.rename(directory)
        _prune()
        log(f"image built in {time.monotonic() - t0:.0f} s")
        return GuestImage.load(directory)


def _with_deb(directory: Path, deb: Path, *, locked: bool = False) -> GuestImage:
    """The cached image, given a copy of ``deb`` (same contents as the one installed) if it has none
    (an image cached before the .deb was kept). ``locked``: the caller holds the image lock."""
    image = GuestImage.load(directory)
    if image.deb is not None:
        return image
    with contextlib.nullcontext() if locked else _locked("image"):
        kept = directory / DEB_DIR
        kept.mkdir(exist_ok=True)
        partial = kept / f".{deb.name}.part"
        shutil.copy2(deb, partial)
        partial.rename(kept / json.loads((directory / "image.json").read_text())["deb"])
    return GuestImage.load(directory)


def _prune() -> None:
    images = sorted(CACHE.glob("image-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in images[KEEP_IMAGES:]:
        shutil.rmtree(old, ignore_errors=True)


def build_deb(dist: Path) -> Path:
    """Build the agent's .deb into ``dist`` with packaging/build-packages.sh."""
    _run([str(ROOT / "packaging" / "build-packages.sh"), "deb"], "build-packages.sh deb",
         env={**os.environ, "DIST": str(dist)}, timeout=900)  # fmt: skip
    debs = sorted(dist.glob("limiquantix-agent_*_amd64.deb"))
    if not debs:
        raise GuestImageError(f"build-packages.sh wrote no .deb into {dist}")
    return debs[-1]


def image_for_checkout() -> GuestImage:
    """Build this checkout's .deb (in a temp dir) and return its image, from the cache when unchanged."""
    with tempfile.TemporaryDirectory(prefix="lqx-dist-") as dist:
        return build_image(build_deb(Path(dist)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb", type=Path, help="the package to install (default: build this checkout's)")
    parser.add_argument("--json", action="store_true", help="print the image's paths as JSON")
    args = parser.parse_args(argv)
    try:
        image = build_image(args.deb) if args.deb else image_for_checkout()
    except GuestImageError as exc:
        print(f"guest-image: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: None if v is None else str(v) for k, v in asdict(image).items()}, indent=2))
    else:
        print(f"kernel {image.kernel}\ninitrd {image.initrd}\ndisk   {image.disk}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
