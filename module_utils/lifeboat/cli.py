"""`lifeboat`: the engine on the command line, for operators and cron.

Same flags as the guide's npm scripts. On a terminal it shows progress; under
cron (no terminal) it logs one line per event. Exit codes: 0 success,
1 a backup/verification failed, 2 bad settings or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time

from . import __version__, backup, drill, monitor, naming, restore, status, units, verify
from .errors import ConfigError, LifeboatError
from .settings import from_environment, load_file, resolve

log = logging.getLogger("lifeboat")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (default /etc/lifeboat/lifeboat.yml if present)",
    )
    parser.add_argument(
        "--backup-dir",
        metavar="DIR",
        help="store root (default $LIFEBOAT_BACKUP_DIR, else ./backups)",
    )
    parser.add_argument(
        "--database", metavar="NAME", help="only this configured database (default: all)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lifeboat", description="PostgreSQL backups and restores you can trust."
    )
    parser.add_argument("--version", action="version", version=f"lifeboat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("backup", help="back up every configured database")
    _common(p)
    p.add_argument(
        "--type",
        default="daily",
        choices=naming.SCHEDULED_TYPES,
        help="backup type and retention class (default daily)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")

    p = sub.add_parser("list", help="list backups in the store")
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "verify", help="check a backup's integrity; --deep restores it into a scratch database"
    )
    _common(p)
    p.add_argument("path", nargs="?", help="backup file (or directory archive), or s3://BUCKET/KEY")
    p.add_argument(
        "--latest", action="store_true", help="the newest complete backup of each database"
    )
    p.add_argument(
        "--type",
        choices=naming.BACKUP_TYPES,
        help="with --latest: only this type (default: newest daily/weekly/monthly)",
    )
    p.add_argument(
        "--deep",
        action="store_true",
        help="restore drill: scratch restore, manifest and user checks, RTO, then drop it",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("prune", help="apply retention now")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="print what would go, delete nothing")

    p = sub.add_parser("restore", help="restore a backup safely (scratch database, then swap)")
    _common(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--latest", action="store_true", help="the newest complete backup")
    source.add_argument("--file", metavar="PATH", help="a backup file or stock pg_dump output")
    source.add_argument("--from-s3", metavar="URL", help="s3://BUCKET/KEY")
    p.add_argument(
        "--type",
        choices=naming.BACKUP_TYPES,
        help="with --latest: only this type (default: newest daily/weekly/monthly)",
    )
    p.add_argument("--confirm", action="store_true", help="really replace the database")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument(
        "--skip-pre-backup", action="store_true", help="no safety backup first (not advised)"
    )
    p.add_argument(
        "--target-db", metavar="NAME", help="restore into this database, leave the original"
    )
    p.add_argument(
        "--keep-replaced",
        action="store_true",
        help="keep the replaced database as <db>__lifeboat_replaced_<time>",
    )
    p.add_argument(
        "--with-globals",
        action="store_true",
        help="first apply the backup's cluster globals (roles), e.g. on an empty server",
    )
    p = sub.add_parser("status", help="newest backup per database and type, its age and state")
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def load_settings(args, need_database: bool = True):
    explicit = {"backup_dir": args.backup_dir}
    layers = [load_file(args.config), from_environment(), explicit]
    if not need_database:
        # Listing and pruning need no credentials: a placeholder keeps validation simple.
        layers.insert(0, {"database_url": "postgresql://localhost/unused"})
    settings = resolve(*layers)
    if args.database:
        target = settings.target(args.database)
        settings = type(settings)(**{**settings.__dict__, "targets": (target,)})
    return settings


def setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        formatter = logging.Formatter(
            "%(asctime)s lifeboat %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ"
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    log.handlers[:] = [handler]
    log.setLevel(logging.ERROR if quiet else logging.INFO)
    log.propagate = False


class TerminalProgress:
    """`\\r`-updated line: bytes dumped, rate, elapsed. Only on a terminal."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.started = time.monotonic()
        self.active = stream.isatty()

    def __call__(self, bytes_in: int, bytes_out: int) -> None:
        if not self.active:
            return
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self.stream.write(
            f"\r  {units.human_size(bytes_in)} dumped -> {units.human_size(bytes_out)} "
            f"written, {units.human_size(bytes_in / elapsed)}/s, "
            f"{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}   "
        )
        self.stream.flush()

    def done(self) -> None:
        if self.active:
            self.stream.write("\n")


