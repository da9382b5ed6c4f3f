"""Children get only what they need (issue 11 item 4).

lifeboat runs with DATABASE_URL (password inside), AWS keys and a Slack
webhook in its environment. Every program it starts (pg_dump, pg_dumpall,
psql, pg_restore, age) is replaced by a recording wrapper that copies its own
/proc/<pid>/environ, /proc/<pid>/cmdline and open descriptors as it starts
(exec keeps that environment, so it is what the real program runs with), then
execs the real program. No child may hold any of those secrets or the
password, in its environment or its argv; the password reaches libpq only
through an in-memory passfile.
"""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD, fingerprint, run_cli
from test_encryption import keygen

from lifeboat import pg as pg_tools

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
SLACK = "https://hooks.slack.example/services/T000/B000/SLACKSECRET"
PG_TOOLS = ("pg_dump", "pg_dumpall", "psql", "pg_restore")
ALLOWED = {"PATH", "HOME", "TMPDIR", "TZ", "LANG", "LANGUAGE"}


def real_bin() -> Path:
    return Path(pg_tools.find_tool("pg_dump")).parent


@pytest.fixture
def wrappers(tmp_path) -> tuple[Path, Path]:
    """(bin dir of wrappers, folder of records)."""
    wrap = tmp_path / "wrap"
    records = tmp_path / "records"
    wrap.mkdir()
    records.mkdir()
    targets = {name: str(real_bin() / name) for name in PG_TOOLS}
    targets["age"] = shutil.which("age")
    for name, target in targets.items():
        script = wrap / name
        script.write_text(
            "#!/bin/sh\n"
            f'rec="{records}/{name}.$$"\n'
            'cp /proc/$$/environ "$rec.env"\n'
            'cp /proc/$$/cmdline "$rec.argv"\n'
            'for fd in /proc/$$/fd/*; do printf "%s %s\\n" "${fd##*/}" "$(readlink "$fd")"; '
            'done > "$rec.fds"\n'
            f'exec {target} "$@"\n'
        )
        script.chmod(0o755)
    return wrap, records


def read_records(records: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for env_file in sorted(records.glob("*.env")):
        name, pid = env_file.stem.rsplit(".", 1)
        raw_env = env_file.read_bytes()
        env = dict(item.split(b"=", 1) for item in raw_env.split(b"\0") if b"=" in item)
        found.setdefault(name, []).append(
            {
                "pid": pid,
                "raw": raw_env + (records / f"{name}.{pid}.argv").read_bytes(),
                "env": {k.decode(): v.decode() for k, v in env.items()},
                "fds": (records / f"{name}.{pid}.fds").read_text(),
            }
        )
    return found


def test_children_hold_no_secrets(app_db, lifeboat_env, backup_dir, wrappers, tmp_path):
    wrap, records = wrappers
    key = tmp_path / "age.key"
    recipient = keygen(key)
    env = dict(
        lifeboat_env,
        PATH=f"{wrap}:{lifeboat_env['PATH']}",
        DATABASE_URL=app_db.url,
        AWS_ACCESS_KEY_ID="AKIAEXAMPLEKEYID",
        AWS_SECRET_ACCESS_KEY=AWS_SECRET,
        SLACK_WEBHOOK_URL=SLACK,
        LIFEBOAT_NOTIFY_ON="failure",
        LIFEBOAT_PG_BIN_DIR=str(wrap),
        LIFEBOAT_GLOBALS="true",
        LIFEBOAT_ENCRYPT_RECIPIENTS=recipient,
        LIFEBOAT_ENCRYPT_IDENTITY_FILE=str(key),
        LC_ALL="C.UTF-8",
        LIFEBOAT_PLAIN_JOBS="1",  # the plain restore through psql, a child sampled too
    )
    expected = fingerprint(app_db)
    for args in (["backup"], ["restore", "--latest", "--confirm"]):
        proc = run_cli(args, env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    custom = dict(env, LIFEBOAT_FORMAT="custom", LIFEBOAT_ENCRYPT_RECIPIENTS="")
    for args in (["backup", "--type", "weekly"], ["restore", "--latest", "--confirm"]):
        proc = run_cli(args, custom)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == expected

    children = read_records(records)
    # Every kind of child really ran through a wrapper (else this test proves nothing).
    assert {"pg_dump", "pg_dumpall", "psql", "pg_restore", "age"} <= set(children)
    secrets = [
        AWS_SECRET.encode(),
        SLACK.encode(),
        b"SLACKSECRET",
        OWNER_PASSWORD.encode(),
        urllib.parse.quote(OWNER_PASSWORD, safe="").encode(),
        b"DATABASE_URL",
        b"AWS_SECRET_ACCESS_KEY",
        b"SLACK_WEBHOOK_URL",
        b"PGPASSWORD",
    ]
    for name, runs in children.items():
        for run in runs:
            leaked = [s.decode() for s in secrets if s in run["raw"]]
            assert not leaked, f"{name} (pid {run['pid']}) holds {leaked}"
            extra = {k for k in run["env"] if k not in ALLOWED and not k.startswith(("LC_", "PG"))}
            assert not extra, f"{name} got variables it does not need: {sorted(extra)}"
            if name == "age":
                assert not any(k.startswith("PG") for k in run["env"]), run["env"]
            assert run["env"]["LC_ALL"] == "C.UTF-8"  # the locale is passed on
    # Clients that log in get the password as an in-memory passfile they inherit.
    logins = [
        run for name in PG_TOOLS for run in children.get(name, []) if "PGPASSFILE" in run["env"]
    ]
    assert len(logins) >= 4
    for run in logins:
        passfile = run["env"]["PGPASSFILE"]
        assert passfile.startswith("/proc/self/fd/")
        fd = passfile.rsplit("/", 1)[1]
        assert f"{fd} /memfd:lifeboat-pgpass (deleted)" in run["fds"], run["fds"]


def test_user_pg_settings_reach_libpq_but_pgpassword_does_not(app_db, pg, lifeboat_env, wrappers):
    """PGSSLMODE and friends are passed on; a PGPASSWORD the user set is handed over
    through the passfile instead (libpq treats both the same)."""
    wrap, records = wrappers
    env = dict(
        lifeboat_env,
        PGHOST="127.0.0.1",
        PGPORT=str(pg.port),
        PGUSER="app_owner",
        PGDATABASE=app_db.name,
        PGPASSWORD=OWNER_PASSWORD,
        PGSSLMODE="disable",
        PGAPPNAME="lifeboat-test",
        LIFEBOAT_PG_BIN_DIR=str(wrap),
    )
    proc = run_cli(["backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [dump] = read_records(records)["pg_dump"][-1:]
    assert "PGPASSWORD" not in dump["env"] and OWNER_PASSWORD.encode() not in dump["raw"]
    assert dump["env"]["PGSSLMODE"] == "disable" and dump["env"]["PGAPPNAME"] == "lifeboat-test"
    assert dump["env"]["PGPASSFILE"].startswith("/proc/self/fd/")
