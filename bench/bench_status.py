"""Fleet status scaling: playbooks/status.yml over 20 hosts against one host.

Each host is this machine over a local connection with its own store (a copy
of one holding a daily, weekly and monthly backup of a small database), so
the fleet run does 20 times the work of the single-host run on the same 2
cores. Ansible's own settings (ansible.cfg forks, the playbook's strategy)
decide how much of that runs at once.
Target: 20 hosts <= 2.0x one host (wall time, best of LIFEBOAT_BENCH_ROUNDS, at least 3).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, ROUNDS, pgcluster, report, timed

HOSTS = 20
BIN = ROOT / ".venv" / "bin"


def make_store(work: Path) -> tuple[Path, str]:
    """A store with one complete backup of each type, of a real (empty) database."""
    cluster = pgcluster.Cluster(work / "pgdata", pgcluster.free_port())
    cluster.init()
    cluster.start()
    try:
        url = cluster.create_owner("fleet", "fleet pw", "fleetdb")
        store = work / "store"
        env = dict(os.environ, DATABASE_URL=url, LIFEBOAT_BACKUP_DIR=str(store),
                   LIFEBOAT_CONFIG="/nonexistent/lifeboat.yml")  # fmt: skip
        for kind in ("daily", "weekly", "monthly"):
            subprocess.run([str(BIN / "lifeboat"), "backup", "--type", kind], env=env,
                           check=True)  # fmt: skip
    finally:
        cluster.stop("fast")
    return store, url


def inventory(work: Path, store: Path, url: str, hosts: int) -> Path:
    entries = {}
    for i in range(hosts):
        host_store = work / f"store-{i:02d}"
        if not host_store.exists():
            shutil.copytree(store, host_store)
        entries[f"db{i:02d}"] = {"lifeboat_backup_dir": str(host_store)}
    common = {
        "ansible_connection": "local",
        "ansible_python_interpreter": str(BIN / "python"),
        "lifeboat_database_url": url,
    }
    path = work / f"fleet-{hosts}.json"
    path.write_text(json.dumps({"databases": {"hosts": entries, "vars": common}}))
    return path


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="lifeboat-bench-status-", dir=ROOT / ".cache"))
    work.chmod(0o755)  # the cluster runs as postgres
    try:
        store, url = make_store(work)
        one, fleet = inventory(work, store, url, 1), inventory(work, store, url, HOSTS)
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))

        def status(inv: Path):
            def run():
                proc = subprocess.run(
                    [str(BIN / "ansible-playbook"), "-i", str(inv), "playbooks/status.yml"],
                    cwd=ROOT, env=env, capture_output=True, text=True,
                )  # fmt: skip
                if proc.returncode != 0:
                    raise SystemExit(f"status.yml failed:\n{proc.stdout}\n{proc.stderr}")

            return run

        status(one)()  # warm caches (AnsiballZ payloads, page cache)
        rounds = max(ROUNDS, 3)
        singles, fleets = [], []
        for _ in range(rounds):  # interleaved: a noisy neighbour hits both sides alike
            singles.append(timed(status(one)))
            fleets.append(timed(status(fleet)))
        single, many = min(singles), min(fleets)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"status.yml: 1 host {single:.2f}s, {HOSTS} hosts {many:.2f}s (best of {rounds} each)")
    ratio = many / single
    ok = report(
        f"fleet status ({HOSTS} local-connection hosts)",
        [(f"{HOSTS} hosts vs 1 host", f"{ratio:.2f}x", "<= 2.00x", ratio <= 2.0)],
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
