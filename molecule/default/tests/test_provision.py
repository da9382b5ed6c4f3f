"""What provisioning (the installed collection's lifeboat.postgresql.provision) leaves on a host.

The last tests run what the host's scheduler would run (the cron entry's
command line, the systemd service's ExecStart) as the backup user, against
the real PostgreSQL server tools/molecule.sh started, and check the backup.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import subprocess
import urllib.parse

import pytest

CRON_FILE = "/etc/cron.d/lifeboat"
LOG = "/var/log/lifeboat/backup.log"
STORE = "/var/backups/lifeboat"
CRON_ENV = "env -i PATH=/usr/bin:/bin SHELL=/bin/sh HOME=/"  # what cron gives a job

# What each molecule host is (molecule.yml's host_vars).
HOSTS = {
    "lifeboat-db1": {
        "user": "lifeboat",
        "databases": ["pitrshop", "plotzed", "reports"],
        "ext": ".sql.gz",
        "method": "cron",
        "awscli": True,
        "jitter": 0,
    },
    "lifeboat-db2": {
        "user": "postgres",
        "databases": ["ledger"],
        "ext": ".dump",
        "method": "systemd",
        "awscli": False,
        "jitter": 30,
    },
}
GUIDE = [("daily", 0, 2, "*", "*"), ("weekly", 0, 3, "*", "0"), ("monthly", 0, 4, "1", "*")]


@pytest.fixture
def spec(host):
    return HOSTS[host.backend.get_hostname()]


def offset(name: str, jitter: int) -> int:
    """The role's per-host jitter: Ansible's `(N + 1) | random(seed=inventory_hostname)`."""
    if not jitter:
        return 0
    return random.Random(name).randrange(0, jitter + 1)  # noqa: S311 - a schedule, not a secret


def schedule(name: str, jitter: int):
    for kind, minute, hour, day, weekday in GUIDE:
        total = hour * 60 + minute + offset(name, jitter)
        yield kind, total % 60, total // 60 % 24, day, weekday


def as_user(host, user: str, command: str):
    """Run a command line the way cron does: its own minimal environment, /bin/sh, the user."""
    return host.run(
        f"runuser -u {user} -- {CRON_ENV} LOGNAME={user} /bin/sh -c {shlex.quote(command)}"
    )


def test_packages(host, spec):
    # postgresql-client: the distribution's newest major (15 on Debian 12, 17 on 13).
    for pkg in ("postgresql-client", "cron", "logrotate", "python3-venv", "acl"):
        assert host.package(pkg).is_installed, pkg
    assert host.package("awscli").is_installed is spec["awscli"]
    if spec["awscli"]:
        assert host.run("aws --version").rc == 0


def test_pg_dump_is_at_least_the_servers_major(host):
    out = host.check_output("pg_dump --version")
    client = int(re.search(r"(\d+)\.\d+", out).group(1))
    assert client >= int(os.environ.get("LIFEBOAT_MOLECULE_SERVER_MAJOR", "15"))


def test_backup_user(host, spec):
    user = host.user(spec["user"])
    assert user.exists
    if spec["user"] == "lifeboat":  # created by the role: a system user that cannot log in
        assert user.uid < 1000
        assert user.shell == "/usr/sbin/nologin"
        home = host.file(user.home)
        assert (home.is_directory, home.user, home.mode) == (True, "lifeboat", 0o700)


def test_lifeboat_command_from_its_venv(host):
    link = host.file("/usr/local/bin/lifeboat")
    assert link.is_symlink
    assert link.linked_to == "/opt/lifeboat/venv/bin/lifeboat"
    assert host.run("lifeboat --version").stdout.startswith("lifeboat ")
    # The engine's compiled dependencies are in the venv: nothing to fetch at backup time.
    assert (
        host.run(
            "/opt/lifeboat/venv/bin/python -c 'import lifeboat.backup, lifeboat.cli, psycopg, yaml'"
        ).rc
        == 0
    )


def test_config_and_secrets(host, spec):
    config = host.file("/etc/lifeboat/lifeboat.yml")
    assert (config.user, config.group, config.mode) == ("root", "root", 0o644)
    assert config.content_string.startswith("# Ansible managed")
    assert "secrets_file: /etc/lifeboat/secrets.yml" in config.content_string
    assert "postgresql://" not in config.content_string
    secrets = host.file("/etc/lifeboat/secrets.yml")
    assert (secrets.user, secrets.mode) == (spec["user"], 0o600)
    assert secrets.content_string.count("postgresql://") == len(spec["databases"])


def test_directories(host, spec):
    for path, mode in ((STORE, 0o700), ("/var/log/lifeboat", 0o750)):
        d = host.file(path)
        assert d.is_directory
        assert (d.user, d.mode) == (spec["user"], mode), path


def test_cron_entries_exactly_as_scheduled(host, spec):
    name = host.backend.get_hostname()
    if spec["method"] != "cron":
        # The earlier provisioning's cron entry is gone (with the file, once empty).
        cron = host.file(CRON_FILE)
        assert not cron.exists or "lifeboat backup" not in cron.content_string
        return
    entries = [
        line
        for line in host.file(CRON_FILE).content_string.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    expected = [
        f"{minute} {hour} {day} * {weekday} {spec['user']} /usr/local/bin/lifeboat backup "
        f"--type {kind} >> {LOG} 2>&1"
        for kind, minute, hour, day, weekday in schedule(name, spec["jitter"])
    ]
    assert entries == expected
    assert "adhoc" not in host.file(CRON_FILE).content_string  # state: absent removed it
    assert host.file(CRON_FILE).mode == 0o644


def test_systemd_timers(host, spec, tmp_path):
    name = host.backend.get_hostname()
    units = "/etc/systemd/system"
    if spec["method"] != "systemd":
        assert not host.file(f"{units}/lifeboat-backup-daily.timer").exists
        return
    for kind, minute, hour, day, weekday in schedule(name, spec["jitter"]):
        timer = host.file(f"{units}/lifeboat-backup-{kind}.timer").content_string
        service = host.file(f"{units}/lifeboat-backup-{kind}.service").content_string
        dow = {"0": "Sun ", "*": ""}[weekday]
        assert f"OnCalendar={dow}*-*-{day} {hour:02d}:{minute:02d}:00\n" in timer
        assert "Persistent=true" in timer
        assert f"User={spec['user']}" in service
        assert f"ExecStart=/usr/local/bin/lifeboat backup --type {kind}\n" in service
        assert f"StandardOutput=append:{LOG}" in service
        # Verified on the control node (the containers run no systemd; tools/molecule.sh
        # installs systemd-analyze); ExecStart must exist there, so it points at /bin/true.
        assert shutil.which("systemd-analyze"), "systemd-analyze missing: run tools/molecule.sh"
        (tmp_path / f"lb-{kind}.timer").write_text(
            timer.replace(f"lifeboat-backup-{kind}.service", f"lb-{kind}.service")
        )
        (tmp_path / f"lb-{kind}.service").write_text(
            service.replace("/usr/local/bin/lifeboat", "/bin/true")
        )
        proc = subprocess.run(
            [
                "systemd-analyze",
                "verify",
                str(tmp_path / f"lb-{kind}.timer"),
                str(tmp_path / f"lb-{kind}.service"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr


def test_logrotate_config_is_valid(host, spec):
    conf = host.file("/etc/logrotate.d/lifeboat")
    assert (conf.user, conf.mode) == ("root", 0o644)
    assert "/var/log/lifeboat/*.log {" in conf.content_string
    debug = host.run("logrotate -d /etc/logrotate.d/lifeboat")
    assert debug.rc == 0, debug.stderr
    assert "error" not in debug.stderr.lower()


def scheduled_command(host, spec) -> str:
    """The command line the host's scheduler runs, read from what provisioning installed."""
    if spec["method"] == "cron":
        line = next(
            line
            for line in host.file(CRON_FILE).content_string.splitlines()
            if line.strip() and not line.startswith("#") and "--type daily" in line
        )
        fields = line.split(None, 6)
        assert fields[5] == spec["user"]
        return fields[6]
    service = host.file("/etc/systemd/system/lifeboat-backup-daily.service").content_string
    command = re.search(r"^ExecStart=(.+)$", service, re.M).group(1)
    log = re.search(r"^StandardOutput=append:(.+)$", service, re.M).group(1)
    return f"{command} >> {log} 2>&1"


