"""Every libpq connection form backs up and restores (issue 12 item 2).

Each test configures lifeboat only through one form (socket URL, key/value,
service file, PG* environment with ~/.pgpass, sslmode, a multi-host URL whose
first host is down, a list of bare names over peer authentication), takes a
backup through the CLI, damages the data, restores the latest backup and
compares fingerprints: the data the user relies on is back.
"""

from __future__ import annotations

import json
import subprocess

import pgcluster
import pytest
from conftest import OWNER, OWNER_PASSWORD, ROOT, AppDB, fingerprint, make_db, run_cli
from psycopg.conninfo import make_conninfo


def roundtrip(db: AppDB, env: dict) -> None:
    """Back up, damage, restore the latest: the data must be what was backed up."""
    proc = run_cli(["backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = fingerprint(db)
    db.sql("DELETE FROM plots")
    assert fingerprint(db) != expected
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(db) == expected
    assert OWNER_PASSWORD not in proc.stdout + proc.stderr


def pgpass_line(host: str, port: int, password: str) -> str:
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"{host}:{port}:*:{OWNER}:{escaped}\n"


def test_socket_url_with_no_host(app_db, pg, lifeboat_env):
    # postgresql:///db (empty authority): the local socket; ?host= names its directory.
    url = f"postgresql:///{app_db.name}?host={pg.socket_dir}&port={pg.port}&user={OWNER}"
    roundtrip(app_db, dict(lifeboat_env, DATABASE_URL=url))


def test_key_value_socket(app_db, pg, lifeboat_env):
    conninfo = f"host={pg.socket_dir} port={pg.port} dbname={app_db.name} user={OWNER}"
    roundtrip(app_db, dict(lifeboat_env, DATABASE_URL=conninfo))


def test_key_value_tcp_with_password_and_sslmode_disable(app_db, pg, lifeboat_env):
    conninfo = make_conninfo(
        host="127.0.0.1",
        port=pg.port,
        dbname=app_db.name,
        user=OWNER,
        password=OWNER_PASSWORD,
        sslmode="disable",
    )
    roundtrip(app_db, dict(lifeboat_env, DATABASE_URL=conninfo))


def test_service_file_and_passfile(app_db, pg, lifeboat_env, backup_dir, tmp_path):
    services = tmp_path / "pg_service.conf"
    services.write_text(
        f"[lifeboat_test]\nhost=127.0.0.1\nport={pg.port}\ndbname={app_db.name}\n"
        f"user={OWNER}\nsslmode=disable\n"
    )
    passfile = tmp_path / "passfile"
    passfile.write_text(pgpass_line("127.0.0.1", pg.port, OWNER_PASSWORD))
    passfile.chmod(0o600)
    env = dict(
        lifeboat_env,
        DATABASE_URL="service=lifeboat_test",
        PGSERVICEFILE=str(services),
        PGPASSFILE=str(passfile),
    )
    roundtrip(app_db, env)
    # The file names come from the service's database, read the way libpq reads it.
    assert list((backup_dir / "daily").glob(f"{app_db.name}-daily-backup-*"))


def test_pg_environment_only_with_home_pgpass(app_db, pg, lifeboat_env, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".pgpass").write_text(pgpass_line("127.0.0.1", pg.port, OWNER_PASSWORD))
    (home / ".pgpass").chmod(0o600)
    env = dict(
        lifeboat_env,
        HOME=str(home),
        PGHOST="127.0.0.1",
        PGPORT=str(pg.port),
        PGUSER=OWNER,
        PGDATABASE=app_db.name,
    )
    roundtrip(app_db, env)


def test_multi_host_url_first_host_down(app_db, pg, lifeboat_env):
    down = pgcluster.free_port()  # nothing listens there
    url = app_db.url.replace(f"127.0.0.1:{pg.port}", f"127.0.0.1:{down},127.0.0.1:{pg.port}")
    assert url.count(",") == 1
    roundtrip(app_db, dict(lifeboat_env, DATABASE_URL=url))


@pytest.fixture(scope="module")
def peer_cluster(pg_tmp):
    """A server that lets local socket users in by peer authentication only (no passwords),
    as on a host where the backup user has a role of its own name."""
    cluster = pgcluster.Cluster(pg_tmp / "peer", pgcluster.free_port())
    cluster.init()
    (cluster.datadir / "pg_hba.conf").write_text("local all all peer\n")
    cluster.start()
    cluster.psql("CREATE ROLE root LOGIN SUPERUSER")  # the OS user running the tests
    cluster.psql(f"CREATE ROLE {OWNER} LOGIN")
    yield cluster
    cluster.stop("immediate")


def test_database_names_only_over_peer_authentication(peer_cluster, lifeboat_env):
    first = make_db(peer_cluster, seed=False)
    second = make_db(peer_cluster, seed=False)
    for db in (first, second):
        peer_cluster.psql_file(str(seed_file(peer_cluster)), db.name)
    # No URL at all: names, and libpq's defaults. PGHOST only because the test
    # server's socket is not in the compiled-in /var/run/postgresql.
    env = dict(
        lifeboat_env,
        LIFEBOAT_DATABASES=f"{first.name}, {second.name}",
        PGHOST=peer_cluster.socket_dir,
        PGPORT=str(peer_cluster.port),
    )
    env.pop("PGUSER", None)
    env.pop("PGPASSWORD", None)
    proc = run_cli(["backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = {db.name: fingerprint(db, superuser=True) for db in (first, second)}
    for db in (first, second):
        db.sql("DELETE FROM plots", superuser=True)
    for db in (first, second):
        proc = run_cli(["restore", "--latest", "--confirm", "--database", db.name], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert fingerprint(db, superuser=True) == expected[db.name]


def seed_file(cluster):
    path = cluster.datadir.parent / "demo_schema.sql"
    if not path.exists():
        path.write_text(pgcluster.DEMO_SCHEMA)
        path.chmod(0o644)
    return path


def test_server_probe_reads_connection_strings_without_psycopg(app_db, pg, lifeboat_env):
    """provision.yml asks the servers for their version with the system Python, before the
    venv (and psycopg) exists: libpq.so itself reads the strings there."""
    urls = [app_db.url, f"host={pg.socket_dir} port={pg.port} dbname={app_db.name} user={OWNER}"]
    env = dict(
        lifeboat_env,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_LIBRARY=str(ROOT / "roles" / "postgresql_client" / "library"),
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
    )
    has_psycopg = subprocess.run(["/usr/bin/python3", "-c", "import psycopg"], check=False)
    if has_psycopg.returncode == 0:
        pytest.skip("the system Python has psycopg: the libpq.so path is not exercised")
    proc = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "ansible"),
            "localhost",
            "-c",
            "local",
            "-e",
            "ansible_python_interpreter=/usr/bin/python3",
            "-m",
            "postgresql_server_major",
            "-a",
            json.dumps({"urls": urls}),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.split("=>", 1)[1])
    assert result["unanswered"] == [] and result["server_major"] == 15, result
    assert OWNER_PASSWORD not in proc.stdout
