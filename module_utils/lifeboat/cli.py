"""`lifeboat`: the engine on the command line, for operators and cron.

Same flags as the guide's npm scripts. On a terminal it shows progress; under
cron (no terminal) it logs one line per event. Exit codes: 0 success,
1 a backup/verification failed, 2 bad settings or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import time

from . import (
    __version__,
    backup,
    drill,
    manifest_key,
    monitor,
    naming,
    restore,
    status,
    units,
    verify,
)
from .errors import ConfigError, LifeboatError
from .settings import from_environment, load_file, resolve

log = logging.getLogger("lifeboat")


def _common(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """Global options, accepted before the subcommand and after it.

    Subcommands default to SUPPRESS, so `lifeboat -q list` is not undone by
    the subcommand's own default (argparse copies a subparser's values over).
    """

    def default(value):
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default(None),
        help="settings file (default /etc/lifeboat/lifeboat.yml if present)",
    )
    parser.add_argument(
        "--backup-dir",
        metavar="DIR",
        default=default(None),
        help="store root (default $LIFEBOAT_BACKUP_DIR, else ./backups)",
    )
    parser.add_argument(
        "--database",
        metavar="NAME",
        default=default(None),
        help="only this configured database (default: all)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="errors only"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine-readable output on stdout (errors too, as {ok: false, error, hint})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lifeboat", description="PostgreSQL backups and restores you can trust."
    )
    parser.add_argument("--version", action="version", version=f"lifeboat {__version__}")
    _common(parser, top=True)
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

    def backup_to_check(p: argparse.ArgumentParser) -> None:
        """What verify and drill take: one backup, or the newest of each database."""
        _common(p)
        p.add_argument(
            "path", nargs="?", help="backup file (or directory archive), or s3://BUCKET/KEY"
        )
        p.add_argument(
            "--latest", action="store_true", help="the newest complete backup of each database"
        )
        p.add_argument(
            "--type",
            choices=naming.BACKUP_TYPES,
            help="with --latest: only this type (default: newest daily/weekly/monthly)",
        )
        p.add_argument(
            "--allow-unsigned",
            action="store_true",
            help="accept a manifest without MAC although a manifest key is configured",
        )

    p = sub.add_parser(
        "verify", help="check a backup's integrity; --deep restores it into a scratch database"
    )
    backup_to_check(p)
    p.add_argument(
        "--deep",
        action="store_true",
        help="restore drill: scratch restore, manifest and user checks, RTO, then drop it",
    )

    p = sub.add_parser("drill", help="restore drill of a backup (same as verify --deep)")
    backup_to_check(p)
    p.set_defaults(deep=True)

    p = sub.add_parser("prune", help="apply retention now")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="print what would go, delete nothing")

    p = sub.add_parser("restore", help="restore a backup safely (scratch database, then swap)")
    _common(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--latest", action="store_true", help="the newest complete backup")
    source.add_argument("--file", metavar="PATH", help="a backup file or stock pg_dump output")
    source.add_argument("--from-s3", metavar="URL", help="s3://BUCKET/KEY")
    source.add_argument(
        "--time",
        metavar="TIME",
        help="the database as it was then ('YYYY-MM-DD HH:MM:SS+00'; pgBackRest, docs/pitr.md)",
    )
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
        "--allow-unsigned",
        action="store_true",
        help="accept a manifest without MAC although a manifest key is configured",
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
    p.add_argument(
        "--block-writes",
        action="store_true",
        help="refuse writes from the pre-restore snapshot to the swap (new sessions read-only)",
    )
    p = sub.add_parser("status", help="newest backup per database and type, its age and state")
    _common(p)
    p = sub.add_parser("pitr", help="point-in-time recovery (pgBackRest): `pitr status`")
    _common(p)
    p.add_argument(
        "action",
        choices=("status", "drill"),
        help="status: base backups, WAL, window; drill: restore to --minutes ago into a "
        "drill database, measure, drop it",
    )
    p.add_argument(
        "--minutes", type=float, default=5, help="drill: how far back (default 5 minutes)"
    )
    return parser


def load_settings(args, need_database: bool = True):
    explicit = {"backup_dir": args.backup_dir}
    if getattr(args, "allow_unsigned", False):
        explicit["allow_unsigned"] = True
    layers = [load_file(args.config), from_environment(), explicit]
    if not need_database:
        # Listing and pruning need no credentials: a placeholder keeps validation simple.
        layers.insert(0, {"database_url": "postgresql://localhost/unused"})
    settings = resolve(*layers)
    if args.database:
        target = settings.target(args.database)
        settings = type(settings)(**{**settings.__dict__, "targets": (target,)})
    return settings


class ProgressAwareHandler(logging.StreamHandler):
    """A log line never lands on the terminal's progress line: that is cleared first."""

    progress = None  # the TerminalProgress drawing on this terminal, if any

    def emit(self, record) -> None:
        if self.progress is not None:
            self.progress.clear()
        super().emit(record)


