#!/usr/bin/python
# Copyright: lifeboat contributors
# MIT License
"""Ansible adapter for lifeboat restores: parameters in, engine call, results out."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lifeboat_restore
short_description: Restore a PostgreSQL database safely with lifeboat
description:
  - Restores a backup into a scratch database created like the original (owner, encoding,
    collation, database settings and grants), verifies exact row counts against the dump,
    then swaps it into the original's name in one transaction and drops the replaced
    database (or keeps it).
  - The source is validated (sha256 against the manifest, full decompression, completion
    trailer) before anything is touched; a corrupt or truncated file changes nothing.
  - A pre-restore backup of the current database is taken first (type C(pre-restore),
    kept by count) unless O(skip_pre_backup) is set.
  - A failed or interrupted restore leaves the original database untouched; the next run
    cleans up what a crashed one left behind.
version_added: "0.1.0"
# No GitHub handles to name: the form ansible-test accepts for that.
author: lifeboat contributors (!UNKNOWN)
options:
  database_url:
    description:
      - The database to restore, in any form libpq takes (URL, C(host=... dbname=...),
        C(service=NAME) or a database name), e.g. C(postgresql://user:password@host:5432/dbname).
      - The role needs CREATEDB and ownership of the database (what a managed PostgreSQL owner
        has), and C(pg_signal_backend) only to end other roles' sessions.
    type: str
  databases:
    description:
      - Several databases; with O(restore_latest) each gets its newest backup.
    type: list
    elements: raw
    default: []
  backup_dir:
    description: Root of the local store (where O(restore_latest) looks, where the pre-restore
      backup goes).
    type: path
    required: true
  restore_latest:
    description: Restore the newest complete backup of each database.
    type: bool
    default: false
  restore_file:
    description: Path of a lifeboat backup or a stock C(pg_dump) output (.sql, .sql.gz, custom).
    type: path
  restore_from_s3:
    description: C(s3://BUCKET/KEY) of a backup (needs lifeboat's S3 support).
    type: str
  restore_time:
    description:
      - Bring the database back as it was at this time (C(YYYY-MM-DD HH:MM:SS+00), with its
        UTC offset) from pgBackRest's base backups and archived WAL (the lifeboat_pitr role,
        docs/pitr.md).
      - The cluster is recovered to that time in a temporary instance on the host, then the
        database goes through the same pre-restore backup, scratch database, verification and
        swap; every other database keeps running. One database at a time.
    type: str
  restore_type:
    description:
      - With O(restore_latest), only this type. Default is the newest daily, weekly or
        monthly backup; C(pre-restore) undoes the last restore.
    type: str
    choices: [daily, weekly, monthly, pre-restore]
  target_database:
    description: Restore into this database instead, leaving the original alone. A new one is
      created; an existing one is replaced the same safe way, after its own pre-restore backup.
      C(postgres), C(template0), C(template1) and template databases are refused.
    type: str
  skip_pre_backup:
    description: Do not take the pre-restore backup (faster, not advised).
    type: bool
    default: false
  keep_replaced_database:
    description: Keep the replaced database as C(<db>__lifeboat_replaced_<time>) instead of
      dropping it.
    type: bool
    default: false
  block_writes:
    description:
      - Refuse writes to the database from the pre-restore backup's snapshot until the swap
        (new sessions default to read-only, current ones are ended once); reads go on.
      - Without it, writes in that window are detected at the swap and the replaced database
        is then kept (named in the C(replaced) key of RV(results), with a warning) instead of dropped.
    type: bool
    default: false
  confirm:
    description:
      - Must be C(true) for a restore to run; without it the module fails at once and
        changes nothing. Not needed in check mode or with O(dry_run).
    type: bool
    default: false
  dry_run:
    description: Report the plan and change nothing (as check mode).
    type: bool
    default: false
  restore_globals:
    description:
      - First apply the backup's cluster globals file (saved with M(lifeboat_backup)'s
        O(lifeboat_backup#module:globals)), e.g. on an empty server. Roles that exist are not
        created again. Needs a superuser (or CREATEROLE) URL.
    type: bool
    default: false
  format:
    description: Format of the pre-restore backup.
    type: str
    choices: [plain, custom, directory]
    default: plain
  compression:
    description: Compression of the pre-restore backup.
    type: str
    choices: [gzip, zstd, none]
    default: gzip
  compression_level:
    description: Codec level of the pre-restore backup.
    type: int
  jobs:
    description: C(pg_restore --jobs) for custom and directory archives.
    type: int
    default: 2
  plain_jobs:
    description:
      - Connections a restore of a plain dump loads with.
      - C(2) or more split its C(COPY) blocks and index builds over that many connections.
      - C(1) streams it into one C(psql) in one transaction (the stock path).
    type: int
    default: 2
  threads:
    description: Compression threads for the pre-restore backup.
    type: int
    default: 2
  pg_dump_args:
    description: Extra C(pg_dump) arguments for the pre-restore backup.
    type: list
    elements: str
    default: []
  retention:
    description: Retention per type; C(pre-restore) is a count (default 5).
    type: dict
    default: {}
  lock_timeout:
    description:
      - Seconds the pre-restore backup, O(block_writes) and the swap wait for a lock another
        session holds; then the restore fails naming that session and changes nothing.
    type: int
    default: 60
  pg_bin_dir:
    description: Directory holding C(psql), C(pg_restore) and C(pg_dump).
    type: path
extends_documentation_fragment:
  - lifeboat.monitoring
  - lifeboat.s3
  - lifeboat.encryption
  - lifeboat.pitr
attributes:
  check_mode:
    support: full
    description: Returns the plan (backup, age, size, checks, what would be replaced, the
      pre-restore backup) without acting.
  diff_mode:
    support: none
    description: No diff; check mode returns the plan, the result what was replaced.
notes:
  - Connections to the database are blocked and ended only for the swap itself; the module
    reports that window in milliseconds.
seealso:
  - module: lifeboat_backup
"""

