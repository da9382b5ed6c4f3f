"""Dry run: what a restore would do, touching nothing."""

from __future__ import annotations

from datetime import datetime

from .. import (
    backup,
    naming,
    units,
)
from ..errors import (
    LifeboatError,
)
from ..settings import Settings
from .command import targets_for
from .database import admin, db_info
from .names import replaced_name, scratch_name
from .request import Request
from .source import check_decryptable, check_source, resolve_source


def plan(settings: Settings, request: Request, now: datetime | None = None) -> list[dict]:
    """What `run` would do, touching nothing (dry run, check mode)."""
    request.check()
    now = now or backup.utcnow()
    planned = []
    store = backup.store_for(settings)
    for target in targets_for(settings, request):
        name = request.target_db or target.conn.dbname
        item = {"database": name, "ok": True, "error": "", "hint": ""}
        try:
            if request.time:  # pgBackRest: base backup, WAL range, space (pitr/planning.py)
                from ..pitr import planning as pitr_planning

                item["pitr"] = pitr_planning.plan(settings, target, request, now)
                item["warnings"], item["checks"] = [], []
            else:
                source = resolve_source(settings, target, request, now)
                item["warnings"] = source.warnings
                item["source"] = source.describe(now)
                check_decryptable(source, settings)
                if source.path:
                    report = check_source(
                        source, settings.pg_bin_dir, identity=settings.encrypt_identity_file
                    )
                    item["checks"] = report.checks
                else:
                    item["checks"] = ["remote backup: checked after download"]
            conn = target.conn.with_dbname(name)
            with admin(conn, {name}) as db:
                info = db_info(db, name)
                size = (
                    db.execute("SELECT pg_database_size(%s)", (name,)).fetchone()[0] if info else 0
                )
            item["exists"] = info is not None
            item["replaces"] = (
                f"{name} ({units.human_size(size)}, owner {info.owner})" if info else ""
            )
            item["scratch"] = scratch_name(name, now)
            item["keep_replaced_as"] = replaced_name(name, now) if request.keep_replaced else ""
            pre = ""
            if info and not request.skip_pre_backup:  # an existing --target-db too
                bname = store.unique_name(
                    naming.build(
                        target.label if name == target.conn.dbname else naming.safe_label(name),
                        "pre-restore",
                        now,
                        naming.extension(
                            settings.format,
                            settings.compression,
                            bool(settings.encrypt_recipients),
                        ),
                    )
                )
                pre = store.abspath(bname.path)
            item["pre_restore_backup"] = pre
        except LifeboatError as exc:
            item.update(ok=False, error=exc.message, hint=exc.hint)
        planned.append(item)
    return planned


def describe_plan(item: dict) -> list[str]:
    """The plan of one database as lines for people."""
    if not item["ok"]:
        return [f"{item['database']}: cannot restore: {item['error']} {item['hint']}".strip()]
    if "pitr" in item:
        from ..pitr.planning import describe_plan as pitr_lines

        lines = pitr_lines(item)
    else:
        src = item["source"]
        lines = [
            f"{item['database']}: would restore {src['location']}",
            f"  backup: {src['format']}/{src['compression']}, "
            f"{units.human_size(src['size'])}, taken {src['created']} ({src['age']} ago), "
            + ("manifest sha256 " + src["sha256"][:12] if src["manifest"] else "no manifest"),
        ]
    lines += [f"  check: {c}" for c in item["checks"]]
    lines += [f"  warning: {w}" for w in item.get("warnings", [])]
    if item["exists"]:
        lines.append(
            f"  would replace: {item['replaces']}"
            + (
                f", kept as {item['keep_replaced_as']}"
                if item["keep_replaced_as"]
                else ", then drop it"
            )
        )
    else:
        lines.append(f"  would create {item['database']} (it does not exist)")
    lines.append(f"  pre-restore backup: {item['pre_restore_backup'] or 'none'}")
    lines.append(f"  via scratch database {item['scratch']}")
    return lines
