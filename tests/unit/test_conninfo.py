"""Connection strings read by libpq's rules; passwords kept out of argv, logs and disk."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from lifeboat import children, conninfo
from lifeboat.conninfo import ConnInfo, client_env, redact
from lifeboat.errors import ConfigError
from lifeboat.settings import split_databases

PG_VARS = ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE", "PGSERVICEFILE", "PGPASSWORD")


@pytest.fixture(autouse=True)
def clean_pg_env(monkeypatch):
    for var in PG_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(
    ("text", "dbname", "host", "port", "user"),
    [
        ("postgresql:///app", "app", "", "", None),  # the local socket: was postgresql:/app
        (
            "postgresql:///app?host=/run/postgresql&port=5433",
            "app",
            "/run/postgresql",
            "5433",
            None,
        ),
        ("host=/run/postgresql dbname=app user=backup", "app", "/run/postgresql", "", "backup"),
        ("postgresql://u@db1:5432,db2:5433/app", "app", "db1,db2", "5432,5433", "u"),
        ("app", "app", "", "", None),  # a plain name, as psql -d takes it
        ("dbname='my app' host=h sslmode=verify-full sslrootcert=/ca.pem", "my app", "h", "", None),
    ],
)
def test_libpq_forms(text, dbname, host, port, user):
    conn = ConnInfo.parse(text)
    assert (conn.dbname, conn.host, conn.port) == (dbname, host, port)
    assert conn.user == (user or pwd.getpwuid(os.geteuid()).pw_name)  # libpq: the OS user
    # What argv gets is a key/value string libpq reads back to the same settings.
    again = conninfo._parse(conn.conninfo())
    assert again["dbname"] == dbname
    assert again == {**dict(conn.params), "dbname": dbname}


def test_socket_url_reaches_argv_as_a_socket():
    conn = ConnInfo.parse("postgresql:///app")
    assert conn.conninfo() == "dbname=app"
    assert conn.where().startswith("app on local socket")


def test_password_never_in_the_connection_string():
    conn = ConnInfo.parse("host=h dbname=d user=u password='se cr\\'et' passfile=/x")
    assert conn.password == "se cr'et"
    assert "se cr" not in conn.conninfo() and "passfile" not in conn.conninfo()
    assert "se cr" not in repr(conn)
    url = ConnInfo.parse("postgresql://u:p%40ss@h1,h2/db?sslmode=require")
    assert url.password == "p@ss" and "p@ss" not in url.conninfo()
    assert "sslmode=require" in url.conninfo()


def test_service_file_is_read_the_libpq_way(tmp_path, monkeypatch):
    services = tmp_path / "pg_service.conf"
    services.write_text("[billing]\nhost=db.internal\nport=6432\ndbname=billing\nuser=bk\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    conn = ConnInfo.parse("service=billing")
    assert (conn.dbname, conn.host, conn.port, conn.user) == (
        "billing",
        "db.internal",
        "6432",
        "bk",
    )
    assert conn.conninfo() == "dbname=billing service=billing"
    assert "PGSERVICE" not in os.environ  # named only while libpq read it
    other = conn.with_dbname("postgres")  # explicit settings win over the service's
    assert other.conninfo() == "dbname=postgres service=billing"


def test_pg_environment_alone(monkeypatch):
    monkeypatch.setenv("PGHOST", "/var/run/postgresql")
    monkeypatch.setenv("PGPORT", "5433")
    monkeypatch.setenv("PGUSER", "backup")
    monkeypatch.setenv("PGDATABASE", "shop")
    monkeypatch.setenv("PGPASSWORD", "from-env")
    conn = ConnInfo.from_environment()
    assert (conn.dbname, conn.host, conn.port, conn.user) == (
        "shop",
        "/var/run/postgresql",
        "5433",
        "backup",
    )
    assert conn.password == "from-env"  # handed over through the passfile, like any other
    assert conn.conninfo() == "dbname=shop"


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://u:p%zz-hunter2@h/db",  # bad percent-encoding inside the password
        "host=h password=hunter2 x y",  # libpq trips on a token after the password
    ],
)
def test_parse_errors_never_echo_the_password(text):
    with pytest.raises(ConfigError) as err:
        ConnInfo.parse(text)
    assert "hunter2" not in str(err.value) and err.value.hint


@pytest.mark.parametrize("keyword", ["sslpassword", "oauth_client_secret"])
def test_other_secrets_are_refused(keyword):
    with pytest.raises(ConfigError, match=keyword):
        ConnInfo.parse(f"dbname=d {keyword}=s3cret")


def test_ctypes_libpq_agrees_with_psycopg():
    """The system Python while provisioning has no psycopg: libpq.so gives the same answers."""
    direct, psycopg = conninfo._Ctypes(), conninfo._Psycopg()
    for text in (
        "postgresql://u:p%40@h1:1,h2:2/db?sslmode=disable&application_name=x",
        "host=/run/postgresql dbname='a b' user=c",
        "postgresql:///app",
    ):
        # libpq versions differ in the options they know, not in what a string sets.
        assert values(direct.parse(text)) == values(psycopg.parse(text))
    params = {"dbname": "a b", "host": "h", "options": "-c x='1'"}
    assert direct.make(params) == psycopg.make(params)
    with pytest.raises(ValueError, match="invalid connection option"):
        direct.parse("nosuchoption=1")


def values(options) -> dict:
    return {o.keyword: o.val for o in options if o.val is not None}


def test_redact_key_value_and_url_passwords():
    text = "host=h password='a b\\'c' dbname=d; postgresql://u:pw@h/d?password=zz&x=1 sslpassword=k"
    out = redact(text)
    assert "a b" not in out and "pw@" not in out and "zz" not in out and "=k" not in out
    assert "host=h" in out and "dbname=d" in out and "x=1" in out


def test_split_databases_keeps_key_value_and_multi_host_urls_whole():
    assert split_databases("app, billing  shop") == ["app", "billing", "shop"]
    assert split_databases("host=/run/postgresql dbname=app") == ["host=/run/postgresql dbname=app"]
    assert split_databases("postgresql://h1,h2/a,postgresql://h/b app") == [
        "postgresql://h1,h2/a,postgresql://h/b",
        "app",
    ]


def test_child_environment_is_minimal():
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/home/b",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "TMPDIR": "/var/tmp",
        "PGSSLMODE": "verify-full",
        "PGSERVICEFILE": "/etc/pg_service.conf",
        "PGPASSWORD": "x",
        "DATABASE_URL": "postgresql://u:pw@h/d",
        "AWS_SECRET_ACCESS_KEY": "k",
        "SLACK_WEBHOOK_URL": "https://hooks",
        "LIFEBOAT_SMTP_PASSWORD": "s",
    }
    libpq = children.environment(libpq=True, environ=environ)
    assert set(libpq) == {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TZ",
        "TMPDIR",
        "PGSSLMODE",
        "PGSERVICEFILE",
    }
    assert set(children.environment(environ=environ)) == {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TZ",
        "TMPDIR",
    }


def test_passfile_in_memory_reaches_the_child():
    conn = ConnInfo.parse("postgresql://u:se%3Acret@h/db")
    with client_env(conn) as child:
        assert child["env"]["PGPASSFILE"] == f"/proc/self/fd/{child['pass_fds'][0]}"
        out = subprocess.run(
            ["sh", "-c", 'stat -L -c %a "$PGPASSFILE"; cat "$PGPASSFILE"'],
            capture_output=True,
            text=True,
            check=True,
            **child,
        ).stdout
        assert out == "600\n*:*:*:*:se\\:cret\n"
    assert "DATABASE_URL" not in child["env"]


def test_without_memfd_the_passfile_is_private_and_stale_ones_go(tmp_path, monkeypatch):
    monkeypatch.setattr(conninfo, "_memfd", lambda: None)
    monkeypatch.setattr(conninfo.tempfile, "tempdir", str(tmp_path))
    conn = ConnInfo.parse("postgresql://u:pw@h/db")
    with client_env(conn) as child:
        path = Path(child["env"]["PGPASSFILE"])
        assert path.parent == tmp_path / f"lifeboat-{os.geteuid()}"
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text() == "*:*:*:*:pw\n"
    assert not path.exists()
    # A run killed with -9 left one behind: the next run removes it (its pid is gone).
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = path.parent / f"pgpass-{dead.pid}-00aa"
    left.write_text("*:*:*:*:pw\n")
    mine = path.parent / f"pgpass-{os.getpid()}-00bb"
    mine.write_text("*:*:*:*:pw\n")
    assert conninfo.remove_stale_passfiles(str(tmp_path)) == [str(left)]
    assert mine.exists()


def test_private_dir_that_is_a_symlink_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(conninfo.tempfile, "tempdir", str(tmp_path))
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / f"lifeboat-{os.geteuid()}").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="only this user can enter"):
        conninfo.private_dir()
