"""Commands of README.md and docs/*.md that no other test ran as documented (issue 12.9).

Each test runs the command with the flags and variables the docs give, changing
only host-specific values (URLs, paths, the lifeboat binary's location), and
checks what the docs promise. tests/unit/test_docs_commands.py keeps every
documented flag, `-e` variable, make target and LIFEBOAT_* variable real.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pgcluster
import pytest
from conftest import ROOT, AppDB, fingerprint, make_db, run_cli

from lifeboat import naming

LIFEBOAT = str(ROOT / ".venv" / "bin" / "lifeboat")


def ansible(env: dict, *args: str) -> subprocess.CompletedProcess:
    env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        ["ansible-playbook", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def sh(command: str, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], env=env, capture_output=True, text=True, **kw
    )


def backups(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    found = [p for p in folder.iterdir() if naming.parse(p.name)]
    return sorted(found, key=lambda p: naming.parse(p.name))


def make(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", *args], cwd=ROOT, env=env, capture_output=True, text=True)


# --- README: make backup, make demo-stop ----------------------------------------------------


def test_make_backup_of_the_demo_database_then_demo_stop(tmp_path, lifeboat_env):
    """`make backup` with DATABASE_URL unset: a demo cluster, a plotzed backup that
    `gunzip -c FILE | head` and `gunzip -c FILE | psql` read; `make demo-stop` stops it.
    Paths substituted: the demo directory and the store (the checkout is shared)."""
    demo, store = tmp_path / "demo", tmp_path / "store"
    paths = (f"DEMO_DIR={demo}", f"ARGS=-e lifeboat_backup_dir={store}")
    env = {k: v for k, v in lifeboat_env.items() if k != "DATABASE_URL"}
    try:
        proc = make(env, "backup", *paths)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "DATABASE_URL is not set: using the demo database" in proc.stdout
        [dump] = backups(store / "daily")
        assert dump.name.startswith("plotzed-daily-backup-") and dump.name.endswith(".sql.gz")
        assert Path(f"{dump}.manifest.json").exists()
        head = sh(f"gunzip -c {dump} | head", env)
        assert "PostgreSQL database dump" in head.stdout
        # Restores without lifeboat, into a new database on the demo server.
        url = (demo / "demo.env").read_text().strip()
        copy = url.rsplit("/", 1)[0] + "/plotzed_copy"
        subprocess.run(["psql", "-X", "-q", "-d", url, "-c", "CREATE DATABASE plotzed_copy"],
                       check=True, capture_output=True)  # fmt: skip
        restored = sh(f"gunzip -c {dump} | psql -X -q -v ON_ERROR_STOP=1 '{copy}'", env)
        assert restored.returncode == 0, restored.stderr
        counts = subprocess.run(
            ["psql", "-X", "-At", "-d", copy, "-c",
             "SELECT (SELECT count(*) FROM users) || ' ' || (SELECT count(*) FROM plots)"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        assert counts.stdout.strip() == "500 2000"  # the sample schema: users, plots
    finally:
        stopped = make(env, "demo-stop", f"DEMO_DIR={demo}")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not pgcluster.Cluster(demo / "pgdata", 0).is_running()


def test_make_backup_of_database_url(app_db, tmp_path, lifeboat_env):
    store = tmp_path / "store"
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    proc = make(env, "backup", f"ARGS=-e lifeboat_backup_dir={store}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo" not in proc.stdout
    [dump] = backups(store / "daily")
    assert naming.parse(dump.name).label == app_db.name


# --- restore.yml variables no other test passes -----------------------------------------------


def test_restore_playbook_type_keep_replaced_and_block_writes(app_db, pg, backup_dir, lifeboat_env):
    """`-e restore_latest=true -e restore_type=weekly -e keep_replaced_database=true
    -e restore_block_writes=true -e confirm=true`: each variable has its documented effect."""
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup", "--type", "weekly"], env, check=True)
    weekly = fingerprint(app_db)
    app_db.sql("DELETE FROM plots")
    run_cli(["backup"], env, check=True)  # the newest backup: daily, without plots
    [daily] = backups(backup_dir / "daily")
    [weekly_file] = backups(backup_dir / "weekly")
    app_db.sql("DELETE FROM users")
    proc = ansible(
        env, "playbooks/restore.yml", "-e", f"lifeboat_backup_dir={backup_dir}",
        "-e", "restore_latest=true", "-e", "restore_type=weekly",
        "-e", "keep_replaced_database=true", "-e", "restore_block_writes=true",
        "-e", "confirm=true",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.replace("\n        ", " ")
    assert f"restored from {weekly_file}" in out and str(daily) not in out
    assert fingerprint(app_db) == weekly
    assert "writes refused from the pre-restore snapshot to the swap" in out
    [kept] = pg.psql(
        f"SELECT datname FROM pg_database WHERE datname LIKE '{app_db.name}__lifeboat_replaced_%'"
    ).split()
    assert f"previous kept as {kept}" in out
    assert AppDB(kept, app_db.url_for(kept), pg).sql("SELECT count(*) FROM users") == "0"
    # The read-only default of --block-writes does not outlive the restore.
    assert app_db.sql("SHOW default_transaction_read_only") == "off"
    pg.psql(f'DROP DATABASE "{kept}"')


# --- S3 from the command line ------------------------------------------------------------------


def test_backup_playbook_with_the_bucket_on_the_command_line(app_db, backup_dir, s3, lifeboat_env):
    """docs/s3.md: `ansible-playbook playbooks/backup.yml -e lifeboat_s3_bucket=BUCKET`."""
    env = {**lifeboat_env, **s3.env, "DATABASE_URL": app_db.url}
    env.pop("BACKUP_S3_BUCKET")  # the bucket comes from -e only
    proc = ansible(env, "playbooks/backup.yml", "-e", f"lifeboat_backup_dir={backup_dir}",
                   "-e", f"lifeboat_s3_bucket={s3.bucket}")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [dump] = backups(backup_dir / "daily")
    assert s3.objects() == [
        f"backups/daily/{dump.name}",
        f"backups/daily/{dump.name}.manifest.json",
    ]
    assert s3.get(f"backups/daily/{dump.name}") == dump.read_bytes()


# --- status: one host, the fleet ---------------------------------------------------------------


def test_status_commands_of_the_monitoring_page(app_db, backup_dir, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    table = run_cli(["status"], env)
    assert table.returncode == 0, table.stdout + table.stderr
    assert app_db.name in table.stdout and "OK" in table.stdout
    report = json.loads(run_cli(["status", "--json"], env, check=True).stdout)
    assert report["ok"] is True
    counts = sh(f"{LIFEBOAT} -q --json status | jq '.counts'", env)
    assert counts.returncode == 0, counts.stderr
    assert json.loads(counts.stdout) == report["counts"] and report["counts"]["OK"] == 3
    assert counts.stderr == ""  # -q: errors only
    fleet = ansible(env, "playbooks/status.yml", "-f", "50",
                    "-e", f"lifeboat_backup_dir={backup_dir}")  # fmt: skip
    assert fleet.returncode == 0, fleet.stdout + fleet.stderr
    assert "3 checked: 3 OK" in fleet.stdout and app_db.name in fleet.stdout


# --- verify / drill with --type, one ad-hoc check ----------------------------------------------


def test_verify_and_drill_of_one_type(app_db, backup_dir, lifeboat_env):
    """`lifeboat verify --latest --type daily --deep`, `lifeboat drill --latest --type T`
    and `lifeboat drill PATH`, with LIFEBOAT_VERIFY_QUERIES as one SQL string."""
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    run_cli(["backup", "--type", "weekly"], env, check=True)
    app_db.sql("DELETE FROM plots")
    run_cli(["backup"], env, check=True)
    [daily], [weekly] = backups(backup_dir / "daily"), backups(backup_dir / "weekly")
    check = dict(env, LIFEBOAT_VERIFY_QUERIES="SELECT count(*) > 0 FROM plots")

    proc = run_cli(["verify", "--latest", "--type", "weekly", "--deep"], check)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"OK {app_db.name} weekly (deep): {weekly}" in proc.stdout
    assert "1 user check(s) passed" in proc.stdout
    # The daily backup has no plots: the same check fails it, and says which query.
    proc = run_cli(["verify", "--latest", "--type", "daily", "--deep"], check)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "SELECT count(*) > 0 FROM plots` returned false" in proc.stdout + proc.stderr
    proc = run_cli(["drill", "--latest", "--type", "weekly", "--json"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [drilled] = json.loads(proc.stdout)
    assert drilled["source"] == str(weekly) and drilled["deep"]
    proc = run_cli(["drill", str(daily)], env)
    assert proc.returncode == 0 and "(deep)" in proc.stdout, proc.stdout + proc.stderr


# --- the scheduled command lines, run the way cron runs them -----------------------------------


def test_documented_cron_lines_run_under_crons_environment(app_db, tmp_path):
    """docs/provisioning.md's /etc/cron.d/lifeboat lines and docs/verify.md's drill line:
    `/bin/sh`, cron's minimal environment, output appended to the log. Substituted:
    the lifeboat path, the log path, and the config file's location (LIFEBOAT_CONFIG
    instead of /etc/lifeboat/lifeboat.yml), which names a 0600 secrets file."""
    store, log = tmp_path / "store", tmp_path / "backup.log"
    secrets = tmp_path / "secrets.yml"
    secrets.write_text(json.dumps({"database_url": app_db.url}) + "\n")
    secrets.chmod(0o600)
    config = tmp_path / "lifeboat.yml"
    config.write_text(f"backup_dir: {store}\nsecrets_file: secrets.yml\n")
    cron_env = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", "HOME": "/",
                "LIFEBOAT_CONFIG": str(config)}  # fmt: skip
    lines = [f"{LIFEBOAT} backup --type {t} >> {log} 2>&1" for t in ("daily", "weekly", "monthly")]
    lines.append(f"{LIFEBOAT} verify --latest --deep >> {log} 2>&1")
    for line in lines:
        proc = subprocess.run(["/bin/sh", "-c", line], env=cron_env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)  # fmt: skip
        assert proc.returncode == 0, (line, log.read_text())
        assert proc.stdout == proc.stderr == ""  # everything went to the log
    for kind in ("daily", "weekly", "monthly"):
        assert len(backups(store / kind)) == 1, kind
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text  # no progress line outside a terminal
    assert "(deep)" in text and f"OK {app_db.name}" in text
    assert app_db.url not in text


# --- settings given as documented environment variables ----------------------------------------


def test_pg_dump_args_from_the_environment(app_db, backup_dir, lifeboat_env):
    """docs/configuration.md: LIFEBOAT_PG_DUMP_ARGS='["--exclude-table=audit_log"]'."""
    app_db.sql("CREATE TABLE audit_log (id int); INSERT INTO audit_log VALUES (1), (2)")
    env = dict(lifeboat_env, DATABASE_URL=app_db.url,
               LIFEBOAT_PG_DUMP_ARGS='["--exclude-table=audit_log"]')  # fmt: skip
    run_cli(["backup"], env, check=True)
    [dump] = backups(backup_dir / "daily")
    manifest = json.loads(Path(f"{dump}.manifest.json").read_text())
    assert set(manifest["tables"]) == {"public.plots", "public.users"}
    assert "audit_log" not in sh(f"gunzip -c {dump}", env).stdout


def test_manifest_key_made_with_the_documented_one_liner(
    app_db, backup_dir, tmp_path, lifeboat_env
):
    """docs/security.md: `python3 -c 'import base64,os;...'` makes a key lifeboat accepts."""
    made = subprocess.run(
        ["python3", "-c", "import base64,os;print(base64.b64encode(os.urandom(32)).decode())"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert len(base64.b64decode(made.stdout.strip())) == 32
    key = tmp_path / "manifest.key"
    key.write_text(made.stdout)
    key.chmod(0o600)
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_MANIFEST_KEY_FILE=str(key))
    run_cli(["backup"], env, check=True)
    [dump] = backups(backup_dir / "daily")
    assert "mac" in json.loads(Path(f"{dump}.manifest.json").read_text())
    proc = run_cli(["verify", str(dump)], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The MAC really is checked with that key: another key refuses the same backup.
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    assert run_cli(["verify", str(dump)], env).returncode == 1


@pytest.mark.parametrize(
    "setting, ext, command",
    [
        ("LIFEBOAT_COMPRESSION=none", ".sql", "psql -d '{db}' -f {file}"),
        ("LIFEBOAT_FORMAT=custom", ".dump", "pg_restore -d '{db}' -j 4 {file}"),
    ],
)
def test_stock_restore_commands_of_the_formats_table(
    setting, ext, command, app_db, pg, backup_dir, lifeboat_env
):
    """docs/backup.md "Formats": the rows no other test runs as written."""
    key, value = setting.split("=")
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, **{key: value})
    run_cli(["backup"], env, check=True)
    [dump] = backups(backup_dir / "daily")
    assert dump.name.endswith(ext)
    copy = make_db(pg, seed=False)
    proc = sh(command.format(db=copy.url, file=dump), env)
    assert proc.returncode == 0, proc.stderr
    assert fingerprint(copy) == fingerprint(app_db)


# --- globals: the stock rebuild ----------------------------------------------------------------


def test_stock_rebuild_with_the_globals_file(app_db, backup_dir, tmp_path, lifeboat_env):
    """docs/verify.md: without lifeboat, `psql -f NAME.globals.sql postgres`, then the dump,
    on a new empty server where the owner role does not exist."""
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_GLOBALS="true")
    run_cli(["backup"], env, check=True)
    [dump] = backups(backup_dir / "daily")
    new = pgcluster.Cluster(tmp_path / "new-server", pgcluster.free_port())
    new.init()
    new.start()
    try:
        url = f"postgresql:///postgres?host={new.datadir}&port={new.port}&user=postgres"
        proc = sh(f"psql -X -q '{url}' -f {dump}.globals.sql", env)
        assert proc.returncode == 0, proc.stderr
        new.psql(f'CREATE DATABASE "{app_db.name}" OWNER app_owner')
        target = url.replace("/postgres?", f"/{app_db.name}?")
        proc = sh(f"gunzip -c {dump} | psql -X -q -v ON_ERROR_STOP=1 '{target}'", env)
        assert proc.returncode == 0, proc.stderr
        rebuilt = AppDB(app_db.name, target, new)
        assert fingerprint(rebuilt) == fingerprint(app_db)
        assert (
            new.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'users'", db=app_db.name)
            == "app_owner"
        )
    finally:
        new.stop("immediate")


# --- provision.yml against the example inventory -----------------------------------------------


@pytest.mark.parametrize(
    "args, expect, absent",
    [
        (("--limit", "db2.example.com", "--list-hosts"), ["db2.example.com"], ["db1.example.com"]),
        (("--tags", "lifeboat_config", "--list-tasks"),
         ["Write the lifeboat settings", "Write the lifeboat secrets"],
         ["Install lifeboat into its venv", "postgresql_client : Install"]),
        (("--check", "--diff", "--syntax-check"), ["playbook: playbooks/provision.yml"], []),
    ],
)  # fmt: skip
def test_provision_commands_select_what_the_docs_say(args, expect, absent, lifeboat_env):
    """`ansible-playbook -i inventory/example playbooks/provision.yml ...`: the example
    inventory, --limit and --tags select the hosts and tasks the docs name. Applying it
    needs real hosts: Molecule does that (make molecule)."""
    proc = ansible(lifeboat_env, "-i", "inventory/example", "playbooks/provision.yml", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for text in expect:
        assert text in proc.stdout, proc.stdout
    for text in absent:
        assert text not in proc.stdout, proc.stdout


def test_role_docs_from_the_checkout(lifeboat_env):
    """docs/provisioning.md: `ansible-doc -t role -r roles lifeboat` renders every entry
    point and the variables it documents."""
    proc = subprocess.run(
        ["ansible-doc", "-t", "role", "-r", "roles", "lifeboat"],
        cwd=ROOT, env=dict(lifeboat_env, ANSIBLE_NOCOLOR="1"), capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for entry in ("main", "backup", "restore", "verify", "status"):
        assert f"ENTRY POINT: *{entry}* - " in proc.stdout, entry
    assert "lifeboat_backup_dir" in proc.stdout and "lifeboat_manifest_key" in proc.stdout
