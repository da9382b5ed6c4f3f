"""Point-in-time recovery failures tell people, like a failed backup does.

A real cluster archiving into a local pgBackRest repository (test_pitr.py's
`world` fixture, a cluster of this module's own) and a real SMTP server
(test_notify.py's aiosmtpd `smtp` fixture, with AUTH). `lifeboat` runs as
cron would; every mail, log line and state file is checked for what the
person on call needs (host, stanza, cause, what to do) and for secrets.
The tests run in file order.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import test_notify
import test_pitr
from conftest import fingerprint
from test_notify import SMTP_PASSWORD, SMTP_USER, assert_no_secret
from test_pitr import STANZA

from lifeboat import eventlog, monitor, notify, pitr
from lifeboat.conninfo import ConnInfo
from lifeboat.pitr import alert

pytestmark = [
    pytest.mark.skipif(
        not Path("/usr/bin/pgbackrest").exists(), reason="pgbackrest is not installed"
    ),
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]
# The fixtures, reused: aiosmtpd with AUTH, and a cluster (with its pgBackRest
# repository and base backup) of this module's own.
smtp = test_notify.smtp
world = test_pitr.world
HOST = socket.gethostname()
ROW = f"stanza {STANZA}"  # the status row, the event's database and its run state


def mail_env(box, tmp_path: Path) -> dict:
    """Notification, backup log and metrics settings, as /etc/lifeboat/lifeboat.yml has them."""
    return {
        "LIFEBOAT_NOTIFY_EMAIL": "oncall@example.com",
        "LIFEBOAT_SMTP_HOST": "127.0.0.1",
        "LIFEBOAT_SMTP_PORT": str(box.port),
        "LIFEBOAT_SMTP_USER": SMTP_USER,
        "LIFEBOAT_SMTP_PASSWORD": SMTP_PASSWORD,
        "LIFEBOAT_LOG_FILE": str(tmp_path / "log" / "lifeboat.log"),
        "LIFEBOAT_LOG_FORMAT": "json",
        "LIFEBOAT_METRICS_DIR": str(tmp_path / "textfile"),
    }


def events(env: dict, kind: str) -> list[dict]:
    path = Path(env["LIFEBOAT_LOG_FILE"])
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [line["event"] for line in lines if line.get("event", {}).get("kind") == kind]


def states(world) -> dict:
    return monitor.read_states(world.env["LIFEBOAT_BACKUP_DIR"])


def subjects(box) -> list[str]:
    return [m["Subject"] for m in box.messages]


def body(message) -> str:
    return message.get_content()


def no_secret_anywhere(world, box, env: dict, url: str, *outputs) -> None:
    blobs = [e.content.decode(errors="replace") for e in box.envelopes]
    blobs += [Path(env["LIFEBOAT_LOG_FILE"]).read_text(), *outputs]
    state_dir = Path(world.env["LIFEBOAT_BACKUP_DIR"]) / ".state"
    blobs += [p.read_text() for p in state_dir.glob("*.json")]
    for blob in blobs:
        assert_no_secret(blob, url)


def wait_until(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_failing_archive_command_mails_once_then_recovery(world, smtp, tmp_path):
    shop = world.db("shop")
    env = mail_env(smtp, tmp_path)

    def status():
        proc = world.cli(["pitr", "status"], shop.url, **env)
        return proc, proc.stdout + proc.stderr

    # Healthy: the first check only notes the state, quietly.
    proc, out = status()
    assert proc.returncode == 0 and "PITR stanza pitrtest: OK" in out, out
    assert smtp.messages == []
    assert states(world)[(ROW, "pitr")]["last_pitr_result"] == "success"

    # Point archive_command at a stanza that does not exist and write some WAL.
    broken = f"pgbackrest --config={world.conf} --stanza=nosuchstanza archive-push %p"
    world.cluster.psql(f"ALTER SYSTEM SET archive_command = '{broken}'")
    world.cluster.psql("SELECT pg_reload_conf()")
    try:
        shop.sql("INSERT INTO orders (id, batch) VALUES (5000, 'unarchived')")
        world.cluster.psql("SELECT pg_switch_wal()")
        wait_until(
            lambda: world.cluster.psql(
                "SELECT last_failed_time > coalesce(last_archived_time, '-infinity')"
                " FROM pg_stat_archiver"
            ) == "t",
            "archive_command never failed",
        )  # fmt: skip
        proc, out = status()
        assert proc.returncode == 1 and "archive_command fails" in out, out
        [mail] = smtp.messages
        assert mail["Subject"] == f"[lifeboat] FAILED: pitr {ROW} on {HOST}"
        text = body(mail)
        assert f"Host: {HOST}" in text and f"Stanza: {STANZA}" in text
        assert "Error: archive_command fails: " in text
        assert f"What to do: Run `pgbackrest --config={world.conf} --stanza={STANZA} check`" in text
        assert "Recoverable window: " in text and "Newest base backup: " in text
        # The backup log and the run state have it; the status row says what to do.
        [failed] = events(env, "pitr")
        assert not failed["ok"] and "archive_command fails" in failed["error"]
        assert states(world)[(ROW, "pitr")]["last_pitr_result"] == "failure"
        row = json.loads(world.cli(["status", "--json"], shop.url).stdout)["rows"][-1]
        assert row["state"] == "FAILED" and "pgbackrest" in row["last_hint"], row

        # Five minutes later (cron): still failing, no second mail, no second log line.
        again, again_out = status()
        assert again.returncode == 1 and "archive_command fails" in again_out
        assert len(smtp.messages) == 1 and len(events(env, "pitr")) == 1

        # A day on, still failing (and stale by now): one reminder, the causes named.
        config = world.settings(shop.url)
        config = type(config)(**{
            **config.__dict__,
            "backup_dir": world.env["LIFEBOAT_BACKUP_DIR"],
            "notify_email": ("oncall@example.com",), "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port, "smtp_user": SMTP_USER, "smtp_password": SMTP_PASSWORD,
        })  # fmt: skip
        later = datetime.now(timezone.utc) + timedelta(hours=25)
        found = pitr.report(config, ConnInfo.parse(shop.url), later)
        assert alert.watch(config, found, later) == []
        assert subjects(smtp)[1:] == [f"[lifeboat] FAILED: pitr {ROW} on {HOST}"]
        reminder = body(smtp.messages[1])
        assert "Failing since: " in reminder and "no WAL archived for" in reminder
        assert alert.watch(config, found, later + timedelta(hours=1)) == []
        assert len(smtp.messages) == 2
    finally:
        world.cluster.psql("ALTER SYSTEM RESET archive_command")
        world.cluster.psql("SELECT pg_reload_conf()")

    # Archiving works again: one "recovered" message (notify_on has success), then quiet.
    wait_until(lambda: status()[0].returncode == 0, "status never recovered")
    assert subjects(smtp)[2:] == [f"[lifeboat] OK: pitr {ROW} on {HOST}"]
    assert "Recovered: archiving and base backups are OK again" in body(smtp.messages[2])
    proc, out = status()
    assert proc.returncode == 0 and len(smtp.messages) == 3
    assert [e["ok"] for e in events(env, "pitr")] == [False, True]
    no_secret_anywhere(world, smtp, env, shop.url, out)


def test_failed_restores_to_a_time_are_recorded_and_mailed(world, smtp, tmp_path):
    shop = world.db("shop")
    env = mail_env(smtp, tmp_path)
    before = fingerprint(shop)
    info = json.loads(world.pgbackrest("--output=json", "info").stdout)
    oldest = info[0]["backup"][0]["timestamp"]["start"]
    early = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(oldest - 3600))

    # A time before the oldest base backup: refused, and everybody hears of it.
    proc = world.cli(["restore", "--time", early, "--confirm"], shop.url, **env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Failed to restore to" in out and "before the recoverable window" in out
    [mail] = smtp.messages
    assert mail["Subject"] == f"[lifeboat] FAILED: restore shop on {HOST}"
    text = body(mail)
    assert "Error: Failed to restore to " in text and "oldest base backup" in text
    assert "What to do: Pick a later time" in text
    assert f"Point in time: {early}" in text and f"Stanza: {STANZA}" in text
    [event] = events(env, "restore")
    assert not event["ok"] and event["error_type"] == "RestoreRefused"
    assert event["details"]["point_in_time"] == early
    assert states(world)[("shop", "restore")]["last_restore_result"] == "failure"
    prom = (Path(env["LIFEBOAT_METRICS_DIR"]) / "lifeboat.prom").read_text()
    assert 'lifeboat_restore_last_ok{database="shop",type="restore"} 0' in prom

    # The repository is gone, or pgBackRest itself fails: the same path, in its own words.
    gone = world.root / "gone.conf"
    gone.write_text(world.conf.read_text().replace(str(world.repo), str(world.root / "no-repo")))
    broken = world.root / "broken.conf"
    broken.write_text(world.conf.read_text().replace("[global]\n", "[global]\nrepo1-type=tape\n"))
    outputs = [out]
    for config, error_type, said in (
        (gone, "RestoreRefused", "stanza pitrtest has no base backup yet (pgBackRest: missing"),
        (broken, "PitrFailed", "Failed to run pgbackrest info for stanza pitrtest: "),
    ):
        config.chmod(0o644)
        proc = world.cli(
            ["restore", "--time", world.now(), "--confirm"], shop.url,
            LIFEBOAT_PITR_CONFIG=str(config), **env,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        outputs.append(out)
        assert proc.returncode == 1 and said in out, out
        last = events(env, "restore")[-1]
        assert not last["ok"] and last["error_type"] == error_type and said in last["error"]
        assert smtp.messages[-1]["Subject"] == f"[lifeboat] FAILED: restore shop on {HOST}"
        assert f"Error: {last['error']}" in body(smtp.messages[-1])
    assert len(smtp.messages) == 3 and len(events(env, "restore")) == 3
    assert fingerprint(shop) == before
    no_secret_anywhere(world, smtp, env, shop.url, *outputs)


def test_drills_are_recorded_and_a_failed_one_mailed(world, smtp, tmp_path):
    shop = world.db("shop")
    env = mail_env(smtp, tmp_path)
    before = fingerprint(shop)
    world.db("other").sql("INSERT INTO ticks VALUES (0)")  # a transaction to recover
    time.sleep(5)
    proc = world.cli(["pitr", "drill", "--minutes", "0.05"], shop.url, **env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "OK point-in-time drill of shop" in out, out
    [mail] = smtp.messages  # notify_on has success by default
    assert mail["Subject"] == f"[lifeboat] OK: verify shop pitr on {HOST}"
    assert "Rto seconds: " in body(mail) and "Level: point-in-time" in body(mail)
    state = states(world)[("shop", "pitr")]
    assert state["last_verify_result"] == "success" and state["last_verify_rto_seconds"] > 0
    prom = (Path(env["LIFEBOAT_METRICS_DIR"]) / "lifeboat.prom").read_text()
    assert 'lifeboat_verify_last_ok{database="shop",type="pitr"} 1' in prom
    assert 'lifeboat_verify_last_rto_seconds{database="shop",type="pitr"}' in prom

    # To a time long before the oldest base backup: the drill fails, and says so.
    proc = world.cli(["pitr", "drill", "--minutes", "100000"], shop.url, **env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "FAILED point-in-time drill of shop" in out, out
    assert smtp.messages[1]["Subject"] == f"[lifeboat] FAILED: verify shop pitr on {HOST}"
    text = body(smtp.messages[1])
    assert "Error: Failed to restore to " in text and "before the recoverable window" in text
    assert [e["ok"] for e in events(env, "verify")] == [True, False]
    state = states(world)[("shop", "pitr")]
    assert state["last_verify_result"] == "failure"
    assert state["last_verify_success_at"]  # the last success is still known
    prom = (Path(env["LIFEBOAT_METRICS_DIR"]) / "lifeboat.prom").read_text()
    assert 'lifeboat_verify_last_ok{database="shop",type="pitr"} 0' in prom
    databases = world.cluster.psql("SELECT string_agg(datname, ',') FROM pg_database")
    assert "drill" not in databases
    assert fingerprint(shop) == before
    no_secret_anywhere(world, smtp, env, shop.url, out)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands files over")
def test_what_root_records_stays_the_backup_users(tmp_path):
    """Cron runs `lifeboat pitr status` as root; the backup user must still read the
    state it wrote and append to a backup log it had to create."""
    owner = pwd.getpwnam("postgres")
    store, logs = tmp_path / "backups", tmp_path / "log"
    for folder in (store, store / ".state", logs):
        folder.mkdir()
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    config = test_notify.notify_settings(
        "postgresql:///shop", store, log_file=str(logs / "lifeboat.log")
    )
    event = notify.Event(kind="pitr", database=ROW, type="pitr", ok=False, error="broken")
    with eventlog.attached(config):
        assert monitor.record(config, event) == []
    for path in (logs / "lifeboat.log", *(store / ".state").glob("*.json")):
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (owner.pw_uid, owner.pw_gid), path
    assert "pitr failed: " in (logs / "lifeboat.log").read_text()
