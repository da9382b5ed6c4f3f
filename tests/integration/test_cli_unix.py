"""`lifeboat` behaves like a good Unix tool: global options anywhere, --json on
every subcommand, quiet on a closed pipe, usage errors exit 2, and the
terminal's progress line never shares a line with a log line."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, fingerprint, run_cli

from lifeboat import cli

LIFEBOAT = str(ROOT / ".venv" / "bin" / "lifeboat")


def test_global_options_before_the_subcommand(backup_dir, lifeboat_env, tmp_path):
    config = tmp_path / "lifeboat.yml"
    config.write_text(f"backup_dir: {tmp_path / 'unused'}\n")
    env = dict(lifeboat_env)
    del env["LIFEBOAT_BACKUP_DIR"]
    backup_dir.mkdir()
    proc = run_cli(
        ["-q", "--config", str(config), "--backup-dir", str(backup_dir), "--json", "list"], env
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    # The flag after the subcommand still works, and wins over the one before it.
    proc = run_cli(["--backup-dir", "/nonexistent", "list", "--backup-dir", str(backup_dir)], env)
    assert (
        proc.returncode == 0 and "No backups in" in proc.stdout and str(backup_dir) in proc.stdout
    )
    # -q before the subcommand is not undone by the subcommand's default.
    assert cli.build_parser().parse_args(["-q", "status"]).quiet is True
    assert cli.build_parser().parse_args(["status"]).quiet is False


def test_closed_pipe_ends_quietly(tmp_path, lifeboat_env):
    """`lifeboat status --json | head -c 10`: no traceback, stopped by the closed pipe."""
    urls = [f"postgresql://localhost/db{i:04d}" for i in range(400)]
    env = dict(lifeboat_env, LIFEBOAT_DATABASES=json.dumps(urls))
    proc = subprocess.Popen(
        [LIFEBOAT, "status", "--json"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    head = proc.stdout.read(10)
    proc.stdout.close()  # what `head -c 10` does after ten bytes
    _, err = proc.communicate(timeout=60)
    assert head.startswith(b"{")
    # The report (1200 rows, far more than a pipe buffer) was cut short by the pipe.
    assert proc.returncode == 128 + signal.SIGPIPE, err
    assert err == b"", err.decode()


def test_closed_pipe_through_a_shell(tmp_path, lifeboat_env):
    urls = [f"postgresql://localhost/db{i:04d}" for i in range(400)]
    env = dict(lifeboat_env, LIFEBOAT_DATABASES=json.dumps(urls))
    proc = subprocess.run(
        ["bash", "-c", f"{LIFEBOAT} status --json | head -c 10"], env=env,
        capture_output=True, check=False,
    )  # fmt: skip
    assert proc.stdout == b'{\n  "host"'
    assert b"Traceback" not in proc.stderr and proc.stderr == b""


def test_restore_without_confirm_is_a_usage_error(app_db, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    proc = run_cli(["restore", "--latest"], env)
    assert proc.returncode == 2
    assert "needs confirmation" in proc.stderr and "--confirm" in proc.stderr
    proc = run_cli(["--json", "restore", "--latest"], env)
    assert proc.returncode == 2
    failure = json.loads(proc.stdout)
    assert failure["ok"] is False and "needs confirmation" in failure["error"]


def test_every_subcommand_speaks_json(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)

    def run(*args, code=0):
        proc = run_cli(list(args), env)
        assert proc.returncode == code, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    planned = run("backup", "--dry-run", "--json")
    assert planned[0]["database"] == app_db.name
    [done] = run("backup", "--json")
    assert done["ok"] and done["file"].startswith(str(backup_dir))
    [row] = run("--json", "list")
    assert row["path"] == done["file"] and row["state"] == "complete"
    [report] = run("verify", done["file"], "--json")
    assert report["ok"] and report["path"] == done["file"] and report["checks"]
    [drilled] = run("drill", "--latest", "--json")
    assert drilled["ok"] and drilled["source"] == done["file"]
    pruned = run("prune", "--dry-run", "--json")
    assert pruned == {"dry_run": True, "deleted": [], "ok": True}
    status = run("status", "--json")  # weekly and monthly: not due yet (day one)
    assert status["ok"] and {r["type"] for r in status["rows"]} == {"daily", "weekly", "monthly"}
    plan = run("restore", "--latest", "--dry-run", "--json")
    assert plan[0]["ok"]
    before = fingerprint(app_db)
    app_db.sql("DELETE FROM plots")
    [restored] = run("restore", "--latest", "--confirm", "--json")
    assert restored["ok"] and fingerprint(app_db) == before
    steps = restored["timings"]  # where the restore's time went, step by step
    assert list(steps) == ["pre_restore_backup", "load", "verify", "analyze", "swap"]
    assert all(0 <= seconds < restored["duration"] for seconds in steps.values())
    failure = run("verify", str(backup_dir / "nope.sql.gz"), "--json", code=1)
    assert failure["ok"] is False and failure["error_type"] and failure["error"]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def render(text: str) -> list[str]:
    """What a terminal shows: \\r returns to column 0, ESC[K erases to the end of the line."""
    lines, line, col = [], [], 0
    i = 0
    while i < len(text):
        if text.startswith("\x1b[K", i):
            del line[col:]
            i += 3
            continue
        char = text[i]
        if char == "\r":
            col = 0
        elif char == "\n":
            lines.append("".join(line))
            line, col = [], 0
        else:
            line[col : col + 1] = [char]
            col += 1
        i += 1
    return [*lines, "".join(line)]


def test_progress_line_is_cleared_before_a_log_line(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    cli.setup_logging(quiet=False)
    try:
        progress = cli.TerminalProgress()
        progress(10 * 1024 * 1024, 2 * 1024 * 1024)
        assert "dumped" in terminal.getvalue()  # the progress line is on screen
        logging.getLogger("lifeboat").warning("a log line in the middle of a dump")
        progress(20 * 1024 * 1024, 4 * 1024 * 1024)
        progress.done()
    finally:
        logging.getLogger("lifeboat").handlers.clear()
    shown = render(terminal.getvalue())
    assert "a log line in the middle of a dump" in shown, shown
    assert shown[1].startswith("  20.0 MiB dumped"), shown


@pytest.mark.parametrize("argv", [["status", "--bogus"], ["nosuch"]])
def test_usage_errors_exit_2(argv, lifeboat_env):
    assert run_cli(argv, lifeboat_env).returncode == 2
