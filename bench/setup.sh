#!/usr/bin/env bash
# Make sure the benchmark's baseline, qemu-guest-agent (Debian's package, binary qemu-ga),
# is installed. Idempotent and quiet: does nothing when qemu-ga is already on the PATH.
# The package's service is not started: postinst's invoke-rc.d is refused by policy-rc.d in
# containers, and on a real system the unit only starts when a virtio port exists; the
# benchmark starts its own qemu-ga on a Unix socket in a temp dir either way.
set -euo pipefail

# qemu-ga lives in /usr/sbin, which a non-login root shell may lack.
export PATH="$PATH:/usr/sbin:/sbin"

if command -v qemu-ga >/dev/null 2>&1; then
    exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

echo "bench/setup.sh: installing qemu-guest-agent (the baseline)" >&2
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-guest-agent >/dev/null

if ! command -v qemu-ga >/dev/null 2>&1; then
    echo "bench/setup.sh: qemu-guest-agent installed but qemu-ga is not on the PATH" >&2
    exit 1
fi
