#!/usr/bin/env bash
# Run the Molecule scenarios (make molecule; make test runs it beside pytest).
# Installs podman/runc/debootstrap when missing, builds the base image once,
# starts a PostgreSQL server on loopback for the hosts to back up, builds and
# installs the lifeboat.postgresql collection that converge provisions from,
# runs `molecule test` per scenario, and removes every container, the server
# and the temporary collection it made, whatever happens.
# Usage: tools/molecule.sh [SCENARIO ...]   (default: every molecule/*/molecule.yml)
#        tools/molecule.sh --deps          (install the system packages it needs, and stop)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MVENV=${LIFEBOAT_MOLECULE_VENV:-$ROOT/.venv-molecule}
export CONTAINERS_CONF=$ROOT/molecule/containers.conf

# systemd: the verify step checks the rendered timers with systemd-analyze on
# this host (the containers run no systemd).
tools/system-deps.sh podman:podman runc:runc debootstrap:debootstrap \
    'postgresql-15:/usr/lib/postgresql/*/bin/initdb' systemd:systemd-analyze
# --deps: only that (make molecule-setup), so no apt runs beside pytest in make test:
# a library unpacked under a running initdb fails it.
[[ ${1:-} == --deps ]] && exit 0
tools/molecule-image.sh
[[ -x $MVENV/bin/molecule ]] || { echo "No molecule in $MVENV: run make molecule-setup" >&2; exit 1; }

if [[ $# -gt 0 ]]; then
    scenarios=("$@")
else
    scenarios=()
    for f in molecule/*/molecule.yml; do scenarios+=("$(basename "$(dirname "$f")")"); done
fi
# Containers this script may start (names from the scenarios' platforms).
containers=$(sed -n "s/^ *- name: \(lifeboat-[a-z0-9-]*\)$/\1/p" \
    "${scenarios[@]/#/molecule/}"/molecule.yml 2>/dev/null | sort -u || true)
pgroot=$(mktemp -d /var/tmp/lifeboat-molecule-pg.XXXXXX)
# converge provisions from the lifeboat.postgresql collection, built from the
# checkout now and installed here as a user would: an edit made while the
# scenario runs cannot make the idempotence step differ.
colroot=$(mktemp -d /var/tmp/lifeboat-molecule-collection.XXXXXX)

cleanup() {
    local rc=$?
    set +e
    local left=()
    for c in $containers; do
        podman container exists "$c" 2>/dev/null && left+=("$c")
    done
    if [[ ${#left[@]} -gt 0 ]]; then  # a scenario failed or was interrupted
        echo "Removing containers: ${left[*]}" >&2
        for s in "${scenarios[@]}"; do
            PATH="$MVENV/bin:$PATH" molecule destroy -s "$s" >/dev/null 2>&1
        done
        podman rm -f -t 0 "${left[@]}" >/dev/null 2>&1
    fi
    "$ROOT/.venv/bin/python" tools/molecule_pg.py stop "$pgroot"
    rm -rf "$colroot"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

while IFS='=' read -r key value; do
    export "LIFEBOAT_MOLECULE_$key=$value"
done < <("$ROOT/.venv/bin/python" tools/molecule_pg.py start "$pgroot")
mkdir -p .cache/molecule-pip
tarball=$("$ROOT/.venv/bin/python" tools/build_collection.py --build-dir "$colroot/build" | tail -n 1)
# Only this path plus site-packages (containers.podman comes from the `ansible`
# bundle there, always searched): no other lifeboat.postgresql can shadow it.
export LIFEBOAT_MOLECULE_COLLECTIONS=$colroot/collections
ANSIBLE_COLLECTIONS_PATH=$LIFEBOAT_MOLECULE_COLLECTIONS "$MVENV/bin/ansible-galaxy" \
    collection install --offline -p "$LIFEBOAT_MOLECULE_COLLECTIONS" "$tarball" >/dev/null
# pip in the containers trusts what pip here trusts (TLS-inspecting proxies).
ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
[[ -r $ca ]] || ca=/etc/ssl/certs/ca-certificates.crt
export LIFEBOAT_MOLECULE_CA_BUNDLE=$ca

export PATH="$MVENV/bin:$PATH"
export ANSIBLE_ROLES_PATH=$ROOT/roles
for s in "${scenarios[@]}"; do
    start=$(date +%s)
    molecule test -s "$s"
    echo "molecule scenario $s passed in $(( $(date +%s) - start ))s"
done
