"""Point-in-time recovery of one database, with pgBackRest as the engine.

pgBackRest archives the WAL (archive_command) and takes the base backups; it
restores whole clusters only. lifeboat turns that into a restore of ONE
database to a time, as safe as its dump restores, while everything else on the
server keeps running:

1. plan (planning.py): which base backup (the newest that finished before the
   target), which WAL, how much disk the temporary instance needs; refuse a
   time before the oldest base backup or in the future;
2. make sure the WAL past the target is archived (archiving.py);
3. restore the cluster into a temporary instance beside the live one, only
   the needed database materialised (`--db-include`), its own port and socket
   directory, archiving off; wait until it reached the target and promoted, or
   refuse when recovery stopped short (a missing WAL segment) (instance.py);
4. dump that database with lifeboat's own backup code into a private store and
   stop the instance; the dump is then restored through the usual safe path
   (restore/: pre-restore backup, scratch database, verification, swap);
5. a marker (held locked while in use) lets the next run stop and remove an
   instance a crash left behind (instance.py).

config.py renders pgbackrest.conf; backrest.py runs pgBackRest as the
cluster's OS user and reads `info`; report.py is what `lifeboat status` shows.
"""

from __future__ import annotations

from .backrest import Repo, info
from .config import parse_target, render_config
from .planning import describe_plan, plan
from .report import report, report_lines
from .source import source_at

__all__ = [
    "Repo",
    "describe_plan",
    "info",
    "parse_target",
    "plan",
    "render_config",
    "report",
    "report_lines",
    "source_at",
]
