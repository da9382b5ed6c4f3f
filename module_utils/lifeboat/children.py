"""What a child process inherits: only what it needs.

lifeboat's own environment may hold DATABASE_URL (with a password), AWS keys
and webhook URLs; pg_dump, psql, pg_restore, pg_dumpall and age need none of
them. Each child gets PATH, HOME, TMPDIR, the locale and TZ, and libpq clients
also the PG* variables the user set (libpq's own settings: PGHOST, PGSSLMODE,
PGSERVICEFILE, PGPASSFILE, ...), but never PGPASSWORD: conninfo.client_env
hands the password over through a passfile that lives in memory.
"""

from __future__ import annotations

import os

BASE = ("PATH", "HOME", "TMPDIR", "TZ", "LANG", "LANGUAGE")


def environment(libpq: bool = False, environ=None) -> dict[str, str]:
    """The environment for a child; `libpq=True` adds the user's PG* settings."""
    environ = os.environ if environ is None else environ
    env = {name: value for name, value in environ.items() if _wanted(name, libpq)}
    env.setdefault("PATH", os.defpath)
    return env


def _wanted(name: str, libpq: bool) -> bool:
    if name in BASE or name.startswith("LC_"):
        return True
    return libpq and name.startswith("PG") and name != "PGPASSWORD"
