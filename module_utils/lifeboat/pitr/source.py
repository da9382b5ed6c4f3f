"""A restore to a time as a restore source: the database as it was then, dumped by
lifeboat's own backup code from the temporary instance into a private store."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .. import backup, pg
from ..restore.source import Source, file_source
from ..settings import Target
from . import archiving, instance
from .config import parse_target
from .planning import plan_for

log = logging.getLogger("lifeboat")


@dataclass
class PitrSource(Source):
    """The dump of the recovered database; cleanup removes the temporary instance."""

    instance: instance.Instance | None = field(default=None, repr=False)
    recovered_to: str = ""  # commit time of the last transaction replayed
    # For people (the result, notifications). `location` stays the dump's path: its
    # signed manifest names that file (manifest_key.py checks the pair).
    described: str = ""

    def cleanup(self) -> None:
        super().cleanup()
        if self.instance is not None:
            self.instance.remove()
            self.instance = None


def _free_port() -> int:
    # Only names the socket in the instance's private directory; a free TCP port
    # keeps it distinct from the live cluster's in logs and ps.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def source_at(settings, target: Target, request, now: datetime) -> PitrSource:
    """Recover the cluster to `request.time` in a temporary instance and dump the database."""
    when = parse_target(request.time)
    database = target.conn.dbname
    warnings = [f"cleanup: {line}" for line in instance.remove_leftovers(settings)]
    with pg.connect(target.conn) as live:
        planned = plan_for(settings, database, when, now, live)
        user = live.execute("SELECT current_user").fetchone()[0]
        log.info("waiting until the WAL up to now is archived")
        archiving.wait_archived_past(live, settings.pitr_archive_timeout * 2 + 30, settings)
    base = planned["repo"].base_for(when)
    inst = instance.new(settings, now, _free_port())
    inst.version = planned["pg_version"]
    inst.create()
    try:
        log.info("restoring base backup %s into %s (target %s)", base.label, inst.root, when)
        inst.restore(base.label, when, database)
        inst.start()
        replayed = inst.wait_promoted(when, database, user)
        inst.check_invalid_pages(database, user)
        log.info("temporary instance recovered to %s (last transaction %s)", when, replayed)
        private = type(settings)(
            **{
                **settings.__dict__,
                "backup_dir": inst.store_dir,
                "s3_bucket": None,
                "encrypt_recipients": (),
                "globals": False,
            }
        )
        dumped = backup.Result(target.label, "daily")
        temp_target = Target(target.label, inst.conn(database, user))
        backup.backup_one(private, temp_target, "daily", dumped, now=now)
        inst.stop()  # the dump is all that is needed: free memory and disk at once
    except BaseException:
        inst.remove()
        raise
    found = file_source(dumped.file)
    source = PitrSource(**{**found.__dict__, "instance": inst})
    source.described = (
        f"pgBackRest stanza {settings.pitr_stanza} at {when.isoformat(sep=' ')} "
        f"(base backup {base.label})"
    )
    source.temporary = False  # the instance's removal takes the file with it
    source.warnings += warnings
    if replayed is not None:
        source.recovered_to = replayed.astimezone(timezone.utc).isoformat(sep=" ")
    return source
