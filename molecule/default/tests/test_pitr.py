"""Point-in-time recovery (role lifeboat_pitr) on lifeboat-db1, after side_effect.yml
restored a database to a time and drilled it as the backup user `lifeboat`.

The backup user only reads pgBackRest's configuration and repository (group
lifeboat-pitr), owns the work directory, and everything it wrote into its store
is still its own. db2 has point-in-time recovery off: nothing of it is there.
"""

from __future__ import annotations

import json
import os

import pytest

CONFIG = "/etc/pgbackrest/pgbackrest.conf"
REPO = "/var/lib/pgbackrest"
WORK = "/var/lib/postgresql/lifeboat-pitr"
STORE = "/var/backups/lifeboat"
PORT = os.environ.get("LIFEBOAT_MOLECULE_PITR_PORT", "5432")


@pytest.fixture
def db1(host):
    if host.backend.get_hostname() != "lifeboat-db1":
        assert not host.file(CONFIG).exists  # off unless lifeboat_pitr is true
        pytest.skip("point-in-time recovery is on lifeboat-db1 only")
    return host


def psql(host, sql: str, db: str = "postgres") -> str:
    return host.check_output(
        f"runuser -u postgres -- psql -X -At -p {PORT} -d {db} -c {json.dumps(sql)}"
    )


def test_pgbackrest_config_is_readable_by_the_readers_group_only(db1):
    conf = db1.file(CONFIG)
    assert (conf.user, conf.group, conf.mode) == ("postgres", "lifeboat-pitr", 0o640)
    assert f"pg1-port={PORT}" in conf.content_string
    assert "lifeboat-pitr" in db1.user("lifeboat").groups
    assert "lifeboat-pitr" not in db1.user("admin").groups


def test_archiving_is_on(db1):
    assert psql(db1, "SHOW archive_mode") == "on"
    assert "archive-push" in psql(db1, "SHOW archive_command")
    assert psql(db1, "SELECT last_archived_wal IS NOT NULL FROM pg_stat_archiver") == "t"


def test_the_backup_user_reads_the_stanza(db1):
    repo = db1.file(REPO)
    assert (repo.user, repo.group, repo.mode) == ("postgres", "lifeboat-pitr", 0o2750)
    # Everything pgBackRest wrote since (WAL, base backups) inherited the group.
    assert db1.check_output(f"find {REPO} ! -group lifeboat-pitr") == ""
    out = db1.check_output(
        f"runuser -u lifeboat -- pgbackrest --config={CONFIG} --stanza=main "
        "--log-level-file=off --output=json info"
    )
    (stanza,) = json.loads(out)
    assert stanza["status"]["code"] == 0, stanza["status"]
    assert [b["type"] for b in stanza["backup"]][:1] == ["full"]
    # Read access only: the backup user cannot write into the repository.
    assert db1.run(f"runuser -u lifeboat -- touch {REPO}/probe").rc != 0


def test_restore_to_a_time_brought_the_rows_back(db1):
    # side_effect.yml: 75 rows at the noted time, all but 10 deleted after it.
    assert psql(db1, "SELECT count(*), max(id) FROM orders", db="pitrshop") == "75|75"
    # No drill, scratch or replaced database left behind.
    names = psql(db1, "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")
    assert "__lifeboat" not in names, names


def test_store_and_work_dir_stay_the_backup_users(db1):
    # The restore's pre-restore backup of the damaged database is among them:
    # the next prune (as the backup user) can delete everything it finds.
    assert db1.check_output(f"find {STORE} -path '*pre-restore*' -name '*pitrshop*'")
    assert db1.check_output(f"find {STORE} ! -user lifeboat") == ""
    work = db1.file(WORK)
    assert (work.user, work.mode) == ("lifeboat", 0o700)
    assert db1.check_output(f"ls -A {WORK}") == ""  # the temporary instances are gone