def test_scheduled_command_makes_a_complete_backup(host, spec):
    user = spec["user"]
    command = scheduled_command(host, spec)
    run = as_user(host, user, command)
    assert run.rc == 0, host.run(f"tail -20 {LOG}").stdout
    log = host.file(LOG).content_string
    assert "lifeboat" in log
    url = os.environ.get("LIFEBOAT_MOLECULE_DB_URL", "")
    password = urllib.parse.unquote(urllib.parse.urlsplit(url).password or "")
    assert password and password not in log  # secrets never reach the log
    for db in spec["databases"]:
        found = host.run(f"ls {STORE}/daily/").stdout.split()
        backups = sorted(
            f for f in found if f.startswith(f"{db}-daily-backup-") and f.endswith(spec["ext"])
        )
        assert backups, found
        path = f"{STORE}/daily/{backups[-1]}"
        assert re.fullmatch(
            rf"{db}-daily-backup-\d{{4}}-\d\d-\d\dT\d\d-\d\d-\d\d" + re.escape(spec["ext"]),
            backups[-1],
        )
        for f in (path, path + ".manifest.json"):
            assert (host.file(f).user, host.file(f).mode) == (user, 0o600), f
        assert host.file(f"{STORE}/daily").mode == 0o700
        if spec["ext"] == ".sql.gz":
            head = host.check_output(f"gunzip -c {path} | head -n 20")
            assert "PostgreSQL database dump" in head
            assert host.run(f"gunzip -t {path}").rc == 0
        else:
            listing = host.check_output(f"pg_restore --list {path}")
            assert "TABLE public users" in listing
        assert as_user(host, user, f"/usr/local/bin/lifeboat verify {path}").rc == 0
    listing = as_user(host, user, "/usr/local/bin/lifeboat list").stdout
    assert listing.count("complete") >= len(spec["databases"])


def test_logrotate_rotates_the_backup_log(host, spec):
    assert host.file(LOG).size > 0
    rotated = host.run("logrotate -f -s /tmp/lifeboat-logrotate.state /etc/logrotate.d/lifeboat")
    assert rotated.rc == 0, rotated.stderr
    assert host.file(LOG + ".1").exists
    assert host.file(LOG + ".1").user == spec["user"]
    fresh = host.file(LOG)
    assert (fresh.user, fresh.mode) == (spec["user"], 0o640)
