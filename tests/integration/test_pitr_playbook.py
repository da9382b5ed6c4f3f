"""restore.yml and verify.yml to a point in time, run as a backup user that is
neither root nor the cluster's owner: the documented commands, with no
`-e lifeboat_user=root`.

The host is laid out as the lifeboat_pitr role leaves it (docs/pitr.md, "Who runs
what"): the cluster and pgBackRest run as `postgres`; the configuration (0640) and
the repository (setgid 2750, so pgBackRest's files inherit the group) belong to
the readers' group; the backup user is in that group and owns the store and the
work directory. Stand-ins that exist on every Debian host: `nobody` for the backup
user, its own group `nogroup` for the readers' group.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "module_utils"))
sys.path.insert(0, str(ROOT / "tests"))

import pgcluster  # noqa: E402
from conftest import OWNER, OWNER_PASSWORD, AppDB, fingerprint  # noqa: E402
from test_pitr import start_archiving  # noqa: E402

from lifeboat import pitr, settings  # noqa: E402

STANZA = "pbtest"
BACKUP_USER, READERS = "nobody", "nogroup"
# The venv's interpreter may live where only root can reach it (pyenv under /root):
# the backup user runs the system's Python (same minor version) on the venv's
# packages. inventory/local hands the modules the same interpreter.
PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
SITE_PACKAGES = str(
    ROOT / ".venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    / "site-packages"
)  # fmt: skip
pytestmark = [
    pytest.mark.skipif(
        not Path("/usr/bin/pgbackrest").exists(), reason="pgbackrest is not installed"
    ),
    pytest.mark.skipif(not Path(PYTHON).exists(), reason=f"no {PYTHON} for the backup user"),
]


def _dir(path: Path, user: str, group: str, mode: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
    path.chmod(mode)
    return path


class Host:
    def __init__(self, root: Path):
        self.root = root
        self.cluster = pgcluster.Cluster(root / "pgdata", pgcluster.free_port())
        self.repo = _dir(root / "repo", "postgres", READERS, 0o2750)
        self.conf = root / "etc" / "pgbackrest.conf"
        _dir(self.conf.parent, "postgres", READERS, 0o750)
        self.work = _dir(root / "work", BACKUP_USER, READERS, 0o700)
        self.store = _dir(root / "backups", BACKUP_USER, READERS, 0o700)
        self.home = _dir(root / "home", BACKUP_USER, READERS, 0o700)
        self.key = self.home / "manifest.key"
        self.key.write_text(secrets.token_hex(32) + "\n")  # 32 bytes in hex
        os.chown(self.key, pwd.getpwnam(BACKUP_USER).pw_uid, grp.getgrnam(READERS).gr_gid)
        self.key.chmod(0o600)
        self.settings = settings.resolve(
            {
                "database_url": "postgresql:///unused",
                "pitr": True,
                "pitr_stanza": STANZA,
                "pitr_config": str(self.conf),
                "pitr_pg_data": str(self.cluster.datadir),
                "pitr_pg_port": self.cluster.port,
                "pitr_pg_socket_dir": self.cluster.socket_dir,
                "pitr_repo_path": str(self.repo),
                "pitr_log_path": str(_dir(root / "log", "postgres", "postgres", 0o750)),
                "pitr_lock_path": str(_dir(root / "lock", "postgres", "postgres", 0o750)),
                "pitr_work_dir": str(self.work),
                "pitr_archive_timeout": 5,
            }
        )
        self.shop = AppDB("shop", self.cluster.url(OWNER, OWNER_PASSWORD, "shop"), self.cluster)

    def pgbackrest(self, *args: str) -> None:
        subprocess.run(
            ["pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", *args],
            capture_output=True, text=True, check=True, cwd="/", user="postgres",
            group="postgres",
        )  # fmt: skip

    def playbook(self, name: str, *args: str) -> subprocess.CompletedProcess:
        """ansible-playbook as the backup user (its own groups only), as cron or a
        become would start it; the settings the lifeboat role would pass."""
        ids = pwd.getpwnam(BACKUP_USER)
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": SITE_PACKAGES,
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_LOCAL_TEMP": str(self.home / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "LIFEBOAT_CONFIG": "/nonexistent/lifeboat.yml",
            "DATABASE_URL": self.shop.url,
            # Provisioned hosts sign manifests: the temporary dump's is checked too.
            "LIFEBOAT_MANIFEST_KEY_FILE": str(self.key),
        }
        s = self.settings
        values = {
            "lifeboat_backup_dir": self.store,
            "lifeboat_pitr_config": s.pitr_config,
            "lifeboat_pitr_stanza": STANZA,
            "lifeboat_pitr_work_dir": s.pitr_work_dir,
            "lifeboat_pitr_archive_timeout": s.pitr_archive_timeout,
        }
        extra = [arg for key, value in values.items() for arg in ("-e", f"{key}={value}")]
        return subprocess.run(
            [PYTHON, str(ROOT / ".venv" / "bin" / "ansible-playbook"), f"playbooks/{name}",
             *extra, *args],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False,
            user=ids.pw_uid, group=ids.pw_gid, extra_groups=[],
        )  # fmt: skip

    def now(self) -> str:
        return self.cluster.psql(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')"
        )


@pytest.fixture(scope="module")
def host(pg_tmp):
    root = pg_tmp / "pitr-playbook"
    root.mkdir()
    root.chmod(0o755)
    h = Host(root)
    h.cluster.init()
    h.conf.write_text(pitr.render_config(h.settings))  # as the role writes it
    os.chown(h.conf, pwd.getpwnam("postgres").pw_uid, grp.getgrnam(READERS).gr_gid)
    h.conf.chmod(0o640)
    start_archiving(h.cluster, h.settings)
    h.cluster.psql(f"CREATE DATABASE shop OWNER {OWNER}")
    h.shop.sql("CREATE TABLE orders (id int PRIMARY KEY, note text NOT NULL)")
    h.shop.sql("INSERT INTO orders SELECT g, 'base' FROM generate_series(1, 40) g")
    h.pgbackrest("stanza-create")
    h.pgbackrest("--type=full", "backup")
    yield h
    h.cluster.stop("immediate")


def _not_backup_users(path: Path) -> list[str]:
    uid = pwd.getpwnam(BACKUP_USER).pw_uid
    found = []
    for folder, dirs, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            if os.lstat(name).st_uid != uid:
                found.append(name)
    return found


def test_restore_to_a_time_as_the_backup_user(host):
    shop = host.shop
    shop.sql("INSERT INTO orders SELECT g, 'day' FROM generate_series(41, 60) g")
    time.sleep(1)
    when = host.now()
    wanted = fingerprint(shop)
    time.sleep(1)
    shop.sql("DELETE FROM orders WHERE id > 10")  # the bad statement
    damaged = fingerprint(shop)

    # The plan (--check) reads the repository as the backup user and changes nothing.
    plan = host.playbook("restore.yml", "--check", "-e", f"restore_time={when}")
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-2000:]
    assert f"would restore to {when[:19]}" in plan.stdout and "base backup: " in plan.stdout
    assert fingerprint(shop) == damaged

    # As documented: -e restore_time='YYYY-MM-DD HH:MM:SS+00' -e confirm=true.
    started = time.monotonic()
    proc = host.playbook("restore.yml", "-e", f"restore_time={when}", "-e", "confirm=true")
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "changed=1" in proc.stdout
    assert "pgBackRest stanza pbtest at" in proc.stdout  # what it restored from, for people
    assert fingerprint(shop) == wanted, f"restore took {took:.1f}s"
    assert int(shop.sql("SELECT count(*) FROM orders")) == 60
    # Everything it wrote into the store is the backup user's (later prunes, the
    # next restore): the pre-restore backup of the damaged database among it.
    assert list((host.store / "pre-restore").glob("*")), sorted(host.store.rglob("*"))
    assert _not_backup_users(host.store) == []
    # The temporary instance ran as the backup user and is gone; the repository
    # and the configuration were only read.
    assert os.listdir(host.work) == []
    assert _not_backup_users(host.work) == []
    assert {p.stat().st_uid for p in host.repo.rglob("*")} == {pwd.getpwnam("postgres").pw_uid}
    assert OWNER_PASSWORD not in proc.stdout + proc.stderr


def test_pitr_drill_as_the_backup_user(host):
    shop = host.shop
    before = fingerprint(shop)
    # After the previous test's swap: the drill's time must come after it.
    shop.sql("INSERT INTO orders VALUES (1000, 'tick')")
    before = fingerprint(shop)
    time.sleep(4)
    proc = host.playbook("verify.yml", "-e", "verify_pitr_minutes=0.05")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "OK point-in-time drill of shop" in proc.stdout and "(RTO)" in proc.stdout
    assert "recovery point now" in proc.stdout and "drill database dropped" in proc.stdout
    assert fingerprint(shop) == before
    assert "drill" not in host.cluster.psql("SELECT string_agg(datname, ',') FROM pg_database")
    assert os.listdir(host.work) == []
    assert _not_backup_users(host.store) == []
