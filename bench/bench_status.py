"""Fleet status scaling: playbooks/status.yml over 20 hosts against one host.

Each host is this machine over a local connection with its own store (a copy
of one holding a daily, weekly and monthly backup of a small database), so
the fleet run does 20 times the work of the single-host run on the same 2
cores. Ansible's own settings (ansible.cfg forks, the playbook's strategy)
decide how much of that runs at once.
Target: 20 hosts <= 2.0x one host (wall time, best of LIFEBOAT_BENCH_ROUNDS, at least 3).

Also printed, to read a result on a shared machine: the load average, the CPU
seconds each extra host costs (module run plus the controller's work for it;
steadier than wall time under load), and the floor - the same ratio for a
playbook that only runs ansible.builtin.ping on each host, the cheapest module
run Ansible has. status.yml cannot scale better than that floor here.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, ROUNDS, pgcluster, report

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


def run_playbook(inv: Path, playbook: str, env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of ansible-playbook and every process it waited for)."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inv), playbook],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{playbook} failed:\n{proc.stdout}\n{proc.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="lifeboat-bench-status-", dir=ROOT / ".cache"))
    work.chmod(0o755)  # the cluster runs as postgres
    try:
        store, url = make_store(work)
        one, fleet = inventory(work, store, url, 1), inventory(work, store, url, HOSTS)
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
        ping = work / "ping.yml"
        ping.write_text(
            "- hosts: databases\n  gather_facts: false\n  tasks:\n    - ansible.builtin.ping:\n"
        )
        status = "playbooks/status.yml"
        load = os.getloadavg()
        run_playbook(one, status, env)  # warm caches (page cache, .pyc)
        rounds = max(ROUNDS, 3)
        singles, fleets, pings = [], [], []
        for _ in range(rounds):  # interleaved: a noisy neighbour hits every side alike
            singles.append(run_playbook(one, status, env))
            fleets.append(run_playbook(fleet, status, env))
            pings.append(run_playbook(fleet, str(ping), env))
        single, many, floor = (min(w for w, _ in runs) for runs in (singles, fleets, pings))
        extra = (min(c for _, c in fleets) - min(c for _, c in singles)) / (HOSTS - 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"status.yml: 1 host {single:.2f}s, {HOSTS} hosts {many:.2f}s (best of {rounds} each)")
    print(f"CPU per extra host: {extra:.2f}s (on {os.cpu_count()} cores)")
    print(f"floor: {HOSTS} hosts of ansible.builtin.ping {floor:.2f}s = {floor / single:.2f}x")
    print(f"load average before {load[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    ratio = many / single
    ok = report(
        f"fleet status ({HOSTS} local-connection hosts)",
        [(f"{HOSTS} hosts vs 1 host", f"{ratio:.2f}x", "<= 2.00x", ratio <= 2.0)],
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
