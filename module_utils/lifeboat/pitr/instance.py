"""The temporary instance: the cluster restored to a time beside the live one.

Its directory holds the data directory, a socket directory (0700, the only
way in: no TCP), its log, and the private store the dump goes to. A marker
file `<dir>.json` names it and stays locked (flock) while a run uses it, so
the next run can tell a crash's leftover from a restore in progress and
remove the leftover: `pg_ctl stop -m immediate`, then the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime

from .. import children, pg
from ..conninfo import ConnInfo, process_alive
from ..errors import ConfigError, DiskFull, PitrFailed, RestoreRefused
from . import backrest
from .config import target_text

log = logging.getLogger("lifeboat")
MARKER_SUFFIX = ".json"
PREFIX = "instance-"


def server_bin(settings, version: str) -> str:
    """Directory of pg_ctl for the backup's PostgreSQL major."""
    for candidate in (settings.pg_bin_dir, f"/usr/lib/postgresql/{version}/bin"):
        if candidate and os.access(os.path.join(candidate, "pg_ctl"), os.X_OK):
            return candidate
    raise RestoreRefused(
        f"Failed to start a temporary PostgreSQL {version}: pg_ctl not found.",
        f"Install postgresql-{version} (the server's package) on this host.",
    )


def _postmaster_pid(datadir: str) -> int | None:
    try:
        with open(os.path.join(datadir, "postmaster.pid")) as fh:
            pid = int(fh.readline().strip())
    except (OSError, ValueError):
        return None
    return pid if process_alive(pid) else None


