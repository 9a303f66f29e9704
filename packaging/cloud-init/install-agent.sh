#!/bin/sh
# Install (or upgrade) the LimiQuantix guest agent from a controller's /downloads/.
#
#   curl -fsSL http://CONTROLLER:8080/downloads/install-agent.sh | sh -s -- http://CONTROLLER:8080
#   sh install-agent.sh [--cacert CA_FILE] [CONTROLLER_URL]
#
# --cacert CA_FILE: a controller on https:// whose certificate comes from a private CA (such as
# `limiquantix-controller pki ca`'s) is verified against the PEM certificate(s) in CA_FILE instead
# of the system's CAs (curl --cacert, wget --ca-certificate). Bring the file with the VM (cloud-init
# write_files, see install-agent.yaml): fetched from the controller itself it would prove nothing.
#
# Picks the package format (dpkg: .deb, else rpm: .rpm) and the architecture (uname -m: amd64/arm64
# for .deb, x86_64/aarch64 for .rpm), reads the controller's SHA256SUMS, takes the newest matching
# package, and does nothing more when that version is installed already ("already installed", exit 0).
# Otherwise it downloads the package, verifies its SHA-256, installs it (apt-get / dnf / yum / zypper
# on the local file so dependencies such as python3 are resolved, else dpkg -i / rpm -Uvh), and
# enables and starts limiquantix-agent.service (only enables it when systemd is not running).
#
# Environment:
#   LQX_CONTROLLER_URL   the controller's base URL when no argument is given
#   LQX_CACERT           the CA file when --cacert is not given
#   LQX_TOKEN            a bearer token, for a controller with downloads_require_token = true
#   LQX_PACKAGE_FORMAT   deb or rpm, to override the detection (e.g. a Debian host with rpm installed
#                        is detected as deb already; this is for stranger setups)
#
# Needs: POSIX sh, curl or wget, sha256sum, awk, sort -V (coreutils), mktemp; runs as root.
# Exit status: 0 installed or already installed, 1 failed (the message says why), 2 bad usage.
set -eu
set -f  # no pathname expansion anywhere: package names come from the network

PKG=limiquantix-agent
SERVICE=limiquantix-agent.service

say() { printf 'install-agent: %s\n' "$*"; }
die() { printf 'install-agent: error: %s\n' "$*" >&2; exit 1; }
usage() {
    printf 'usage: install-agent.sh [--cacert CA_FILE] CONTROLLER_URL   (or set LQX_CONTROLLER_URL), e.g. http://10.0.0.1:8080\n' >&2
    exit 2
}

CACERT=${LQX_CACERT:-}
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage ;;
        --cacert) [ $# -ge 2 ] || usage; CACERT=$2; shift 2 ;;
        --cacert=*) CACERT=${1#--cacert=}; shift ;;
        --) shift; break ;;
        -*) printf 'install-agent: unknown option %s\n' "$1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -le 1 ] || usage
URL=${1:-${LQX_CONTROLLER_URL:-}}
[ -n "$URL" ] || usage
URL=${URL%/}
case "$URL" in
    http://?*|https://?*) ;;
    *) die "the controller URL must start with http:// or https://, not '$URL'" ;;
esac
if [ -n "$CACERT" ]; then
    case "$URL" in
        https://*) ;;
        *) die "--cacert is for a controller on https://; $URL is plain HTTP" ;;
    esac
    if [ ! -f "$CACERT" ] || [ ! -r "$CACERT" ]; then die "cannot read the CA file $CACERT"; fi
    grep -q -e '-----BEGIN CERTIFICATE-----' "$CACERT" ||
        die "the CA file $CACERT holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
fi
[ "$(id -u)" = 0 ] || die "run as root (cloud-init's runcmd does): installing a package needs it"

# ---- what this machine takes ------------------------------------------------------------------
FORMAT=${LQX_PACKAGE_FORMAT:-}
if [ -z "$FORMAT" ]; then
    if command -v dpkg >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then FORMAT=deb
    elif command -v rpm >/dev/null 2>&1; then FORMAT=rpm
    else die "unsupported OS: neither dpkg nor rpm is installed (Debian/Ubuntu or a RHEL-family system is needed)"
    fi
fi
MACHINE=$(uname -m)
case "$MACHINE" in
    x86_64|amd64) DEB_ARCH=amd64; RPM_ARCH=x86_64 ;;
    aarch64|arm64) DEB_ARCH=arm64; RPM_ARCH=aarch64 ;;
    *) die "unsupported architecture $MACHINE: packages are built for x86_64 (amd64) and aarch64 (arm64)" ;;
esac
case "$FORMAT" in
    deb) ARCH=$DEB_ARCH ;;
    rpm) ARCH=$RPM_ARCH ;;
    *) die "LQX_PACKAGE_FORMAT must be deb or rpm, not '$FORMAT'" ;;
esac
command -v sha256sum >/dev/null 2>&1 || die "sha256sum is missing (coreutils): cannot verify the package"

if command -v curl >/dev/null 2>&1; then FETCHER=curl
elif command -v wget >/dev/null 2>&1; then FETCHER=wget
else die "neither curl nor wget is installed: cannot download from $URL"
fi

# fetch URL FILE: the body of URL into FILE (non-zero on any HTTP error or a certificate not trusted).
fetch() {
    from=$1 into=$2
    if [ "$FETCHER" = curl ]; then
        set -- -fsSL --retry 3 --connect-timeout 10
        [ -z "$CACERT" ] || set -- "$@" --cacert "$CACERT"
        if [ -n "${LQX_TOKEN:-}" ]; then
            # The header goes through a config on stdin, not argv (visible in ps).
            printf 'header = "Authorization: Bearer %s"\n' "$LQX_TOKEN" | curl "$@" -K - -o "$into" "$from"
        else
            curl "$@" -o "$into" "$from"
        fi
    else
        set -- -q -t 3 -T 30
        [ -z "$CACERT" ] || set -- "$@" --ca-certificate="$CACERT"
        [ -z "${LQX_TOKEN:-}" ] || set -- "$@" --header "Authorization: Bearer $LQX_TOKEN"
        wget "$@" -O "$into" "$from"
    fi
}

