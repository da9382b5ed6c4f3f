#!/usr/bin/env bash
# make test, after lint: pytest and the Molecule scenarios side by side. Each
# leaves about half of two cores idle (waiting on servers, containers, apt and
# the network), so together they take little more than the longer of the two.
# Molecule's output goes to a log, printed whole after pytest's, so neither
# interleaves with the other; the exit code fails if either failed.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp /var/tmp/lifeboat-molecule-log.XXXXXX)
trap 'kill -- -"$molecule" 2>/dev/null; rm -f "$log"' EXIT
trap 'exit 130' INT TERM

start=$(date +%s)
# Its own process group, so an interrupted run stops every part of it.
setsid --wait make --no-print-directory molecule >"$log" 2>&1 &
molecule=$!

pytest -q -rs --durations=25 -p no:cacheprovider tests
tests=$?
echo "pytest ended after $(( $(date +%s) - start ))s (exit $tests); waiting for Molecule"

wait "$molecule"
scenarios=$?
echo "----- make molecule (ran beside pytest) -----"
cat "$log"
echo "----- Molecule ended after $(( $(date +%s) - start ))s (exit $scenarios) -----"
trap 'rm -f "$log"' EXIT
if (( tests != 0 || scenarios != 0 )); then
    exit 1
fi