@dataclass
class Instance:
    settings: object
    root: str  # <work_dir>/instance-<time>-<pid>
    port: int
    version: str = ""
    marker_fd: int | None = None

    @property
    def datadir(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def socket_dir(self) -> str:
        return os.path.join(self.root, "sock")

    @property
    def log_file(self) -> str:
        return os.path.join(self.root, "server.log")

    @property
    def store_dir(self) -> str:
        return os.path.join(self.root, "dump")

    @property
    def marker(self) -> str:
        return self.root + MARKER_SUFFIX

    def conn(self, dbname: str, user: str) -> ConnInfo:
        text = f"host={self.socket_dir} port={self.port} dbname='{dbname}'"
        return ConnInfo.parse(text + (f" user='{user}'" if user else ""))

    # -- lifecycle ------------------------------------------------------------------------

    def create(self) -> None:
        """The marker first (locked), then the directories: a crash leaves a findable leftover."""
        work = os.path.dirname(self.root)
        uid, gid = backrest.instance_ids(self.settings)
        if not os.path.isdir(work):  # ours to hand over; an existing one is left as it is
            os.makedirs(work, mode=0o700)
            with contextlib.suppress(PermissionError):
                os.chown(work, uid, gid)
        fd = os.open(self.marker, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        with contextlib.suppress(PermissionError):  # root's run: the next one may be the owner's
            os.fchown(fd, uid, gid)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.marker_fd = fd
        os.write(
            fd, json.dumps({"root": self.root, "port": self.port, "pid": os.getpid()}).encode()
        )
        os.fsync(fd)
        for path in (self.root, self.datadir, self.socket_dir):
            os.mkdir(path, 0o700)
            with contextlib.suppress(PermissionError):
                os.chown(path, uid, gid)

    def restore(self, backup_label: str, when: datetime, database: str) -> None:
        """pgbackrest restore of the cluster at `when` into this instance, one database live.

        Lock and spool directories of its own, for the restore and the instance's
        archive-get: the instance's user may only read the configuration and the
        repository, and nothing here touches the live stanza's queue or locks.
        """
        ts_dir = os.path.join(self.root, "tablespaces")
        lock_dir = os.path.join(self.root, "lock")
        get = backrest.command(
            self.settings, f"--pg1-path={self.datadir}", f"--lock-path={lock_dir}", "archive-get"
        )
        restore_command = " ".join([*map(_shell_word, get), "%f", '"%p"'])
        backrest.run(
            self.settings,
            f"--pg1-path={self.datadir}",
            f"--set={backup_label}",
            "--type=time",
            f"--target={target_text(when)}",
            "--target-action=promote",
            f"--db-include={database}",
            "--archive-mode=off",  # never push this instance's WAL into the live stanza
            f"--tablespace-map-all={ts_dir}",  # never write into the live tablespaces
            f"--lock-path={lock_dir}",
            f"--spool-path={os.path.join(self.root, 'spool')}",
            f"--recovery-option=restore_command={restore_command}",
            "restore",
            timeout=self.settings.pitr_recovery_timeout,
            instance=True,
        )

    def start(self) -> None:
        uid, gid = backrest.instance_ids(self.settings)
        hba = os.path.join(self.root, "pg_hba.conf")
        with open(hba, "w") as fh:  # only the 0700 socket directory leads in
            fh.write("local all all trust\n")
        os.chown(hba, uid, gid)
        conf = os.path.join(self.datadir, "postgresql.conf")
        if not os.path.exists(conf):  # Debian keeps it in /etc: a minimal one will do
            with open(conf, "w") as fh:
                fh.write("# lifeboat point-in-time restore: temporary instance\n")
            os.chown(conf, uid, gid)
        options = {
            "port": str(self.port),
            "listen_addresses": "",
            "unix_socket_directories": self.socket_dir,
            "hba_file": hba,
            "archive_mode": "off",
            "shared_buffers": "128MB",
            "logging_collector": "off",
            "log_destination": "stderr",
            "external_pid_file": "",
            "cluster_name": "lifeboat-pitr",
            "hot_standby": "on",
            # --db-include restores the other databases as zeroed files, and replaying
            # WAL that touches them would PANIC ("WAL contains references to invalid
            # pages"): warn instead, and check_invalid_pages() refuses the restore
            # when a warning names the database being restored or a shared catalog.
        }
        if int(self.version or 0) >= 13:  # the setting's first release
            options["ignore_invalid_pages"] = "on"
        opts = " ".join(f"-c {k}='{v}'" for k, v in options.items())
        pg_ctl = os.path.join(server_bin(self.settings, self.version), "pg_ctl")
        proc = subprocess.run(
            [pg_ctl, "-D", self.datadir, "-l", self.log_file, "-W", "-o", opts, "start"],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            env=children.environment(),
            **backrest.as_instance_user(self.settings),
        )
        if proc.returncode != 0:
            raise PitrFailed(
                f"Failed to start the temporary instance in {self.root}: "
                f"{' '.join(proc.stderr.split())[-500:]} {self.log_tail()}",
                "The live database is untouched. Check the log above.",
            )

    def wait_promoted(self, when: datetime, database: str, user: str) -> datetime | None:
        """Wait until recovery reached `when` and the instance promoted; returns the time of
        the last transaction replayed. Refuses when recovery ended short of the target."""
        deadline = time.monotonic() + self.settings.pitr_recovery_timeout
        conn = self.conn(database, user)
        gone = 0
        while time.monotonic() < deadline:
            gone = gone + 1 if _postmaster_pid(self.datadir) is None else 0
            if gone >= 3 and not self._starting():  # seen down three times in a row
                raise self.short_of(when)
            with contextlib.suppress(Exception), pg.connect(conn) as db:
                in_recovery, replayed = db.execute(
                    "SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp()"
                ).fetchone()
                if not in_recovery:
                    return replayed
            time.sleep(0.3)
        raise PitrFailed(
            f"Failed to recover to {when.isoformat()}: the temporary instance was still "
            f"recovering after {self.settings.pitr_recovery_timeout}s.",
            "Raise lifeboat_pitr_recovery_timeout (a large database or much WAL); the live "
            "database is untouched.",
        )

    def check_invalid_pages(self, database: str, user: str) -> None:
        """Refuse when replay found invalid pages outside the zeroed, left-out databases."""
        try:
            with open(self.log_file, errors="replace") as fh:
                text = fh.read()
        except OSError:
            return
        if not _INVALID_PAGE.search(text):
            return
        with pg.connect(self.conn(database, user)) as db:
            (oid,) = db.execute(
                "SELECT oid FROM pg_database WHERE datname = current_database()"
            ).fetchone()
        ours = invalid_pages_of(text, oid)
        if ours:
            raise PitrFailed(
                f"Failed to recover database {database!r} to the chosen time: WAL replay "
                f"found invalid pages in its own files ({', '.join(ours[:5])}).",
                "Nothing was changed. The base backup or the archived WAL is damaged: "
                "run `pgbackrest verify`, and restore from another base backup or a dump.",
            )
        log.info("WAL replay skipped pages of the databases left out (zeroed by --db-include)")

    def _starting(self) -> bool:
        # pg_ctl -W returns before the postmaster wrote its pid file.
        return not os.path.exists(self.log_file) or os.path.getsize(self.log_file) == 0

    def short_of(self, when: datetime) -> PitrFailed:
        tail = self.log_tail()
        if "recovery ended before configured recovery target was reached" in tail:
            return PitrFailed(
                f"Failed to recover to {when.isoformat()}: the archived WAL ends before that "
                f"time (a WAL segment is missing from the repository, or was never archived). "
                f"{tail}",
                "Nothing was changed. Pick an earlier time (`lifeboat pitr status` shows the "
                "recoverable window) and check archiving with `pgbackrest check`.",
            )
        return PitrFailed(
            f"Failed to recover to {when.isoformat()}: the temporary instance stopped. {tail}",
            "Nothing was changed. Check the log above.",
        )

    def log_tail(self, lines: int = 6) -> str:
        try:
            with open(self.log_file, errors="replace") as fh:
                text = fh.read()[-20000:]
        except OSError:
            return ""
        wanted = [
            line.strip()
            for line in text.splitlines()
            if any(word in line for word in ("FATAL", "ERROR", "PANIC", "recovery", "WAL"))
        ]
        return "Server log: " + " | ".join(wanted[-lines:]) if wanted else ""

    def stop(self) -> None:
        stop_instance(self.settings, self.datadir)
        if os.path.isdir(self.datadir):
            shutil.rmtree(self.datadir, ignore_errors=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.marker)
        if self.marker_fd is not None:
            os.close(self.marker_fd)
            self.marker_fd = None


# PostgreSQL's report of a WAL record for a page that is not there (xlogutils.c).
_INVALID_PAGE = re.compile(
    r"page \d+ of relation ((?:base|global|pg_tblspc)/\S+) "
    r"(?:is uninitialized|was uninitialized|does not exist|did not exist)"
)


def invalid_pages_of(server_log: str, oid: int) -> list[str]:
    """Files with invalid pages that belong to database `oid` or to the shared catalogs
    (global/): the ones a --db-include restore did not zero."""

    def database(path: str) -> int | None:  # base/<db>/<file>, pg_tblspc/<ts>/<dir>/<db>/<file>
        parts = path.split("/")
        index = {"base": 1, "pg_tblspc": 3}.get(parts[0])
        if index is None or len(parts) <= index or not parts[index].isdigit():
            return None
        return int(parts[index])

    paths = set(_INVALID_PAGE.findall(server_log))
    return sorted(path for path in paths if database(path) in (oid, None))


def stop_instance(settings, datadir: str) -> None:
    """Stop a temporary postmaster at once (its data is thrown away)."""
    pid = _postmaster_pid(datadir)
    if pid is None:
        return
    with open(os.path.join(datadir, "PG_VERSION")) as fh:
        version = fh.read().strip()
    with contextlib.suppress(Exception):
        subprocess.run(
            [os.path.join(server_bin(settings, version), "pg_ctl"), "-D", datadir, "-m",
             "immediate", "-w", "-t", "30", "stop"],
            capture_output=True, check=False, cwd="/", env=children.environment(),
            **backrest.as_instance_user(settings),
        )  # fmt: skip
    if _postmaster_pid(datadir) == pid:  # pg_ctl could not: the postmaster is ours to end
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _shell_word(word: str) -> str:
    """One word of restore_command (run by a shell; pgBackRest writes it into
    postgresql.auto.conf between single quotes, so no single quotes here)."""
    if re.fullmatch(r"[\w@%+=:,./-]+", word):
        return word
    if re.search(r"[\"$`\\'\n]", word):
        raise ConfigError(
            f"Failed to restore to a time: {word!r} cannot go into restore_command.",
            "Use paths without quotes, $, ` or backslashes for lifeboat_pitr_config and "
            "lifeboat_pitr_work_dir.",
        )
    return f'"{word}"'


def new(settings, now: datetime, port: int) -> Instance:
    root = os.path.join(
        settings.pitr_work_dir, f"{PREFIX}{now.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}"
    )
    return Instance(settings, root, port)


def leftovers(settings) -> list[str]:
    """Instances of crashed runs: markers nobody holds locked."""
    work = settings.pitr_work_dir
    found = []
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(work)):
            if not (name.startswith(PREFIX) and name.endswith(MARKER_SUFFIX)):
                continue
            marker = os.path.join(work, name)
            try:
                fd = os.open(marker, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a restore in progress holds it
            finally:
                os.close(fd)
            found.append(marker[: -len(MARKER_SUFFIX)])
    return found


def remove_leftovers(settings) -> list[str]:
    """Stop and delete what crashed runs left; returns what was removed, for the log."""
    removed = []
    for root in leftovers(settings):
        datadir = os.path.join(root, "data")
        running = _postmaster_pid(datadir)
        stop_instance(settings, datadir)
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root + MARKER_SUFFIX)
        what = f"removed the temporary instance {root} a crashed restore left"
        removed.append(what + (f" (stopped its postmaster, pid {running})" if running else ""))
        log.warning("%s", removed[-1])
    return removed


def check_space(settings, needed: int) -> int:
    """Free bytes in the work directory; DiskFull before anything is written."""
    probe = settings.pitr_work_dir
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    if free < needed:
        from ..units import human_size

        raise DiskFull(
            f"Failed to restore to a time: the temporary instance needs about "
            f"{human_size(needed)} in {settings.pitr_work_dir}, only {human_size(free)} is free.",
            "Free space there or point lifeboat_pitr_work_dir at a larger file system "
            "(owned by the cluster's OS user). Nothing was changed.",
        )
    return free
