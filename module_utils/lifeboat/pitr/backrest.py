"""Running pgBackRest (as the cluster's OS user, or for a restore as the owner of the
work directory) and reading its `info`."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .. import children
from ..errors import ConfigError, PitrFailed, ToolNotFound

INSTALL_HINT = "Install it with `apt-get install pgbackrest` (the lifeboat_pitr role does)."
INFO_UNREADABLE = 99  # `info` status code "other": the repository could not be read


def os_user(settings) -> pwd.struct_passwd:
    name = settings.pitr_os_user
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(
            f"Failed to run pgBackRest: OS user {name} (pitr_os_user) does not exist.",
            "Set lifeboat_pitr_os_user to the user that owns the PostgreSQL cluster.",
        ) from None


def as_os_user(settings, read_only: bool = False) -> dict:
    """subprocess arguments that run a child as the cluster's OS user (pitr_os_user).

    pgBackRest must write the repository and the restored files as the user
    that owns the cluster; root switches to it, that user runs as itself.
    `read_only` (pgbackrest info, for status): another user runs as itself and
    needs only read access to the config and the repository (the lifeboat_pitr role's
    group, lifeboat_pitr_group).
    """
    entry = os_user(settings)
    name = entry.pw_name
    me = os.geteuid()
    if me == entry.pw_uid:
        return {}
    if me == 0:
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    if read_only:
        return {}
    raise ConfigError(
        f"Failed to run pgBackRest as {name}: lifeboat runs as uid {me}.",
        f"Run it as root or as {name} (sudo -u {name} ...).",
    )


def instance_user(settings) -> pwd.struct_passwd:
    """Who runs a restore to a time (pgbackrest restore, the temporary instance): the
    owner of pitr_work_dir, else pitr_os_user (no such directory yet, or root's).

    The lifeboat_pitr role gives the work directory to the backup user and lets it
    read the configuration and the repository (a group): restores, drills and their
    store then stay the backup user's, and it never needs to write as the cluster's
    owner. Where pitr_os_user owns the directory, nothing changes.
    """
    try:
        owner = os.stat(settings.pitr_work_dir).st_uid
    except OSError:
        owner = 0
    if owner != 0:
        try:
            return pwd.getpwuid(owner)
        except KeyError:
            pass
    return os_user(settings)


def as_instance_user(settings) -> dict:
    """subprocess arguments that run a child as instance_user(); root switches to it
    with its groups (the one that may read the repository), anyone else must be it."""
    entry = instance_user(settings)
    me = os.geteuid()
    if me == entry.pw_uid:
        return {}
    if me == 0:
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": groups}
    raise ConfigError(
        f"Failed to restore to a time as uid {me}: the temporary instance runs as "
        f"{entry.pw_name}, who owns {settings.pitr_work_dir}.",
        f"Run it as {entry.pw_name} or root (playbooks/restore.yml runs as the backup "
        "user), or point lifeboat_pitr_work_dir at a directory this user owns.",
    )


def instance_ids(settings) -> tuple[int, int]:
    entry = instance_user(settings)
    return entry.pw_uid, entry.pw_gid


def command(settings, *args: str) -> list[str]:
    exe = shutil.which("pgbackrest")
    if exe is None:
        raise ToolNotFound("Failed to run pgBackRest: pgbackrest is not installed.", INSTALL_HINT)
    return [exe, f"--config={settings.pitr_config}", f"--stanza={settings.pitr_stanza}", *args]


def run(
    settings,
    *args: str,
    timeout: float | None = None,
    read_only: bool = False,
    instance: bool = False,
) -> subprocess.CompletedProcess:
    """pgbackrest ARGS as the OS user (`instance`: as instance_user()); PitrFailed with
    its own words on failure."""
    if read_only:  # no log file: the log directory belongs to the OS user
        args = ("--log-level-file=off", *args)
    if not os.path.exists(settings.pitr_config):
        raise ConfigError(
            f"Failed to run pgBackRest: its configuration {settings.pitr_config} does not exist.",
            "Turn point-in-time recovery on for this host (lifeboat_pitr: true, then "
            "playbooks/provision.yml), or point lifeboat_pitr_config at the file.",
        )
    argv = command(settings, *args)
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            stdin=subprocess.DEVNULL,
            env=children.environment(),
            timeout=timeout,
            **(as_instance_user(settings) if instance else as_os_user(settings, read_only)),
        )
    except subprocess.TimeoutExpired:
        raise PitrFailed(
            f"Failed to run pgbackrest {args[-1]} for stanza {settings.pitr_stanza}: "
            f"no answer within {timeout:.0f}s.",
            "Check the repository's storage and the pgBackRest log; raise "
            "lifeboat_pitr_recovery_timeout for a large cluster.",
        ) from None
    if proc.returncode != 0:
        said = " ".join((proc.stderr or proc.stdout).split())[-1500:]
        raise PitrFailed(
            f"Failed to run pgbackrest {args[-1]} for stanza {settings.pitr_stanza}: {said}",
            f"Check {settings.pitr_config} and the pgBackRest log in {settings.pitr_log_path}.",
        )
    return proc


@dataclass
class BaseBackup:
    label: str
    type: str  # full, diff, incr
    started: datetime
    stopped: datetime
    wal_start: str
    wal_stop: str
    size: int  # bytes of the restored cluster
    databases: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "label": self.label,
            "type": self.type,
            "started": self.started.isoformat(),
            "stopped": self.stopped.isoformat(),
            "wal_start": self.wal_start,
            "wal_stop": self.wal_stop,
            "size": self.size,
        }


@dataclass
class Repo:
    """What `pgbackrest info` says about the stanza."""

    backups: list[BaseBackup]
    wal_min: str = ""
    wal_max: str = ""
    pg_version: str = ""
    status: str = ""

    @property
    def oldest(self) -> BaseBackup | None:
        return self.backups[0] if self.backups else None

    @property
    def newest(self) -> BaseBackup | None:
        return self.backups[-1] if self.backups else None

    def base_for(self, when: datetime) -> BaseBackup | None:
        """The newest base backup that was consistent (finished) by `when`."""
        usable = [b for b in self.backups if b.stopped <= when]
        return usable[-1] if usable else None


def parse_info(text: str, stanza: str) -> Repo:
    try:
        stanzas = json.loads(text)
        found = next(s for s in stanzas if s.get("name") == stanza)
    except (ValueError, StopIteration, TypeError, AttributeError):
        raise PitrFailed(
            f"Failed to read pgbackrest info for stanza {stanza}: unexpected output.",
            "Run `pgbackrest info` by hand to see what is wrong.",
        ) from None
    if (found.get("status") or {}).get("code") == INFO_UNREADABLE:
        # info exits 0 and lists no backups when it cannot reach the repository (a
        # TLS or S3 error): that is no empty repository.
        said = "; ".join(
            (repo.get("status") or {}).get("message", "")
            for repo in found.get("repo") or []
            if (repo.get("status") or {}).get("code") == INFO_UNREADABLE
        )
        raise PitrFailed(
            f"Failed to read the pgBackRest repository of stanza {stanza}: "
            f"{said or 'pgbackrest info says other'}.",
            "Check the repository settings in pgbackrest.conf (for S3: endpoint, bucket, "
            "keys, repo1-storage-ca-file) and run `pgbackrest info` as the cluster's OS user.",
        )
    backups = []
    for item in found.get("backup", []):
        if item.get("error"):
            continue  # a backup with page checksum errors is no base for recovery
        stamp = item["timestamp"]
        backups.append(
            BaseBackup(
                label=item["label"],
                type=item["type"],
                started=datetime.fromtimestamp(stamp["start"], timezone.utc),
                stopped=datetime.fromtimestamp(stamp["stop"], timezone.utc),
                wal_start=(item.get("archive") or {}).get("start") or "",
                wal_stop=(item.get("archive") or {}).get("stop") or "",
                size=int((item.get("info") or {}).get("size") or 0),
            )
        )
    backups.sort(key=lambda b: b.stopped)
    archives = found.get("archive") or []
    current = archives[-1] if archives else {}
    versions = [db.get("version", "") for db in found.get("db", [])]
    return Repo(
        backups=backups,
        wal_min=current.get("min") or "",
        wal_max=current.get("max") or "",
        pg_version=versions[-1] if versions else "",
        status=(found.get("status") or {}).get("message", ""),
    )


def info(settings) -> Repo:
    proc = run(settings, "--output=json", "info", timeout=300, read_only=True)
    return parse_info(proc.stdout, settings.pitr_stanza)
