"""Safe restores: plan, then act, never leaving less than there was.

The guide drops the live database and replays the dump into it; a replay
failing halfway leaves the user with less than they had. Here every step
keeps its intent, made safe:

1. validate the source (checksum, full decompression, trailer, row counts)
   before anything is touched;
2. take a pre-restore backup of the current database (type `pre-restore`);
3. restore into a scratch database `<db>__lifeboat_restore_<ts>` created like
   the original (owner, encoding, collation, settings, grants), streaming and
   decompressing on the fly into psql (ON_ERROR_STOP) or over several
   connections (parallel.py), or pg_restore -j;
4. verify the scratch database (exact row counts against the dump's);
5. swap: block new connections, terminate the old ones, rename the original
   aside and the scratch database into its name in ONE transaction (so a
   crash leaves either the old or the new database under the name, never
   none), then drop the replaced one unless asked to keep it;
6. clean up leftovers of crashed restores at the start of the next one.

The restoring role needs what a managed-PostgreSQL owner has: CREATEDB and
ownership of the database (pg_signal_backend only to end other roles'
sessions). Sources are a local file, a store entry (`--latest`) or an S3 URL;
see `source.resolve_source`.

One file per step: source (1), the pre-restore backup is backup.py's,
scratch (3), load, verification (4), swap (5), journal (6); command ties them
together, planning is the dry run, database and names hold shared helpers.
"""

from __future__ import annotations

from .command import restore_one, run
from .database import admin, db_info, drop, psycopg_lib
from .names import REPLACED_TAG, SCRATCH_TAG, replaced_name, scratch_name
from .planning import describe_plan, plan
from .request import CONFIRM_HINT, Request, RestoreResult
from .source import Source, check_decryptable, check_source, file_source, latest_source

__all__ = [
    "CONFIRM_HINT",
    "REPLACED_TAG",
    "SCRATCH_TAG",
    "Request",
    "RestoreResult",
    "Source",
    "admin",
    "check_decryptable",
    "check_source",
    "db_info",
    "describe_plan",
    "drop",
    "file_source",
    "latest_source",
    "plan",
    "psycopg_lib",
    "replaced_name",
    "restore_one",
    "run",
    "scratch_name",
]
