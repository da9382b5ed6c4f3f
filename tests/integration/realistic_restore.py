"""Helpers for the tests of lost databases, target databases and partitioned
verification (issue 10) on the realistic dataset.

realistic_db cannot be dumped by app_owner (another role's schema, forced
row-level security) and its collations belong to the superuser, so: back up
as the superuser, restore as app_owner once it may own what the dump assigns
(a member of app_reporting, owner of the collations).
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from pathlib import Path

from conftest import OWNER, REPORTING

from lifeboat import naming


def superuser_url(db) -> str:
    """The superuser over the cluster's Unix socket (peer/trust, no password)."""
    host = urllib.parse.quote(db.cluster.socket_dir, safe="")
    return f"postgresql://postgres@/{db.name}?host={host}&port={db.cluster.port}"


@contextlib.contextmanager
def restorable_by_owner(db):
    pg = db.cluster
    pg.psql(f"GRANT {REPORTING} TO {OWNER}")
    pg.psql(
        f"ALTER COLLATION sales.german_icu OWNER TO {OWNER};"
        f"ALTER COLLATION sales.ci OWNER TO {OWNER}",
        db=db.name,
    )
    try:
        yield db
    finally:
        pg.psql(f"REVOKE {REPORTING} FROM {OWNER}")


def files(backup_dir: Path, type_: str) -> list[Path]:
    folder = backup_dir / type_
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if naming.parse(p.name))


def manifest_of(path: Path) -> dict:
    return json.loads(Path(f"{path}.manifest.json").read_text())


def databases(pg) -> set[str]:
    return set(pg.psql("SELECT datname FROM pg_database").split())
