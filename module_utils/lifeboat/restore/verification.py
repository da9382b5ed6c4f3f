"""Step 5: prove the scratch database holds what the backup holds."""

from __future__ import annotations

from .. import (
    pg,
    verify,
)
from ..errors import (
    VerificationFailed,
)
from .load import Loaded
from .source import Source


def extension_table(db, table: str) -> bool:
    row = db.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_depend WHERE classid = 'pg_class'::regclass"
        " AND objid = to_regclass(%s) AND deptype = 'e')",
        (table,),
    ).fetchone()
    return bool(row[0])


def verify_restored(db, source: Source, loaded: Loaded) -> tuple[int, int, list[str]]:
    """Compare the scratch database with what the dump holds; returns (tables, rows, warnings)."""
    present = pg.table_estimates(db)
    warnings = []
    expected = loaded.rows if loaded.rows is not None else source.rows
    manifest = source.manifest or {}
    if expected is None and manifest.get("rows_exact"):
        expected = manifest.get("tables") or {}
    if expected is not None:
        # Extension config tables (pg_extension_config_dump) hold the extension's own
        # rows plus the dumped ones: they must exist and hold at least the dump's rows.
        config = {t for t in set(expected) - set(present) if extension_table(db, t)}
        missing = sorted(set(expected) - set(present) - config)
        if missing:
            raise VerificationFailed(
                f"Restored database lacks {len(missing)} table(s) of the "
                f"backup: {', '.join(missing[:5])}.",
                "The original database is untouched.",
            )
        counts = pg.exact_counts(db, list(expected))
        wrong = [
            f"{t}: {counts[t]} rows, backup has {n}"
            for t, n in expected.items()
            if (counts[t] < n if t in config else counts[t] != n)
        ]
        if wrong:
            raise VerificationFailed(
                f"Restored row counts differ from the backup: {'; '.join(wrong[:5])}.",
                "The original database is untouched.",
            )
        if (
            manifest.get("rows_exact")
            and loaded.rows is not None
            and loaded.rows != manifest.get("tables")
        ):
            raise VerificationFailed(
                "Row counts in the dump differ from its manifest.", verify.REMEDY
            )
        return len(present), sum(counts.values()), warnings
    # Only archives written before exact counts get here: their manifests hold
    # planner estimates and list partitioned parents too.
    present = pg.table_estimates(db, partitioned=True)
    counts = pg.exact_counts(db, list(present))
    if manifest:
        wanted = manifest.get("tables") or {}
        missing = sorted(set(wanted) - set(present))
        if missing or len(present) != manifest.get("table_count", len(wanted)):
            raise VerificationFailed(
                f"Restored database has {len(present)} tables, the backup's manifest "
                f"{manifest.get('table_count', len(wanted))}"
                + (f" (missing {', '.join(missing[:5])})" if missing else "")
                + ".",
                "The original database is untouched.",
            )
        for table, estimate in wanted.items():
            actual = counts.get(table, 0)
            if estimate > 1000 and not estimate / 10 <= actual <= estimate * 10:
                warnings.append(f"{table}: {actual} rows, the backup estimated {estimate}")
    elif loaded.data_tables and not present:
        raise VerificationFailed(
            "The restore produced no tables although the dump has table data.",
            "The original database is untouched.",
        )
    return len(present), sum(counts.values()), warnings