EXAMPLES = r"""
- name: Restore the newest backup of the app database
  lifeboat_restore:
    database_url: "{{ lifeboat_database_url }}"
    backup_dir: /var/backups/lifeboat
    restore_latest: true
    confirm: true

- name: Bring the app database back as it was just before a bad statement (pgBackRest)
  lifeboat_restore:
    database_url: "{{ lifeboat_database_url }}"
    backup_dir: /var/backups/lifeboat
    restore_time: "2026-11-30 10:41:59+00"
    confirm: true

- name: Restore one file into a test database, leaving production alone
  lifeboat_restore:
    database_url: "{{ lifeboat_database_url }}"
    backup_dir: /var/backups/lifeboat
    restore_file: /var/backups/lifeboat/daily/plotzed-daily-backup-2025-01-15T02-00-00.sql.gz
    target_database: plotzed_test
    confirm: true

- name: Show what a restore would do
  lifeboat_restore:
    database_url: "{{ lifeboat_database_url }}"
    backup_dir: /var/backups/lifeboat
    restore_latest: true
    dry_run: true
"""

RETURN = r"""
results:
  description: One entry per database restored.
  returned: when not a dry run
  type: list
  elements: dict
  sample:
    - database: plotzed
      source: /var/backups/lifeboat/daily/plotzed-daily-backup-2025-01-15T02-00-00.sql.gz
      ok: true
      changed: true
      pre_restore_backup: /var/backups/lifeboat/pre-restore/plotzed-pre-restore-backup-2025-01-15T09-12-00.sql.gz
      scratch: plotzed__lifeboat_restore_20250115091200
      replaced: ""
      created: false
      swap_ms: 12.5
      duration: 42.1
      timings: {pre_restore_backup: 11.2, load: 24.0, verify: 3.1, analyze: 1.4, swap: 0.3}
      tables: 12
      rows: 104233
      block_writes: false
      sessions_ended_at_block: 0
      sessions_ended: 2
      open_transactions: 1
      writes_after_snapshot: []
      warnings: []
      error: ""
      hint: ""
      error_type: ""
planned:
  description: In check mode or with O(dry_run), the plan per database.
  returned: check mode or dry run
  type: list
  elements: dict
  sample:
    - database: plotzed
      ok: true
      source: {location: /var/backups/lifeboat/daily/plotzed-daily-backup-2025-01-15T02-00-00.sql.gz,
               format: plain, compression: gzip, size: 1048576, age: 7 h, manifest: true}
      checks: [size and sha256 match the manifest]
      exists: true
      replaces: plotzed (40.2 MiB, owner plotzed)
      pre_restore_backup: /var/backups/lifeboat/pre-restore/plotzed-pre-restore-backup-2025-01-15T09-12-00.sql.gz
      scratch: plotzed__lifeboat_restore_20250115091200
      keep_replaced_as: ""
summary:
  description: Human-readable lines (the plan, or one line per database).
  returned: always
  type: list
  elements: str
  sample: ["plotzed restored from /var/backups/lifeboat/daily/... (12 tables, 104233 rows verified, replaced, swap window 12 ms, 42.1s)"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.lifeboat import ansible_args, restore
from ansible.module_utils.lifeboat.errors import LifeboatError
from ansible.module_utils.lifeboat.settings import resolve


def main() -> None:
    spec = dict(
        ansible_args.CONNECTION,
        **ansible_args.DUMP,
        **ansible_args.MONITORING,
        **ansible_args.S3,
        **ansible_args.ENCRYPT,
        **ansible_args.PITR,
    )
    spec["backup_dir"] = dict(spec["backup_dir"], required=True)
    spec.update(
        restore_latest={"type": "bool", "default": False},
        restore_file={"type": "path"},
        restore_from_s3={"type": "str"},
        restore_time={"type": "str"},
        restore_type={"type": "str", "choices": ["daily", "weekly", "monthly", "pre-restore"]},
        target_database={"type": "str"},
        skip_pre_backup={"type": "bool", "default": False},
        keep_replaced_database={"type": "bool", "default": False},
        block_writes={"type": "bool", "default": False},
        restore_globals={"type": "bool", "default": False},
        confirm={"type": "bool", "default": False},
        dry_run={"type": "bool", "default": False},
    )
    module = AnsibleModule(
        argument_spec=spec,
        required_one_of=[("database_url", "databases")],
        supports_check_mode=True,
    )
    ansible_args.mask_credentials_only(module)
    params = dict(module.params)
    request = restore.Request(
        latest=params["restore_latest"],
        file=params["restore_file"],
        from_s3=params["restore_from_s3"],
        time=params["restore_time"],
        backup_type=params["restore_type"],
        target_db=params["target_database"],
        skip_pre_backup=params["skip_pre_backup"],
        keep_replaced=params["keep_replaced_database"],
        confirm=params["confirm"],
        with_globals=params["restore_globals"],
        block_writes=params["block_writes"],
    )
    try:
        settings = resolve(ansible_args.settings_params(params))
        if module.check_mode or params["dry_run"]:
            planned = restore.plan(settings, request)
            summary = [line for item in planned for line in restore.describe_plan(item)]
            if not all(item["ok"] for item in planned):
                module.fail_json(
                    msg=" | ".join(i["error"] + " " + i["hint"] for i in planned if not i["ok"]),
                    planned=planned,
                    summary=summary,
                )
            # Check mode reports that a restore would change the database; a dry run changed nothing.
            module.exit_json(changed=module.check_mode, planned=planned, summary=summary)
        results = restore.run(settings, request)
    except LifeboatError as exc:
        module.fail_json(msg=str(exc), error_type=type(exc).__name__, results=[], summary=[])
    ansible_args.exit_with(module, results, "restores", changed=any(r.ok for r in results))


if __name__ == "__main__":
    main()
