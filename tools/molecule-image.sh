#!/usr/bin/env bash
# Build the Molecule base images once per machine: no registry images can be
# pulled here, so debootstrap a minimal Debian and import it. Like a cloud
# image, it has sudo and a non-root `admin` user with NOPASSWD sudo, which the
# scenarios log in as. Skipped when the image exists.
# The mirror is read at run time from the host's apt sources (never stored).
# Usage: tools/molecule-image.sh [SUITE ...]   (default: bookworm trixie)
#   -> localhost/lifeboat-SUITE:TAG
set -euo pipefail
# Bump when the recipe changes, so machines with an older image rebuild it.
TAG=sudo1
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")/.." && pwd)/molecule/containers.conf}

sources=/etc/apt/sources.list.d/debian.sources
mirror=""
if [[ -r $sources ]]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' "$sources")
fi

build() {
    local suite=$1 image="localhost/lifeboat-$1:$TAG"
    podman image exists "$image" && return 0
    if [[ -z $mirror ]]; then
        echo "No Debian mirror found in $sources (a URIs: line). Set one there, or build $image yourself." >&2
        return 1
    fi
    local rootfs
    rootfs=$(mktemp -d /var/tmp/lifeboat-rootfs.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$rootfs' '$rootfs.log'" RETURN
    echo "Building $image: debootstrap $suite from $mirror (about a minute, once per machine)"
    # debootstrap of a newer suite than the host's knows it as an alias of sid.
    local script=/usr/share/debootstrap/scripts/$suite
    [[ -e $script ]] || script=/usr/share/debootstrap/scripts/sid
    debootstrap --variant=minbase --include=python3,ca-certificates,sudo \
        "$suite" "$rootfs" "$mirror" "$script" >"$rootfs.log" 2>&1 \
        || { tail -20 "$rootfs.log" >&2; return 1; }
    # The login of a cloud host: a non-root user with passwordless sudo.
    chroot "$rootfs" useradd --create-home --shell /bin/bash admin
    echo 'admin ALL=(ALL:ALL) NOPASSWD: ALL' >"$rootfs/etc/sudoers.d/90-admin"
    chmod 0440 "$rootfs/etc/sudoers.d/90-admin"
    # apt inside the container uses the same mirror through the host network.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import --change 'CMD ["sleep", "infinity"]' - "$image" >/dev/null
    echo "Built $image"
}

suites=("$@")
[[ ${#suites[@]} -gt 0 ]] || suites=(bookworm trixie)
for suite in "${suites[@]}"; do
    build "$suite"
done
