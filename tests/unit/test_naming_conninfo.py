from datetime import datetime, timezone
from pathlib import Path

import pytest

from lifeboat import naming
from lifeboat.conninfo import ConnInfo, client_env, redact
from lifeboat.errors import ConfigError


def test_guide_name_round_trips():
    name = "plotzed-daily-backup-2025-01-15T14-30-00.sql.gz"
    parsed = naming.parse(name)
    assert parsed.label == "plotzed" and parsed.type == "daily"
    assert parsed.created == datetime(2025, 1, 15, 14, 30, tzinfo=timezone.utc)
    assert parsed.name == name and parsed.path == f"daily/{name}"


def test_pre_restore_and_sequence_parse():
    parsed = naming.parse("my_db-pre-restore-backup-2025-01-15T14-30-00-2.dump")
    assert (parsed.label, parsed.type, parsed.seq, parsed.ext) == (
        "my_db",
        "pre-restore",
        2,
        ".dump",
    )


@pytest.mark.parametrize(
    "name",
    [
        "notes.txt",
        "plotzed-daily-backup-2025-01-15.sql.gz",
        "plotzed-hourly-backup-2025-01-15T14-30-00.sql.gz",
        "x-daily-backup-2025-01-15T14-30-00.sql.gz.partial",
    ],
)
def test_foreign_names_are_not_ours(name):
    assert naming.parse(name) is None


def test_build_uses_utc():
    local = datetime(2025, 1, 15, 16, 30, tzinfo=timezone.utc).astimezone()
    assert (
        naming.build("db", "weekly", local, ".sql.gz").name
        == "db-weekly-backup-2025-01-15T16-30-00.sql.gz"
    )


def test_unknown_type_is_refused():
    with pytest.raises(ConfigError, match="daily, weekly, monthly"):
        naming.check_type("hourly")


def test_safe_label():
    # Readable part plus a hash where the name lost characters; safe names are their own label.
    assert naming.safe_label("my-app db/1").startswith("my_app_db_1_")
    assert naming.safe_label("my_app_db_1") == "my_app_db_1"
    assert naming.safe_label("my-db") != naming.safe_label("my_db")
    assert naming.safe_label("база") != naming.safe_label("данные")


def test_url_with_encoded_password():
    conn = ConnInfo.from_url(
        "postgresql://app%40x:p%40ss%3Aw%2Frd@db.example:6543/plot%20zed?sslmode=require"
    )
    assert (conn.user, conn.password, conn.host, conn.port, conn.dbname) == (
        "app@x",
        "p@ss:w/rd",
        "db.example",
        "6543",
        "plot zed",
    )
    assert "p%40ss" not in conn.conninfo() and "p@ss" not in conn.conninfo()
    assert conn.conninfo() == (
        "dbname='plot zed' user=app@x host=db.example port=6543 sslmode=require"
    )
    assert "password" not in repr(conn) and "p@ss" not in repr(conn)


def test_socket_host_in_query():
    conn = ConnInfo.from_url("postgresql://postgres@/big?host=/run/postgresql&port=5433")
    assert conn.host == "/run/postgresql" and conn.port == "5433"
    assert "host=/run/postgresql" in conn.conninfo()


@pytest.mark.parametrize(
    "url", ["", "mysql://x/y", "postgresql://host:5432/", "postgresql://host:abc/db"]
)
def test_bad_urls_are_refused_with_a_hint(url):
    with pytest.raises(ConfigError) as err:
        ConnInfo.from_url(url)
    assert err.value.hint


def test_passfile_is_private_and_removed():
    import os

    conn = ConnInfo.from_url("postgresql://u:se%3Acret@h/db")
    with client_env(conn) as child:
        path = child["env"]["PGPASSFILE"]
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert Path(path).read_text() == "*:*:*:*:se\\:cret\n"
    assert not os.path.exists(path)


def test_redact_removes_raw_and_encoded_secrets():
    text = "failed for postgresql://u:p%40ss@h/db and p@ss"
    out = redact(text, "p@ss")
    assert "p@ss" not in out and "p%40ss" not in out
