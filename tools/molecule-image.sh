#!/usr/bin/env bash
# Build the Molecule base image localhost/lifeboat-bookworm once per machine:
# no registry images can be pulled here, so debootstrap a minimal Debian
# bookworm and import it. Skipped when the image exists.
# The mirror is read at run time from the host's apt sources (never stored).
set -euo pipefail
IMAGE=${LIFEBOAT_MOLECULE_IMAGE:-localhost/lifeboat-bookworm}
SUITE=${LIFEBOAT_MOLECULE_SUITE:-bookworm}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")/.." && pwd)/molecule/containers.conf}

if podman image exists "$IMAGE"; then
    exit 0
fi
sources=/etc/apt/sources.list.d/debian.sources
mirror=""
if [[ -r $sources ]]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' "$sources")
fi
if [[ -z $mirror ]]; then
    echo "No Debian mirror found in $sources (a URIs: line). Set one there, or build $IMAGE yourself." >&2
    exit 1
fi
rootfs=$(mktemp -d /var/tmp/lifeboat-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "Building $IMAGE: debootstrap $SUITE from $mirror (about a minute, once per machine)"
debootstrap --variant=minbase --include=python3,ca-certificates "$SUITE" "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
# apt inside the container uses the same mirror through the host network.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import --change 'CMD ["sleep", "infinity"]' - "$IMAGE" >/dev/null
echo "Built $IMAGE"
