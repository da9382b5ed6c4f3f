#!/usr/bin/env bash
# Install the Debian packages the tests need, only when something is missing.
# Usage: tools/system-deps.sh PACKAGE:PROBE ...  (PROBE: a path or command that proves it)
set -euo pipefail
missing=()
for spec in "$@"; do
    pkg=${spec%%:*}
    probe=${spec#*:}
    if [[ $probe == /* ]]; then
        compgen -G "$probe" >/dev/null || missing+=("$pkg")
    else
        command -v "$probe" >/dev/null 2>&1 || missing+=("$pkg")
    fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
    echo "Missing system packages: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "Installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
