"""No password on disk after a crash; secrets files are private (issue 11 items 2 and 5).

kill -9 hits lifeboat while pg_dump (backup) or psql (restore) is running
with the password handed over: a wrapper program stands in for the client,
reports its pid and blocks, so the kill lands inside the window on cue. The
test proves the window was entered (the running child holds the password in
its passfile) and then searches /tmp, the store and its state for the
password: it must not be anywhere. Older versions' leftovers
(/tmp/lifeboat-XXXXXXXX/pgpass) are removed by the next run when they belong
to the running user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import signal
import stat
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from lifeboat import pg as pg_tools

SKIP_DIRS = ("bash_jobs", "bash_tool_")  # the harness's own files, not ours to read


@pytest.fixture
def secret_db(pg):
    """A database owned by a role with a password used nowhere else."""
    suffix = secrets.token_hex(4)
    role, name = f"kill_{suffix}", f"killdb_{suffix}"
    password = f"pw:{secrets.token_hex(12)}@/"
    pg.psql(f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'")
    pg.psql(f"CREATE DATABASE {name} OWNER {role}")
    pg.psql(
        f"SET ROLE {role}; CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 1000) g",
        db=name,
    )
    url = f"postgresql://{role}:{urllib.parse.quote(password, safe='')}@127.0.0.1:{pg.port}/{name}"
    yield name, url, password
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    for db in pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{name}%'").split():
        pg.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    pg.psql(f"DROP ROLE IF EXISTS {role}")


def wrappers(folder: Path, blocking: str) -> Path:
    """Client programs that run the real ones; `blocking` reports its pid and waits."""
    folder.mkdir()
    real = Path(pg_tools.find_tool("pg_dump")).parent
    for name in ("pg_dump", "pg_dumpall", "psql", "pg_restore"):
        body = f'exec {real / name} "$@"\n'
        if name == blocking:
            body = (
                '[ "$1" = --version ] && ' + body + f'echo $$ > "{folder}/{name}.pid"\n'
                "while :; do sleep 0.2; done\n"
            )
        (folder / name).write_text("#!/bin/sh\n" + body)
        (folder / name).chmod(0o755)
    return folder


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"lifeboat ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def files_holding(secret: str, since: float, *roots: Path) -> list[str]:
    """Files under `roots` written since `since` (a file holding the password can only
    have been written by the run under test) that hold the password, plain or URL-quoted."""
    needles = {secret.encode(), urllib.parse.quote(secret, safe="").encode()}
    found = set()  # roots may nest
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(SKIP_DIRS)]
            for name in files:
                path = os.path.join(folder, name)
                try:
                    info = os.lstat(path)
                    if not stat.S_ISREG(info.st_mode) or info.st_mtime < since:
                        continue
                    if info.st_size > 64 * 1024 * 1024:
                        continue
                    data = Path(path).read_bytes()
                except OSError:
                    continue
                if any(n in data for n in needles):
                    found.add(path)
    return sorted(found)


def kill_in_window(args, env, folder: Path, tool: str, password: str) -> None:
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "lifeboat"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        child = wait_for(folder / f"{tool}.pid", proc)
        # Inside the window: the child holds the password, in a passfile in memory.
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        [passfile] = [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"PGPASSFILE=")]
        assert passfile.startswith("/proc/self/fd/")
        held = Path(f"/proc/{child}/fd/{passfile.rsplit('/', 1)[1]}")
        assert os.readlink(held) == "/memfd:lifeboat-pgpass (deleted)"
        assert password.replace(":", "\\:") in held.read_text()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    finally:
        # Everything we started (the session of that lifeboat): the blocked wrapper too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_kill_9_during_backup_leaves_no_password(secret_db, lifeboat_env, backup_dir, tmp_path):
    _name, url, password = secret_db
    since = time.time() - 1
    folder = wrappers(tmp_path / "bin", "pg_dump")
    env = dict(lifeboat_env, DATABASE_URL=url, LIFEBOAT_PG_BIN_DIR=str(folder))
    kill_in_window(["backup"], env, folder, "pg_dump", password)
    assert files_holding(password, since, Path(tempfile.gettempdir()), backup_dir, tmp_path) == []


def test_kill_9_during_restore_leaves_no_password(secret_db, lifeboat_env, backup_dir, tmp_path):
    _name, url, password = secret_db
    since = time.time() - 1
    env = dict(lifeboat_env, DATABASE_URL=url)
    proc = run_cli(["backup"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = wrappers(tmp_path / "bin", "psql")
    env["LIFEBOAT_PG_BIN_DIR"] = str(folder)
    env["LIFEBOAT_PLAIN_JOBS"] = "1"  # the psql load, whose psql is killed
    kill_in_window(["restore", "--latest", "--confirm"], env, folder, "psql", password)
    assert files_holding(password, since, Path(tempfile.gettempdir()), backup_dir, tmp_path) == []


def test_next_run_removes_older_versions_passfiles(secret_db, lifeboat_env):
    """Older versions left /tmp/lifeboat-XXXXXXXX/pgpass after a crash."""
    _name, url, _password = secret_db
    nobody = pwd.getpwnam("nobody")
    made = {}
    for kind in ("stale", "fresh", "others"):
        folder = Path(tempfile.mkdtemp(prefix="lifeboat-"))  # as the old versions did
        (folder / "pgpass").write_text("*:*:*:*:old-password\n")
        (folder / "pgpass").chmod(0o600)
        if kind != "fresh":
            old = time.time() - 3600
            os.utime(folder / "pgpass", (old, old))
        if kind == "others":
            os.chown(folder / "pgpass", nobody.pw_uid, nobody.pw_gid)
            os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        made[kind] = folder
    try:
        proc = run_cli(["backup"], dict(lifeboat_env, DATABASE_URL=url))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not made["stale"].exists()
        assert (made["fresh"] / "pgpass").exists()  # may belong to a run going on now
        assert (made["others"] / "pgpass").exists()  # not ours to judge
    finally:
        for folder in made.values():
            subprocess.run(["rm", "-rf", str(folder)], check=False)


# --------------------------------------------------------------------------- secrets files


def config_with_secrets(tmp_path: Path, url: str, mode: int) -> tuple[Path, Path]:
    secrets_file = tmp_path / "secrets.yml"
    secrets_file.write_text(f"database_url: '{url}'\n")
    secrets_file.chmod(mode)
    config = tmp_path / "lifeboat.yml"
    config.write_text(f"secrets_file: {secrets_file}\n")
    return config, secrets_file


@pytest.mark.parametrize("mode", [0o640, 0o660, 0o620, 0o604, 0o700])
def test_secrets_file_with_group_or_other_access_is_refused(app_db, lifeboat_env, tmp_path, mode):
    config, secrets_file = config_with_secrets(tmp_path, app_db.url, mode)
    env = dict(lifeboat_env, LIFEBOAT_CONFIG=str(config))
    proc = run_cli(["backup"], env)
    out = proc.stdout + proc.stderr
    if mode == 0o700:  # owner-only (execute is odd, but no one else has access)
        assert proc.returncode == 0, out
        return
    assert proc.returncode != 0
    assert f"accessible to other users (mode {mode:04o})" in out
    assert f"chmod 600 {secrets_file}" in out
    assert not list(Path(lifeboat_env["LIFEBOAT_BACKUP_DIR"]).rglob("*.sql.gz"))


def test_secrets_file_owned_by_another_user_is_refused(app_db, lifeboat_env, tmp_path):
    config, secrets_file = config_with_secrets(tmp_path, app_db.url, 0o600)
    nobody = pwd.getpwnam("nobody")
    os.chown(secrets_file, nobody.pw_uid, nobody.pw_gid)
    proc = run_cli(["backup"], dict(lifeboat_env, LIFEBOAT_CONFIG=str(config)))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"owned by uid {nobody.pw_uid}" in out
    assert f"chown {pwd.getpwuid(os.geteuid()).pw_name} {secrets_file}" in out
    os.chown(secrets_file, os.geteuid(), os.getegid())  # fixed as told: it works
    proc = run_cli(["backup"], dict(lifeboat_env, LIFEBOAT_CONFIG=str(config)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_search_finds_a_password_written_in_tmp(tmp_path):
    """The search above can fail: a file written now under /tmp, plain or URL-quoted."""
    since = time.time() - 1
    password = f"pw:{secrets.token_hex(12)}@/"
    with tempfile.NamedTemporaryFile(dir=tempfile.gettempdir(), suffix=".conf") as plain:
        plain.write(f"password={password}\n".encode())
        plain.flush()
        quoted = tmp_path / "url"
        quoted.write_text(f"postgresql://u:{urllib.parse.quote(password, safe='')}@h/d")
        found = files_holding(password, since, Path(tempfile.gettempdir()), tmp_path)
        assert found == sorted([plain.name, str(quoted)])
