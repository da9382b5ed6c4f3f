""" "Never less than you had", on the hard branches of a restore.

Each test breaks a restore at one point, against real servers, and checks
what the user relies on: the original database is identical (fingerprint),
nothing is left behind (scratch databases, downloads, partial files), and
the message says what happened.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from conftest import OWNER, REPORTING, ROOT, fingerprint, run_cli
from s3_fixtures import CuttingProxy

from lifeboat import naming

TRAILER = "-- PostgreSQL database dump complete"


def leftovers(db) -> list[str]:
    pattern = db.name.replace("_", "\\_") + "\\_\\_lifeboat%"
    return db.cluster.psql(
        f"SELECT datname FROM pg_database WHERE datname LIKE '{pattern}'"
    ).split()


def stored(backup_dir: Path, type_: str) -> list[Path]:
    folder = backup_dir / type_
    return sorted(p for p in folder.iterdir() if naming.parse(p.name)) if folder.exists() else []


def no_downloads(backup_dir: Path) -> bool:
    folder = backup_dir / ".restore"
    return not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))


def stock_dump(backup_dir: Path, tmp_path: Path, edit) -> Path:
    """The plain SQL of the newest daily backup, edited, as a stock `.sql` file."""
    [backup] = [p for p in stored(backup_dir, "daily") if p.name.endswith(".sql.gz")]
    text = gzip.decompress(backup.read_bytes()).decode()
    edited = edit(text)
    assert edited != text
    path = tmp_path / "edited.sql"
    path.write_text(edited)
    return path


def damaged_copy(app_db, env) -> tuple[dict, dict]:
    """Back up, then change the data: (fingerprint of the backup, of what is there now)."""
    run_cli(["backup"], env, check=True)
    backed_up = fingerprint(app_db)
    app_db.sql("DELETE FROM plots WHERE id % 3 = 0; UPDATE users SET name = 'changed'")
    return backed_up, fingerprint(app_db)


def test_scratch_failing_its_row_count_check_leaves_the_original(
    app_db, backup_dir, lifeboat_env, tmp_path
):
    """A dump whose own statements remove rows after COPY: the scratch copy holds fewer
    rows than the dump streamed, so it is dropped and the original stays."""
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    _, now = damaged_copy(app_db, env)
    dump = stock_dump(
        backup_dir,
        tmp_path,
        lambda t: t.replace(TRAILER, f"DELETE FROM public.plots WHERE id <= 10;\n\n{TRAILER}"),
    )
    proc = run_cli(["restore", "--file", str(dump), "--confirm", "--skip-pre-backup"], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "public.plots" in out and "1990" in out and "2000" in out, out
    assert fingerprint(app_db) == now
    assert leftovers(app_db) == []


def test_sql_error_halfway_over_an_existing_original(app_db, backup_dir, lifeboat_env, tmp_path):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    _, now = damaged_copy(app_db, env)
    # After the users' rows went in, before the plots' (one transaction: all undone).
    dump = stock_dump(
        backup_dir,
        tmp_path,
        lambda t: t.replace("COPY public.plots", "SELECT 1/0;\nCOPY public.plots"),
    )
    proc = run_cli(["restore", "--file", str(dump), "--confirm"], env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # psql (jobs=1) or the parallel load (jobs>1, the default) names the SQL error.
    assert "failed" in proc.stdout and "division by zero" in proc.stdout, proc.stdout
    assert "The original database is untouched" in proc.stdout
    assert fingerprint(app_db) == now
    assert leftovers(app_db) == []
    # The pre-restore backup of what was there is complete and kept (it was taken first).
    [pre] = [p for p in stored(backup_dir, "pre-restore") if not p.name.endswith(".json")]
    assert Path(f"{pre}.manifest.json").exists()


def test_failing_pre_restore_backup_stops_the_restore(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    _, _ = damaged_copy(app_db, env)
    # A table the owner cannot read (another role's, no grant): pg_dump of the current
    # database fails, so the restore has no way back and must not go on.
    app_db.sql(
        f"CREATE TABLE locked (x int); ALTER TABLE locked OWNER TO {REPORTING}; "
        f"REVOKE ALL ON locked FROM {OWNER}",
        superuser=True,
    )
    now = fingerprint(app_db, superuser=True)
    proc = run_cli(["restore", "--latest", "--confirm"], env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    [failed] = [line for line in proc.stdout.splitlines() if "FAILED" in line]
    assert f"Failed to take the pre-restore backup of {app_db.name}" in failed, out
    assert "permission denied for table locked" in failed
    assert "The restore stopped before changing anything" in failed
    assert fingerprint(app_db, superuser=True) == now
    assert leftovers(app_db) == []
    assert list((backup_dir / "pre-restore").iterdir()) == []  # no partial file left


class DownloadCut(CuttingProxy):
    """Like CuttingProxy, but counts what comes back: the endpoint dies mid-download."""

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()


def test_s3_gone_mid_download_leaves_the_original(app_db, backup_dir, lifeboat_env, s3):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env)
    app_db.sql(
        "INSERT INTO users (email, name) SELECT 'x' || g || '@example.com', md5(g::text) "
        "FROM generate_series(1, 20000) g"
    )  # big enough that the cut lands inside the body
    _, now = damaged_copy(app_db, env)
    [key] = [k for k in s3.objects("backups/daily/") if k.endswith(".sql.gz")]
    size = len(s3.get(key))
    proxy = DownloadCut(int(s3.endpoint.rsplit(":", 1)[1]), limit=size // 2)
    cut_env = dict(env, AWS_ENDPOINT_URL=proxy.url, LIFEBOAT_S3_MAX_ATTEMPTS="2")
    try:
        proc = run_cli(["restore", "--from-s3", f"s3://{s3.bucket}/{key}", "--confirm"], cut_env)
    finally:
        proxy.close()
    assert proxy.sent > size // 2  # the download had started when the endpoint died
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"s3://{s3.bucket}/{key}" in out and "download" in out.lower(), out
    assert fingerprint(app_db) == now
    assert leftovers(app_db) == []
    assert no_downloads(backup_dir)
    assert stored(backup_dir, "pre-restore") == []  # stopped before touching anything


def test_s3_unreachable_restore_refuses_with_the_endpoint(app_db, backup_dir, lifeboat_env, s3):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **s3.env)
    _, now = damaged_copy(app_db, env)
    [key] = [k for k in s3.objects("backups/daily/") if k.endswith(".sql.gz")]
    down = dict(env, AWS_ENDPOINT_URL="http://127.0.0.1:1", LIFEBOAT_S3_MAX_ATTEMPTS="1")
    proc = run_cli(["restore", "--from-s3", f"s3://{s3.bucket}/{key}", "--confirm"], down)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "127.0.0.1:1" in out, out
    assert fingerprint(app_db) == now
    assert leftovers(app_db) == [] and no_downloads(backup_dir)


def _child(parent: subprocess.Popen, name: str, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and parent.poll() is None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                fields = dict(
                    line.split(":\t", 1)
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if ":\t" in line
                )
                if fields.get("Name", "").strip() == name and fields["PPid"].strip() == str(
                    parent.pid
                ):
                    return int(pid)
        time.sleep(0.005)
    out, err = parent.communicate(timeout=5) if parent.poll() is not None else ("", "")
    raise AssertionError(f"{name} never started under {parent.pid}: {out}{err}")


def test_sigterm_mid_restore_cleans_up_at_once(app_db, backup_dir, lifeboat_env):
    """SIGTERM (systemd stopping the unit, a CI timeout): unlike SIGKILL, lifeboat
    cleans up before it exits, so nothing waits for the next run."""
    # jobs=1: the psql load, whose psql this test catches
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_PLAIN_JOBS="1")  # its psql is caught
    backed_up, now = damaged_copy(app_db, env)
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/lifeboat"), "restore", "--latest", "--confirm"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        psql = _child(proc, "psql")
        os.kill(psql, signal.SIGSTOP)  # the load is frozen: the SIGTERM lands mid-restore
        assert leftovers(app_db), "the scratch database should exist mid-restore"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err, err
    assert (
        not Path(f"/proc/{psql}").exists() or "zombie" in Path(f"/proc/{psql}/status").read_text()
    )
    assert fingerprint(app_db) == now
    assert leftovers(app_db) == []
    assert no_downloads(backup_dir)
    # The lock is free and the backup good: the next restore brings the data back.
    proc = run_cli(["restore", "--latest", "--confirm", "--skip-pre-backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == backed_up
