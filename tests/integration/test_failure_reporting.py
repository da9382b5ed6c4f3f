"""A failure of any kind, on every path, tells people.

Backup, restore, verify (cheap) and the restore drill (deep), each failing
the expected way (a LifeboatError: unreachable database, corrupt backup) and
the unexpected way (a bug: any other exception, here carrying a secret). Every
one must reach the backup log, the run state, the metrics and the
notifications, with no secret anywhere.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD
from test_notify import Hooks, assert_no_secret, notify_settings

from lifeboat import backup, drill, dump, monitor, naming, restore

PATHS = ("backup", "restore", "verify", "drill")


@pytest.fixture
def hooks():
    server = Hooks()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class Bug(RuntimeError):
    pass


def boom(*args, **kwargs):
    raise Bug(f"boom with password {OWNER_PASSWORD}")


def corrupt_latest(backup_dir: Path) -> None:
    [path] = [p for p in (backup_dir / "daily").iterdir() if naming.parse(p.name)]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def run_path(path: str, make_config, app_db, backup_dir: Path, kind: str, monkeypatch):
    """Run one path so that it fails `kind`-ly; returns (result, state type, metric)."""
    config = make_config(app_db.url)
    if path == "backup":
        if kind == "error":
            config = make_config(app_db.url_for("no_such_database"))
        else:
            monkeypatch.setattr(dump, "stream_dump", boom)
        [result] = backup.run(config)
        return result, "daily", "lifeboat_backup_last_ok"
    [good] = backup.run(config)
    assert good.ok, good.error
    if kind == "error":
        corrupt_latest(backup_dir)
    if path == "restore":
        if kind == "bug":
            monkeypatch.setattr(restore.command, "load", boom)
        [result] = restore.run(config, restore.Request(latest=True, confirm=True))
        return result, "restore", "lifeboat_restore_last_ok"
    if kind == "bug":
        target = (restore, "check_source") if path == "verify" else (restore.load, "load")
        monkeypatch.setattr(*target, boom)
    [result] = drill.run(config, drill.Request(latest=True, deep=path == "drill"))
    return result, "daily", "lifeboat_verify_last_ok"


@pytest.mark.parametrize("kind", ["error", "bug"])
@pytest.mark.parametrize("path", PATHS)
def test_every_failure_reaches_log_state_metrics_and_notifications(
    path, kind, app_db, backup_dir, tmp_path, hooks, monkeypatch
):
    log_file, prom_dir = tmp_path / "log" / "lifeboat.log", tmp_path / "textfile"

    def make_config(url):
        return notify_settings(
            url, backup_dir, hooks=hooks, log_file=str(log_file), log_format="json",
            metrics_dir=str(prom_dir),
        )  # fmt: skip

    result, state_type, metric = run_path(path, make_config, app_db, backup_dir, kind, monkeypatch)
    database = result.database
    assert not result.ok and result.error and result.hint
    if kind == "bug":
        assert result.error.startswith("Unexpected error: Bug: boom with password")
        assert result.error_type == "InternalError"
    event_kind = {"drill": "verify"}.get(path, path)

    # Log: the failure event, as JSON.
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    [event] = [
        line["event"] for line in lines
        if "event" in line and line["event"]["kind"] == event_kind and not line["event"]["ok"]
    ]  # fmt: skip
    assert event["database"] == database and event["error"] == result.error
    # Run state and metrics.
    state = monitor.read_states(str(backup_dir))[(database, state_type)]
    key = "last_result" if path == "backup" else f"last_{event_kind}_result"
    assert state[key] == "failure"
    prom = (prom_dir / "lifeboat.prom").read_text()
    assert f'{metric}{{database="{database}",type="{state_type}"}} 0' in prom
    # Notification.
    [body] = [b for b in hooks.bodies("/hook") if b["kind"] == event_kind and not b["ok"]]
    assert body["database"] == database and body["error"] == result.error
    assert body["hint"] == result.hint
    # No secret in any of them (the bug's message quoted the password).
    blobs = [log_file.read_text(), prom, json.dumps(hooks.bodies("/"))]
    blobs += [p.read_text() for p in (backup_dir / ".state").iterdir()]
    for blob in blobs:
        assert_no_secret(blob, app_db.url)