def setup_logging(quiet: bool) -> None:
    logging.raiseExceptions = False  # a closed stderr must not print logging tracebacks
    handler = ProgressAwareHandler(sys.stderr)
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

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.active = self.stream.isatty()
        self.visible = False  # a progress line is on screen, not ended by a newline
        for handler in log.handlers:
            if isinstance(handler, ProgressAwareHandler):
                handler.progress = self

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
        self.visible = True

    def clear(self) -> None:
        """Erase the progress line (it is redrawn on the next update)."""
        if self.visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.visible = False

    def done(self) -> None:
        if self.visible:
            self.stream.write("\n")  # keep the last figures on screen
            self.visible = False
        for handler in log.handlers:
            if getattr(handler, "progress", None) is self:
                handler.progress = None


def cmd_backup(args) -> int:
    try:
        settings = load_settings(args)
    except ConfigError as exc:
        # Under cron nobody reads stderr: a broken configuration must reach people too.
        monitor.config_failure(lambda: config_layers(args), exc, "backup", args.type)
        raise
    if args.dry_run:
        planned = backup.plan(settings, args.type)
        if args.json:
            return emit_json(planned, 0)
        for item in planned:
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
    code = 0 if all(r.ok for r in results) else 1
    if args.json:
        return emit_json([r.as_dict() for r in results], code)
    for result in results:
        print(result.summary())
        for warning in result.warnings:  # e.g. a notification that could not be sent
            print(f"  warning: {warning}")
    return code


def cmd_list(args) -> int:
    settings = load_settings(args, need_database=False)
    store = backup.store_for(settings)
    entries = store.list()
    rows = []
    for entry in entries:
        state = "complete" if entry.complete else "no manifest"
        sha = error = ""
        if entry.complete:
            try:
                sha = store.read_manifest(entry)["sha256"]
            except LifeboatError as exc:
                # Listed, never trusted: restore --latest passes it over with a warning.
                state, error = "damaged", exc.message
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
                **({"error": error} if error else {}),
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
    for r in rows:
        if r.get("error"):
            print(f"damaged: {r['error']}")
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
        report = verify.verify_file(
            args.path,
            identity=settings.encrypt_identity_file,
            trust=manifest_key.trust_for(settings),
        )
    if args.json:
        return emit_json([report.as_dict()], 0)
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
    if args.json:
        found = {"dry_run": args.dry_run, "deleted": deleted, "ok": failed is None}
        if failed is not None:
            found.update(error=f"S3 retention skipped: {failed.message}", hint=failed.hint)
        return emit_json(found, 0 if failed is None else 1)
    verb = "would delete" if args.dry_run else "deleted"
    for path in deleted:
        print(f"{verb} {path}")
    print(f"{len(deleted)} backup(s) {verb}.")
    if failed is not None:
        print(f"lifeboat: error: S3 retention skipped: {failed}", file=sys.stderr)
        return 1
    return 0