def cmd_backup(args) -> int:
    try:
        settings = load_settings(args)
    except ConfigError as exc:
        # Under cron nobody reads stderr: a broken configuration must reach people too.
        monitor.config_failure(lambda: config_layers(args), exc, "backup", args.type)
        raise
    if args.dry_run:
        for item in backup.plan(settings, args.type):
            print(f"would write {item['file']}")
            for path in item["would_delete"]:
                print(f"would delete {path} (retention)")
        return 0
    results = []
    for target in settings.targets:
        progress = TerminalProgress()
        one = type(settings)(**{**settings.__dict__, "targets": (target,)})
        results += backup.run(one, args.type, progress=progress)
        progress.done()
    for result in results:
        print(result.summary())
        for warning in result.warnings:  # e.g. a notification that could not be sent
            print(f"  warning: {warning}")
    return 0 if all(r.ok for r in results) else 1


def cmd_list(args) -> int:
    settings = load_settings(args, need_database=False)
    store = backup.store_for(settings)
    entries = store.list()
    rows = []
    for entry in entries:
        state = "complete" if entry.complete else "no manifest"
        sha = ""
        if entry.complete:
            try:
                sha = store.read_manifest(entry)["sha256"]
            except LifeboatError:
                state = "bad manifest"
        rows.append(
            {
                "store": entry.store,
                "type": entry.name.type,
                "database": entry.name.label,
                "created": entry.name.created.strftime("%Y-%m-%d %H:%M:%S"),
                "size": entry.size,
                "state": state,
                "sha256": sha,
                "path": entry.location,
            }
        )
    offsite = backup.s3_store_for(settings)
    offsite_error = None
    if offsite is not None:
        try:
            rows += [list_row(entry) for entry in offsite.list()]
        except LifeboatError as exc:
            offsite_error = exc
    if args.json:
        print(json.dumps(rows, indent=2))
    elif offsite is not None:
        print_side_by_side(rows, store, offsite)
    if offsite_error is not None:
        print(f"lifeboat: error: {offsite_error}", file=sys.stderr)
        return 1
    if args.json or offsite is not None:
        return 0
    if not rows:
        print(f"No backups in {store.describe()}.")
        return 0
    header = ("TYPE", "DATABASE", "CREATED (UTC)", "SIZE", "STATE", "FILE")
    table = [header] + [
        (
            r["type"],
            r["database"],
            r["created"],
            units.human_size(r["size"]),
            r["state"],
            r["path"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def list_row(entry, state: str = "", sha: str = "") -> dict:
    return {
        "store": entry.store,
        "type": entry.name.type,
        "database": entry.name.label,
        "created": entry.name.created.strftime("%Y-%m-%d %H:%M:%S"),
        "size": entry.size,
        "state": state or ("complete" if entry.complete else "no manifest"),
        "sha256": sha,
        "path": entry.location,
    }


def print_side_by_side(rows: list[dict], store, offsite) -> None:
    """One line per backup name with its state in the local store and in S3."""
    print(f"local: {store.describe()}   s3: {offsite.describe()}")
    byname: dict[tuple, dict] = {}
    for row in rows:
        name = row["path"].rsplit("/", 1)[-1]
        key = (row["type"], row["database"], row["created"], name)
        byname.setdefault(key, {"size": row["size"]})[row["store"]] = row["state"]
    if not byname:
        print("No backups.")
        return
    header = ("TYPE", "DATABASE", "CREATED (UTC)", "SIZE", "LOCAL", "S3", "FILE")
    table = [header] + [
        (
            key[0],
            key[1],
            key[2],
            units.human_size(seen["size"]),
            seen.get("local", "-"),
            seen.get("s3", "-"),
            key[3],
        )
        for key, seen in sorted(byname.items(), key=lambda item: (item[0][2], item[0][3]))
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])


def cmd_verify(args) -> int:
    if args.deep or args.latest:
        return cmd_drill(args)
    if not args.path:
        raise ConfigError(
            "Choose what to verify: a backup PATH or --latest.",
            "e.g. `lifeboat verify backups/daily/NAME.sql.gz` or "
            "`lifeboat verify --latest --deep`.",
        )
    if args.path.startswith("s3://"):
        from . import s3

        settings = load_settings(args, need_database=False)
        report = s3.verify_url(settings, args.path, settings.pg_bin_dir)
    else:
        settings = load_settings(args, need_database=False)  # the age identity file, if any
        report = verify.verify_file(args.path, identity=settings.encrypt_identity_file)
    print(f"OK {report.path}")
    for check in report.checks:
        print(f"  - {check}")
    return 0


def drill_settings(args):
    """Settings for a drill; a deep check of one file may name no database (drill_server)."""
    try:
        return load_settings(args)
    except ConfigError as exc:
        if args.latest:
            # Under cron nobody reads stderr: a broken configuration must reach people too.
            monitor.config_failure(lambda: config_layers(args), exc, "verify", args.type or "")
            raise
        settings = load_settings(args, need_database=False)
        if not settings.drill_server:
            raise
        return settings


def cmd_drill(args) -> int:
    if bool(args.path) == bool(args.latest):
        raise ConfigError(
            "Choose what to verify: a backup PATH or --latest, not both.",
            "e.g. `lifeboat verify --latest --deep` or `lifeboat verify PATH --deep`.",
        )
    settings = drill_settings(args)
    request = drill.Request(
        file=args.path, latest=args.latest, backup_type=args.type, deep=args.deep
    )
    results = drill.run(settings, request)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for result in results:
            print("\n".join(drill.describe(result)))
    return 0 if all(r.ok for r in results) else 1


def cmd_prune(args) -> int:
    settings = load_settings(args, need_database=False)
    store = backup.store_for(settings)
    deleted = backup.prune(
        store, store.list(), settings.retention, backup.utcnow(), dry_run=args.dry_run
    )
    offsite = backup.s3_store_for(settings)
    failed = None
    if offsite is not None:
        try:  # each store keeps its own newest complete backup
            deleted += backup.prune(
                offsite, offsite.list(), settings.retention, backup.utcnow(), dry_run=args.dry_run
            )
        except LifeboatError as exc:
            failed = exc
    verb = "would delete" if args.dry_run else "deleted"
    for path in deleted:
        print(f"{verb} {path}")
    print(f"{len(deleted)} backup(s) {verb}.")
    if failed is not None:
        print(f"lifeboat: error: S3 retention skipped: {failed}", file=sys.stderr)
        return 1
    return 0


def cmd_restore(args) -> int:
    settings = load_settings(args)
    request = restore.Request(
        latest=args.latest,
        file=args.file,
        from_s3=args.from_s3,
        backup_type=args.type,
        target_db=args.target_db,
        skip_pre_backup=args.skip_pre_backup,
        keep_replaced=args.keep_replaced,
        confirm=args.confirm,
        with_globals=args.with_globals,
    )
    if args.dry_run:
        planned = restore.plan(settings, request)
        for item in planned:
            print("\n".join(restore.describe_plan(item)))
        return 0 if all(item["ok"] for item in planned) else 1
    results = restore.run(settings, request)
    for result in results:
        print(result.summary())
    return 0 if all(r.ok for r in results) else 1


def config_layers(args) -> list[dict]:
    return [load_file(args.config), from_environment(), {"backup_dir": args.backup_dir}]


def cmd_status(args) -> int:
    settings, labels = status.load(*config_layers(args))
    if args.database:
        labels = [settings.target(args.database).label if labels else args.database]
    result = status.report(settings, labels=labels)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(status.render(result, show_host=False)))
    return 0 if result["ok"] else 1


COMMANDS = {
    "backup": cmd_backup,
    "status": cmd_status,
    "list": cmd_list,
    "verify": cmd_verify,
    "prune": cmd_prune,
    "restore": cmd_restore,
}


def _terminate(signum, frame):
    # Unwind through finally blocks so partial files are removed.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[args.command](args)
    except LifeboatError as exc:
        print(f"lifeboat: error: {exc}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        print("lifeboat: interrupted; nothing half-written was kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
