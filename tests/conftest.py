"""Shared fixtures: real PostgreSQL clusters on loopback, started with initdb/pg_ctl.

`pg` is one cluster per test session; `app_db` gives each test its own
database owned by a non-superuser role whose password needs URL-encoding,
seeded with the demo schema. Use `cluster.psql()` for superuser SQL.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import pgcluster  # noqa: E402
from s3_fixtures import moto_server, s3  # noqa: E402, F401 - S3 endpoint fixtures

OWNER = "app_owner"
OWNER_PASSWORD = "p@ss:w/rd%20 'q' #1"  # needs URL-encoding, has a quote and a colon
REPORTING = "app_reporting"  # a second role: owns a schema in realistic_db, granted CONNECT
REALISTIC_SQL = Path(__file__).resolve().parent / "datasets" / "realistic.sql"
_counter = itertools.count(1)


@dataclass
class AppDB:
    """A test database: its name, owner URL (with password) and the cluster."""

    name: str
    url: str
    cluster: pgcluster.Cluster

    def sql(self, query: str, superuser: bool = False) -> str:
        """SQL inside this database as its owner (or superuser); psql's unaligned output."""
        prefix = "" if superuser else f"SET ROLE {OWNER}; "
        return self.cluster.psql(prefix + query, db=self.name)

    def url_for(self, dbname: str) -> str:
        return self.cluster.url(OWNER, OWNER_PASSWORD, dbname)


