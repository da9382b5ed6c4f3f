"""The lifeboat_pitr role on this machine, against a real cluster it did not start.

First run: pgBackRest configured (the engine's rendering, 0640, owned by
postgres), stanza created, archiving settings written with ALTER SYSTEM, and
no restart: it says one is needed. After the operator's restart, the second
run checks archiving and takes the first full backup; a third run changes
nothing.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "module_utils"))
sys.path.insert(0, str(ROOT / "tools"))

import pgcluster  # noqa: E402

from lifeboat import pitr, schema, settings  # noqa: E402

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/pgbackrest").exists(), reason="pgbackrest is not installed"
)


def _play(play: Path, extra: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"
    return subprocess.run(
        ["ansible-playbook", "-i", "localhost,", "-c", "local", str(play), "-e", f"@{extra}",
         "-e", "ansible_become_method=su"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


def _recap(out: str) -> dict:
    line = next(line for line in out.splitlines() if line.startswith("localhost") and "ok=" in line)
    return {k: int(v) for k, v in (part.split("=") for part in line.split()[2:])}


def test_role_configures_archiving_without_restarting(pg_tmp):
    root = pg_tmp / "pitr-role"
    root.mkdir()
    root.chmod(0o755)
    cluster = pgcluster.Cluster(root / "pgdata", pgcluster.free_port())
    cluster.init()
    cluster.start()
    cron_name = f"lifeboat-pitr-test-{os.getpid()}"
    readers = f"lbpitr-test-{os.getpid()}"  # the role creates it; removed below
    values = {
        "lifeboat_pitr": True,
        "lifeboat_pitr_stanza": "roletest",
        "lifeboat_pitr_config": str(root / "etc" / "pgbackrest.conf"),
        "lifeboat_pitr_pg_data": str(cluster.datadir),
        "lifeboat_pitr_pg_port": cluster.port,
        "lifeboat_pitr_pg_socket_dir": cluster.socket_dir,
        "lifeboat_pitr_repo_path": str(root / "repo"),
        "lifeboat_pitr_log_path": str(root / "log"),
        "lifeboat_pitr_lock_path": str(root / "lock"),
        "lifeboat_pitr_work_dir": str(root / "work"),
        "lifeboat_pitr_archive_timeout": 30,
        "lifeboat_pitr_cron_file": cron_name,
        "lifeboat_pitr_group": readers,
        "ansible_python_interpreter": "/usr/bin/python3",  # postgres (become) can run it
    }
    extra = root / "vars.yml"
    extra.write_text(yaml.safe_dump(values))
    play = root / "play.yml"
    play.write_text(
        "- hosts: all\n  gather_facts: false\n  roles:\n"
        f"    - role: {ROOT / 'roles' / 'lifeboat_pitr'}\n"
    )
    try:
        first = _play(play, extra)
        assert first.returncode == 0, first.stdout[-3000:]
        assert "needs a restart for archive_mode" in first.stdout
        assert cluster.psql("SHOW archive_mode") == "off"  # not restarted by the role
        # The file the engine would write, private to postgres.
        conf = Path(values["lifeboat_pitr_config"])
        engine = settings.resolve(
            {"database_url": "postgresql:///x"},
            {
                k[9:]: v
                for k, v in values.items()
                if k.startswith("lifeboat_") and k[9:] in schema.BY_NAME
            },
        )
        body = [line for line in conf.read_text().splitlines() if not line.startswith("#")]
        assert "\n".join(body) + "\n" == pitr.render_config(engine)
        info = conf.stat()
        assert oct(info.st_mode & 0o777) == "0o640"
        assert pwd.getpwuid(info.st_uid).pw_name == "postgres"
        assert grp.getgrgid(info.st_gid).gr_name == readers  # the backup user may read it
        auto = (cluster.datadir / "postgresql.auto.conf").read_text()
        assert "archive_mode = 'on'" in auto and "archive_timeout = '30'" in auto
        assert "--stanza=roletest archive-push %p" in auto
        cron = Path("/etc/cron.d") / cron_name
        assert "--type=full backup" in cron.read_text() and "--type=diff backup" in cron.read_text()

        cluster.stop()  # the operator's restart, in a quiet moment
        cluster.start()
        second = _play(play, extra)
        assert second.returncode == 0, second.stdout[-3000:]
        assert "needs a restart for" not in second.stdout
        assert cluster.psql("SHOW archive_mode") == "on"
        found = subprocess.run(
            ["pgbackrest", f"--config={conf}", "--stanza=roletest", "--output=json", "info"],
            capture_output=True, text=True, check=True, user="postgres", group="postgres", cwd="/",
        )  # fmt: skip
        backups = json.loads(found.stdout)[0]["backup"]
        assert [b["type"] for b in backups] == ["full"]
        # setgid repository: every file pgBackRest wrote got the readers' group.
        repo = Path(values["lifeboat_pitr_repo_path"])
        assert oct(repo.stat().st_mode & 0o7777) == "0o2750"
        assert {grp.getgrgid(p.stat().st_gid).gr_name for p in repo.rglob("*")} == {readers}

        third = _play(play, extra)
        assert third.returncode == 0, third.stdout[-3000:]
        assert _recap(third.stdout)["changed"] == 0, third.stdout[-3000:]
    finally:
        cluster.stop("immediate")
        Path("/etc/cron.d", cron_name).unlink(missing_ok=True)
        subprocess.run(["groupdel", readers], capture_output=True, check=False)
