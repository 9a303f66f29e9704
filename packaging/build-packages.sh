#!/usr/bin/env bash
# Build the guest agent's packages:
#   packaging/build-packages.sh deb|rpm|all [--arch amd64|arm64]
# -> dist/limiquantix-agent_<version>_<arch>.deb and dist/limiquantix-agent-<version>-1.<rpmarch>.rpm
# The agent's Python dependencies (trio, protobuf, psutil, tomli for 3.10) are vendored as
# pure-Python and abi3 wheels for the target architecture into /usr/lib/limiquantix-agent/.
# Missing build tools (dpkg-deb, rpmbuild) are installed with apt-get, and it says so.
# Wheels are cached in ${LIMIQUANTIX_PACKAGING_CACHE:-~/.cache/limiquantix-packaging}.
set -euo pipefail

usage() { echo "usage: $0 deb|rpm|all [--arch amd64|arm64]" >&2; exit 2; }
[ $# -ge 1 ] || usage
KIND=$1; shift
case "$KIND" in deb|rpm|all) ;; *) usage ;; esac
ARCH=amd64
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) [ $# -ge 2 ] || usage; ARCH=$2; shift 2 ;;
        --arch=*) ARCH=${1#--arch=}; shift ;;
        *) usage ;;
    esac
done
case "$ARCH" in
    amd64) RPMARCH=x86_64 ;;
    arm64) RPMARCH=aarch64 ;;
    *) echo "build-packages: unsupported arch $ARCH (amd64 or arm64)" >&2; exit 2 ;;
esac

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DIST=${DIST:-$ROOT/dist}
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/protocol/_version.py")
[ -n "$VERSION" ] || { echo "build-packages: no __version__ in protocol/_version.py" >&2; exit 1; }
NAME=limiquantix-agent
LIBDIR=/usr/lib/$NAME

# A Python with pip, for `pip download` (the project's venv when there is one).
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need_tool() {  # need_tool <command> <debian package>
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "build-packages: $1 not found; installing Debian package $2 with apt-get" >&2
    as_root apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$2" >/dev/null
    command -v "$1" >/dev/null 2>&1 || { echo "build-packages: $1 still missing after installing $2" >&2; exit 1; }
}

# ---- vendored wheels -------------------------------------------------------------------------
# Requirements of the agent only (not hostd's / the controller's). Keep in step with pyproject.toml.
REQS=("trio>=0.25" "protobuf>=7.35.1,<8" "psutil>=5.9")
# For Python 3.10 only (pip evaluates markers with the interpreter running it, so list them here):
# trio's exceptiongroup (+ typing_extensions) and tomli, as pure wheels (not tomli's mypyc cp310 build).
PY310_REQS=("tomli>=2.0" "exceptiongroup>=1.2" "typing_extensions>=4.6")
KEY=$(printf '%s\n' "$ARCH" "${REQS[@]}" "${PY310_REQS[@]}" | sha256sum | cut -c1-16)
CACHE=${LIMIQUANTIX_PACKAGING_CACHE:-$HOME/.cache/limiquantix-packaging}/wheels-$ARCH-$KEY
if [ ! -f "$CACHE/.complete" ]; then
    echo "build-packages: downloading wheels for $ARCH into $CACHE" >&2
    rm -rf "$CACHE"; mkdir -p "$CACHE"
    # CPython 3.10 tags accept abi3 (cp3x-abi3 with x <= 10) and pure wheels, which also run on 3.11+.
    "$PY" -m pip download -q --disable-pip-version-check --dest "$CACHE" --only-binary=:all: \
        --platform "manylinux2014_$RPMARCH" --python-version 3.10 --implementation cp \
        --abi abi3 --abi none "${REQS[@]}"
    "$PY" -m pip download -q --disable-pip-version-check --dest "$CACHE" --only-binary=:all: \
        --platform any --python-version 3.10 --implementation py --abi none "${PY310_REQS[@]}"
    touch "$CACHE/.complete"
fi

# ---- staging tree (shared by both package formats) -------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lqpkg.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/root
mkdir -p "$STAGE$LIBDIR" "$STAGE/usr/bin" "$STAGE/usr/lib/systemd/system" "$STAGE/usr/lib/udev/rules.d" \
    "$STAGE/etc/limiquantix" "$STAGE/usr/share/doc/$NAME"