# Skips that may legitimately happen off CI (reason prefixes). Everything a test
# needs is installed by `make test` (Makefile TEST_SYSTEM_DEPS), so any other
# skip is a test that silently did not run: it fails instead. With CI=true
# nothing is allowed.
ALLOWED_SKIPS = ("mounting a tmpfs needs root",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if not ci and reason.startswith(ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped but must run: {reason} (install what it needs with `make setup-test`; "
        "allow-list a legitimate skip in tests/conftest.py ALLOWED_SKIPS)"
    )


@pytest.fixture(scope="session")
def pg_tmp():
    root = Path(tempfile.mkdtemp(prefix="lifeboat-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg(pg_tmp):
    cluster = pgcluster.Cluster(pg_tmp / "pgdata", pgcluster.free_port())
    cluster.init()
    cluster.start()
    lit = OWNER_PASSWORD.replace("'", "''")
    cluster.psql(f"CREATE ROLE {OWNER} LOGIN CREATEDB PASSWORD '{lit}'")
    cluster.psql(f"CREATE ROLE {REPORTING} LOGIN PASSWORD 'reporting'")
    yield cluster
    cluster.stop("immediate")


def _template(cluster: pgcluster.Cluster, kind: str, seed) -> str:
    """A seeded template database, made once per cluster (one test session).

    Copying it (CREATE DATABASE ... TEMPLATE) is a file copy on the server: much
    cheaper than replaying the seed SQL for every test. It takes no connections,
    so nothing can change it after seeding."""
    name = f"lifeboat_test_template_{kind}"
    made = cluster.__dict__.setdefault("_lifeboat_templates", set())
    if name not in made:
        seed(name)
        cluster.psql(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
        made.add(name)
    return name


def _seed_demo(cluster: pgcluster.Cluster, name: str) -> None:
    cluster.psql(f'CREATE DATABASE "{name}" OWNER {OWNER}')
    seed_file = Path(cluster.datadir).parent / "demo_schema.sql"
    seed_file.write_text(pgcluster.DEMO_SCHEMA)
    seed_file.chmod(0o644)
    url = cluster.url(OWNER, OWNER_PASSWORD, name)
    subprocess.run(  # as the owner, like an application's migrations
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(seed_file)],
        check=True,
        capture_output=True,
    )


def make_db(cluster: pgcluster.Cluster, name: str | None = None, seed: bool = True) -> AppDB:
    name = name or f"app{next(_counter)}"
    template = ""
    if seed:
        template = " TEMPLATE " + _template(cluster, "demo", lambda t: _seed_demo(cluster, t))
    cluster.psql(f'CREATE DATABASE "{name}" OWNER {OWNER}{template}')
    return AppDB(name, cluster.url(OWNER, OWNER_PASSWORD, name), cluster)


@pytest.fixture
def app_db(pg) -> AppDB:
    """A fresh database owned by the app role, with the users/plots demo data."""
    return make_db(pg)


def make_realistic_db(cluster: pgcluster.Cluster, name: str | None = None) -> AppDB:
    """A database lifeboat did not design (tests/datasets/realistic.sql) with
    database-level properties a restore must bring back: ICU locale provider,
    connection limit, ALTER DATABASE / per-role settings, CONNECT revoked from
    PUBLIC and granted to one role, and a comment."""
    name = name or f"real{next(_counter)}"

    def seed(template: str) -> None:
        cluster.psql(
            f'CREATE DATABASE "{template}" OWNER {OWNER} TEMPLATE template0 ENCODING UTF8 '
            "LOCALE 'C.UTF-8' LOCALE_PROVIDER icu ICU_LOCALE 'de-DE'"
        )
        cluster.psql_file(str(REALISTIC_SQL), template)

    # The copy inherits encoding and locale; the rest is per database, set below.
    template = _template(cluster, "realistic", seed)
    cluster.psql(
        f'CREATE DATABASE "{name}" OWNER {OWNER} TEMPLATE "{template}" CONNECTION LIMIT 40'
    )
    for statement in (
        f'ALTER DATABASE "{name}" SET search_path TO "$user", sales, public',
        f"ALTER DATABASE \"{name}\" SET statement_timeout TO '5min'",
        f"ALTER ROLE {REPORTING} IN DATABASE \"{name}\" SET work_mem TO '8MB'",
        f'REVOKE CONNECT, TEMPORARY ON DATABASE "{name}" FROM PUBLIC',
        f'GRANT CONNECT ON DATABASE "{name}" TO {REPORTING}',
        f"COMMENT ON DATABASE \"{name}\" IS 'orders and payments (realistic fixture)'",
    ):
        cluster.psql(statement)
    return AppDB(name, cluster.url(OWNER, OWNER_PASSWORD, name), cluster)


@pytest.fixture
def realistic_db(pg) -> AppDB:
    """A fresh copy of the realistic dataset; see make_realistic_db."""
    return make_realistic_db(pg)


@pytest.fixture
def backup_dir(tmp_path) -> Path:
    return tmp_path / "backups"


@pytest.fixture
def lifeboat_env(backup_dir):
    """Environment for running the `lifeboat` CLI / ansible-playbook as a user would."""
    env = dict(os.environ)
    env["LIFEBOAT_BACKUP_DIR"] = str(backup_dir)
    env["LIFEBOAT_CONFIG"] = "/nonexistent/lifeboat.yml"
    env.pop("DATABASE_URL", None)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"
    return env


def run_cli(args: list[str], env: dict, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run the installed `lifeboat` command the way cron would (no terminal)."""
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "lifeboat"), *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lifeboat {args} failed: {proc.stdout}\n{proc.stderr}")
    return proc


def shared_backup(cluster: pgcluster.Cluster, folder: Path) -> tuple[AppDB, Path]:
    """A new demo database and a store holding one daily backup of it (for module-scoped
    fixtures of read-only tests: copy the store per test with shutil.copytree)."""
    db = make_db(cluster)
    store = folder / "backups"
    env = dict(os.environ, LIFEBOAT_BACKUP_DIR=str(store), LIFEBOAT_CONFIG="/nonexistent")
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"
    run_cli(["backup"], dict(env, DATABASE_URL=db.url), check=True)
    # The run state belongs to each test's own store, not the template.
    shutil.rmtree(store / ".state", ignore_errors=True)
    return db, store


def fingerprint(db: AppDB, superuser: bool = False) -> dict[str, str]:
    """md5 of every user table's rows in a stable order: equal means same data.

    `superuser=True` reads past row-level security and other owners' schemas,
    and adds the large objects and the database-level properties."""
    tables = db.sql(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        superuser,
    )
    result = {}
    for table in filter(None, tables.splitlines()):
        result[table] = db.sql(
            f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, E'\\n' "
            f"ORDER BY t::text)), '') FROM {table} t",
            superuser,
        )
    if superuser:
        result["large objects"] = db.sql(
            "SELECT count(*) || ':' || coalesce(md5(string_agg(loid || ':' || pageno || ':' "
            "|| md5(data), ',' ORDER BY loid, pageno)), '') FROM pg_largeobject",
            True,
        )
        result["database"] = database_properties(db)
    return result


def database_properties(db: AppDB) -> str:
    """Owner, locale, limits, ACL, comment and settings of the database itself."""
    name = db.name.replace("'", "''")
    return db.cluster.psql(
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datlocprovider,"
        " daticulocale, datcollate, datctype, datconnlimit, datacl,"
        " shobj_description(oid, 'pg_database'),"
        " (SELECT array_agg(coalesce(pg_get_userbyid(nullif(s.setrole, 0)), '-') || '='"
        "   || array_to_string(s.setconfig, ';') ORDER BY 1) FROM pg_db_role_setting s"
        "   WHERE s.setdatabase = d.oid)"
        f" FROM pg_database d WHERE datname = '{name}'"
    )