def cmd_restore(args) -> int:
    if not args.confirm and not args.dry_run:
        # A usage error like any other (exit 2), before settings or databases are read.
        raise ConfigError(
            "A restore replaces a database and needs confirmation.", restore.CONFIRM_HINT
        )
    settings = load_settings(args)
    request = restore.Request(
        latest=args.latest,
        file=args.file,
        from_s3=args.from_s3,
        time=args.time,
        backup_type=args.type,
        target_db=args.target_db,
        skip_pre_backup=args.skip_pre_backup,
        keep_replaced=args.keep_replaced,
        confirm=args.confirm,
        with_globals=args.with_globals,
        block_writes=args.block_writes,
    )
    if args.dry_run:
        planned = restore.plan(settings, request)
        if args.json:
            return emit_json(planned, 0 if all(item["ok"] for item in planned) else 1)
        for item in planned:
            print("\n".join(restore.describe_plan(item)))
        return 0 if all(item["ok"] for item in planned) else 1
    results = restore.run(settings, request)
    if args.json:
        return emit_json([r.as_dict() for r in results], 0 if all(r.ok for r in results) else 1)
    for result in results:
        print(result.summary())
        for warning in result.warnings:  # e.g. a newer backup passed over, and why
            print(f"  warning: {warning}")
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


def cmd_pitr(args) -> int:
    from . import pitr

    settings = load_settings(args)
    if args.action == "drill":
        from .pitr import drill

        found = drill.run(settings, args.minutes)
        if args.json:
            return emit_json(found, 0 if found["ok"] else 1)
        print("\n".join(drill.describe(found)))
        for warning in found["warnings"]:
            print(f"  warning: {warning}")
        return 0 if found["ok"] else 1
    found = pitr.report(settings, settings.targets[0].conn)
    from . import eventlog
    from .pitr import alert

    # Cron runs this every five minutes: a change of state (not every run) reaches the
    # backup log, the run state and the notifications, like a failed backup.
    with eventlog.attached(settings):
        found["warnings"] = alert.watch(settings, found)
    if settings.metrics_dir:  # lifeboat_pitr.prom beside lifeboat.prom
        from .pitr.report import write_metrics

        write_metrics(settings.metrics_dir, found)
    if args.json:
        return emit_json(found, 0 if found["ok"] else 1)
    print("\n".join(pitr.report_lines(found)))
    for warning in found["warnings"]:  # e.g. a notification that could not be sent
        print(f"  warning: {warning}")
    return 0 if found["ok"] else 1


def emit_json(data, code: int) -> int:
    print(json.dumps(data, indent=2, default=str))
    return code


COMMANDS = {
    "backup": cmd_backup,
    "drill": cmd_drill,
    "status": cmd_status,
    "list": cmd_list,
    "verify": cmd_verify,
    "prune": cmd_prune,
    "restore": cmd_restore,
    "pitr": cmd_pitr,
}


def _terminate(signum, frame):
    # Unwind through finally blocks so partial files are removed.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = run(args)
        sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # `lifeboat status --json | head`: stop quietly as cat does (128 + SIGPIPE);
        # stdout points at /dev/null so the final flush cannot complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _stdout_closed() -> bool:
    """stdout is a pipe whose reader has closed it (POLLERR on the write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, ValueError):
        return False


def run(args) -> int:
    try:
        return COMMANDS[args.command](args)
    except LifeboatError as exc:
        print(f"lifeboat: error: {exc}", file=sys.stderr)
        code = exc.exit_code if isinstance(exc, ConfigError) else 1
        if args.json:  # stdout stays parseable: the error as JSON too
            failure = {"ok": False, "error": exc.message, "hint": exc.hint}
            return emit_json(dict(failure, error_type=type(exc).__name__), code)
        return code
    except KeyboardInterrupt:
        print("lifeboat: interrupted; nothing half-written was kept.", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if exc.code == 128 + signal.SIGTERM:  # from _terminate, after the cleanup ran
            print(
                "lifeboat: terminated (SIGTERM); nothing half-written was kept. Run it again.",
                file=sys.stderr,
            )
        raise


if __name__ == "__main__":
    sys.exit(main())
