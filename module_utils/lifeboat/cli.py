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

from . import __version__, backup, naming, verify
from .errors import ConfigError, LifeboatError
from .settings import from_environment, load_file, resolve

log = logging.getLogger("lifeboat")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="settings file (default /etc/lifeboat/lifeboat.yml if present)")
    parser.add_argument("--backup-dir", metavar="DIR",
                        help="store root (default $LIFEBOAT_BACKUP_DIR, else ./backups)")
    parser.add_argument("--database", metavar="NAME",
                        help="only this configured database (default: all)")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lifeboat", description="PostgreSQL backups and restores you can trust.")
    parser.add_argument("--version", action="version", version=f"lifeboat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("backup", help="back up every configured database")
    _common(p)
    p.add_argument("--type", default="daily", choices=naming.SCHEDULED_TYPES,
                   help="backup type and retention class (default daily)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")

    p = sub.add_parser("list", help="list backups in the store")
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("verify", help="check a backup file's integrity")
    _common(p)
    p.add_argument("path", help="backup file (or directory archive)")

    p = sub.add_parser("prune", help="apply retention now")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="print what would go, delete nothing")
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
        formatter = logging.Formatter("%(asctime)s lifeboat %(levelname)s %(message)s",
                                      "%Y-%m-%dT%H:%M:%SZ")
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
            f"\r  {backup.human_size(bytes_in)} dumped -> {backup.human_size(bytes_out)} "
            f"written, {backup.human_size(bytes_in / elapsed)}/s, "
            f"{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}   ")
        self.stream.flush()

    def done(self) -> None:
        if self.active:
            self.stream.write("\n")


def cmd_backup(args) -> int:
    settings = load_settings(args)
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
        rows.append({"store": entry.store, "type": entry.name.type,
                     "database": entry.name.label,
                     "created": entry.name.created.strftime("%Y-%m-%d %H:%M:%S"),
                     "size": entry.size, "state": state, "sha256": sha,
                     "path": entry.location})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"No backups in {store.describe()}.")
        return 0
    header = ("TYPE", "DATABASE", "CREATED (UTC)", "SIZE", "STATE", "FILE")
    table = [header] + [(r["type"], r["database"], r["created"], backup.human_size(r["size"]),
                         r["state"], r["path"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def cmd_verify(args) -> int:
    report = verify.verify_file(args.path)
    print(f"OK {report.path}")
    for check in report.checks:
        print(f"  - {check}")
    return 0


def cmd_prune(args) -> int:
    settings = load_settings(args, need_database=False)
    store = backup.store_for(settings)
    deleted = backup.prune(store, store.list(), settings.retention, backup.utcnow(),
                           dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for path in deleted:
        print(f"{verb} {path}")
    print(f"{len(deleted)} backup(s) {verb}.")
    return 0


COMMANDS = {"backup": cmd_backup, "list": cmd_list, "verify": cmd_verify, "prune": cmd_prune}


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