for whl in "$CACHE"/*.whl; do
    "$PY" -m zipfile -e "$whl" "$STAGE$LIBDIR"
done
# Tests and caches are not needed on a guest.
rm -rf "$STAGE${LIBDIR:?}"/psutil/tests "$STAGE${LIBDIR:?}"/bin
find "$STAGE$LIBDIR" -name __pycache__ -prune -exec rm -rf {} +

# Our packages, as the namespace package limiquantix.* (no limiquantix/__init__.py).
# protocol/ ships whole but for protocol/rpc/ (the HTTP rpc layer: client on httpx, server on
# quart and hypercorn), protocol/_httpstack.py (how httpx is imported) and protocol/_daemon.py
# (hostd's and the controller's metrics, on prometheus_client): the agent speaks frames over
# virtio-serial and never imports them.
mkdir -p "$STAGE$LIBDIR/limiquantix"
for pkg in agent protocol; do
    (cd "$ROOT" && find "$pkg" -name __pycache__ -prune -o -type f \( -name '*.py' -o -name '*.pyi' -o -name py.typed \) -print) |
    while read -r f; do
        case $f in protocol/rpc/* | protocol/_httpstack.py | protocol/_daemon.py) continue ;; esac
        install -D -m 0644 "$ROOT/$f" "$STAGE$LIBDIR/limiquantix/$f"
    done
done

install -m 0755 "$HERE/limiquantix-agent.sh" "$STAGE/usr/bin/$NAME"
install -m 0644 "$HERE/limiquantix-agent.service" "$STAGE/usr/lib/systemd/system/$NAME.service"
install -m 0644 "$HERE/99-limiquantix-agent.rules" "$STAGE/usr/lib/udev/rules.d/99-limiquantix-agent.rules"
install -m 0644 "$HERE/README.md" "$STAGE/usr/share/doc/$NAME/README.md"
# The default configuration, every key commented with its meaning (from the agent itself): run
# from the staged tree; for a foreign --arch (its .so files cannot load here) the same sources run
# on the build Python's own trio/protobuf/psutil.
print_config='import sys; sys.path.insert(0, sys.argv.pop(1))
from limiquantix.agent.__main__ import main
sys.exit(main(["--config", "/dev/null", "--print-config"]))'
if ! "$PY" -I -c "$print_config" "$STAGE$LIBDIR" >"$STAGE/etc/limiquantix/agent.toml" 2>"$WORK/config.err"; then
    mkdir -p "$WORK/ours" && cp -a "$STAGE$LIBDIR/limiquantix" "$WORK/ours/"
    "$PY" -I -c "$print_config" "$WORK/ours" >"$STAGE/etc/limiquantix/agent.toml" ||
        { cat "$WORK/config.err" >&2; exit 1; }
fi
chmod 0644 "$STAGE/etc/limiquantix/agent.toml"
find "$STAGE$LIBDIR" -name __pycache__ -prune -exec rm -rf {} +
find "$STAGE" -type d -exec chmod 0755 {} +

mkdir -p "$DIST"

build_deb() {
    need_tool dpkg-deb dpkg
    local D=$WORK/deb
    rm -rf "$D"; cp -a "$STAGE" "$D"
    mkdir -p "$D/DEBIAN"
    local size; size=$(du -sk --exclude=DEBIAN "$D" | cut -f1)
    cat >"$D/DEBIAN/control" <<CTL
Package: $NAME
Version: $VERSION
Architecture: $ARCH
Maintainer: LimiQuantix <dev@limiquantix.invalid>
Installed-Size: $size
Depends: python3 (>= 3.10)
Section: admin
Priority: optional
Homepage: https://limiquantix.invalid/
Description: LimiQuantix guest agent for KVM/QEMU virtual machines
 Serves the host over the virtio-serial port org.limiquantix.agent.0:
 commands, files, telemetry and shutdown. Its Python dependencies are
 vendored in $LIBDIR; it runs on the distribution's python3.
CTL
    echo /etc/limiquantix/agent.toml >"$D/DEBIAN/conffiles"
    install -m 0755 "$HERE/debian/postinst" "$HERE/debian/prerm" "$HERE/debian/postrm" "$D/DEBIAN/"
    local out=$DIST/${NAME}_${VERSION}_${ARCH}.deb
    dpkg-deb --root-owner-group -Zxz --build "$D" "$out" >/dev/null
    echo "$out"
}

build_rpm() {
    need_tool rpmbuild rpm
    local top=$WORK/rpmbuild
    mkdir -p "$top"/{BUILD,RPMS,SOURCES,SPECS,SRPMS,BUILDROOT}
    rpmbuild -bb --quiet --target "$RPMARCH" \
        --define "_topdir $top" \
        --define "_stage $STAGE" \
        --define "_lq_version $VERSION" \
        --define "_lq_arch $RPMARCH" \
        "$HERE/limiquantix-agent.spec" >"$WORK/rpmbuild.log" 2>&1 || { cat "$WORK/rpmbuild.log" >&2; exit 1; }
    local built; built=$(find "$top/RPMS" -name '*.rpm' | head -n1)
    local out=$DIST/$NAME-$VERSION-1.$RPMARCH.rpm
    cp "$built" "$out"
    echo "$out"
}

case "$KIND" in
    deb) build_deb ;;
    rpm) build_rpm ;;
    all) build_deb; build_rpm ;;
esac