# installed_version: the installed package's version (deb: Version, rpm: VERSION-RELEASE), or nothing.
installed_version() {
    if [ "$FORMAT" = deb ]; then
        dpkg-query -W -f '${Status}|${Version}\n' "$PKG" 2>/dev/null |
            awk -F'|' '$1 ~ / installed$/ { print $2 }' || true
    else
        rpm -q --qf '%{VERSION}-%{RELEASE}\n' "$PKG" 2>/dev/null | grep -v 'not installed' || true
    fi
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/lqx-install.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 1' INT TERM

# ---- the newest package the controller has for us ---------------------------------------------
if ! fetch "$URL/downloads/SHA256SUMS" "$TMP/SHA256SUMS"; then
    hint="is the controller running and reachable from this machine?"
    [ -n "${LQX_TOKEN:-}" ] || hint="$hint (if it requires a token for downloads, set LQX_TOKEN)"
    case "$URL" in
        https://*) [ -n "$CACERT" ] ||
            hint="$hint (if its certificate comes from a private CA, give that CA with --cacert CA_FILE)" ;;
    esac
    die "cannot fetch $URL/downloads/SHA256SUMS: $hint"
fi
# Lines "<sha256>  <name>"; the version is the part of the name between the package name and arch.
CHOICE=$(awk -v fmt="$FORMAT" -v arch="$ARCH" '
    { name = $2; sub(/^\*/, "", name) }
    fmt == "deb" && name ~ ("^limiquantix-agent_[^_/]+_" arch "\\.deb$") {
        v = name; sub(/^limiquantix-agent_/, "", v); sub(/_[^_]*$/, "", v); print v, $1, name
    }
    fmt == "rpm" && name ~ ("^limiquantix-agent-[^-/]+-[^-/]+\\." arch "\\.rpm$") {
        v = name; sub(/^limiquantix-agent-/, "", v); sub(/\.[^.]*\.rpm$/, "", v); print v, $1, name
    }' "$TMP/SHA256SUMS" | sort -k1,1V | tail -n 1)
[ -n "$CHOICE" ] || die "the controller at $URL has no .$FORMAT package for $ARCH (see $URL/downloads/)"
# shellcheck disable=SC2086 # three words: version, sha256, name
set -- $CHOICE
VERSION=$1 SHA256=$2 NAME=$3

CURRENT=$(installed_version)
if [ "$CURRENT" = "$VERSION" ]; then
    say "$PKG $VERSION is already installed; nothing to do"
    exit 0
fi
if [ -n "$CURRENT" ]; then
    NEWEST=$(printf '%s\n%s\n' "$CURRENT" "$VERSION" | sort -V | tail -n 1)
    if [ "$NEWEST" = "$CURRENT" ]; then
        say "$PKG $CURRENT is installed, newer than the controller's $VERSION; leaving it"
        exit 0
    fi
fi

# ---- download, verify, install ----------------------------------------------------------------
FILE=$TMP/$NAME
say "downloading $URL/downloads/$NAME"
fetch "$URL/downloads/$NAME" "$FILE" || die "cannot download $URL/downloads/$NAME"
ACTUAL=$(sha256sum "$FILE" | awk '{ print $1 }')
[ "$ACTUAL" = "$SHA256" ] ||
    die "checksum mismatch for $NAME: SHA256SUMS says $SHA256, the download is $ACTUAL; not installing"
say "verified SHA-256 of $NAME ($SHA256)"

if [ -n "$CURRENT" ]; then say "upgrading $PKG $CURRENT to $VERSION"; else say "installing $PKG $VERSION"; fi
if [ "$FORMAT" = deb ]; then
    if command -v apt-get >/dev/null 2>&1; then
        # apt-get resolves Depends (python3) from the archive; a fresh image may need its lists first.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$FILE" ||
            { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$FILE"; } ||
            die "apt-get could not install $NAME"
    else
        dpkg -i "$FILE" || die "dpkg -i $NAME failed"
    fi
else
    if command -v dnf >/dev/null 2>&1; then dnf install -y "$FILE" || die "dnf could not install $NAME"
    elif command -v yum >/dev/null 2>&1; then yum install -y "$FILE" || die "yum could not install $NAME"
    elif command -v zypper >/dev/null 2>&1; then
        zypper --non-interactive install --allow-unsigned-rpm "$FILE" || die "zypper could not install $NAME"
    else rpm -Uvh "$FILE" || die "rpm -Uvh $NAME failed"
    fi
fi

# ---- the service ------------------------------------------------------------------------------
# The package's own scripts enable and start it already; this makes sure, and says so.
if command -v systemctl >/dev/null 2>&1; then
    STATE=$(systemctl is-system-running 2>/dev/null || true)
    case "$STATE" in
        offline|unknown|"")
            systemctl enable "$SERVICE" || die "systemctl enable $SERVICE failed"
            say "systemd is not running here: $SERVICE enabled for the next boot" ;;
        *)
            systemctl enable --now "$SERVICE" || die "systemctl enable --now $SERVICE failed"
            say "$SERVICE enabled and started" ;;
    esac
else
    say "no systemctl: start /usr/bin/limiquantix-agent with this system's service manager"
fi
say "installed $PKG $VERSION ($NAME)"
