#!/usr/bin/python
# Copyright: lifeboat contributors
# MIT License
"""Ansible adapter for lifeboat backups: parameters in, engine call, results out."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lifeboat_backup
short_description: Back up PostgreSQL databases with lifeboat
description:
  - Dumps each configured database with C(pg_dump), streaming through compression and
    sha256 into the backup store, then applies retention for the backup type.
  - Output is plain SQL gzip by default (C(gunzip -c FILE | psql) restores it), named
    C(<db>-<type>-backup-<YYYY-MM-DDTHH-MM-SS>.sql.gz) under C(<backup_dir>/<type>/), with a
    C(.manifest.json) written last. A file without a manifest is never a backup.
  - Each database is backed up independently; one failing does not stop the others.
    The module fails when any failed, after all have run.
version_added: "0.1.0"
# No GitHub handles to name: the form ansible-test accepts for that.
author: lifeboat contributors (!UNKNOWN)
options:
  database_url:
    description:
      - The database, in any form libpq takes, C(postgresql://user:password@host:5432/dbname),
        C(postgresql:///dbname) (local socket), C(host=/run/postgresql dbname=app), C(service=NAME),
        or a database name (libpq's defaults and C(~/.pgpass) do the rest).
      - Special characters in a URL's password must be percent-encoded.
      - The password is handed to C(pg_dump) through a passfile in memory, never argv or disk.
    type: str
  databases:
    description:
      - Several databases. Each item is a URL or a dict with C(url) and an optional C(name)
        used in file names. Takes precedence over O(database_url).
    type: list
    elements: raw
    default: []
  backup_dir:
    description: Root of the local store; created 0700 when missing.
    type: path
    required: true
  backup_type:
    description: Backup type; selects the folder and the retention class.
    type: str
    choices: [daily, weekly, monthly]
    default: daily
  globals:
    description:
      - Also save C(pg_dumpall --globals-only) (roles, memberships, tablespaces) beside each
        backup as C(<backup name>.globals.sql) (0600, recorded in the manifest), so a lost
        server can be rebuilt (M(lifeboat_restore) with O(lifeboat_restore#module:restore_globals)).
      - A failure to save it is a warning; the backup itself is kept.
    type: bool
    default: false
  globals_passwords:
    description: Include role password hashes in the globals file (reading them needs a
      superuser); without it roles are saved without passwords.
    type: bool
    default: false
  format:
    description: C(pg_dump) output format.
    type: str
    choices: [plain, custom, directory]
    default: plain
  compression:
    description:
      - C(gzip) (zlib-ng, threaded), C(zstd) or C(none). Custom and directory formats are
        compressed by C(pg_dump) itself (gzip or none).
    type: str
    choices: [gzip, zstd, none]
    default: gzip
  compression_level:
    description:
      - gzip 1-9 (default chosen per backup from its first 4 MiB), zstd 1-19
        (default 3); custom and directory formats take C(pg_dump)'s 0-9.
    type: int
  jobs:
    description: Parallel C(pg_dump) jobs for the directory format.
    type: int
    default: 2
  plain_jobs:
    description: Not used by backups; accepted so backup and restore share their settings.
    type: int
    default: 2
  threads:
    description: Compression threads for plain format.
    type: int
    default: 2
  pg_dump_args:
    description: Extra C(pg_dump) arguments, e.g. C(--exclude-table=audit_log).
    type: list
    elements: str
    default: []
  retention:
    description:
      - Retention per type; missing keys keep their defaults.
      - C(daily) days, C(weekly) weeks, C(monthly) months, C(pre-restore) count.
      - The newest complete backup of a type is never deleted.
    type: dict
    default: {}
  lock_timeout:
    description:
      - Seconds C(pg_dump) waits for each table lock another session holds
        (C(--lock-wait-timeout)); then the backup fails naming that session (user,
        application, client, since when, query) and what to do.
    type: int
    default: 60
  pg_bin_dir:
    description: Directory holding C(pg_dump); default is the newest installed major.
    type: path
extends_documentation_fragment:
  - lifeboat.monitoring
  - lifeboat.s3
  - lifeboat.encryption
attributes:
  check_mode:
    support: full
    description: Reports the file it would write and what retention would delete.
  diff_mode:
    support: none
    description: Backups are new files; the result lists them instead of a diff.
notes:
  - Needs C(pg_dump) and the python packages psycopg (3) and, for speed, zlib-ng on the host.
  - Retention runs only after a successful backup of that type, and deletes nothing when
    the store cannot be listed.
  - After each database, the outcome goes to the backup log, the run state read by
    M(lifeboat_status), the metrics and the notification channels. A notification that
    cannot be sent is a warning; it never changes the outcome.
seealso:
  - name: Backup and recovery guide
    description: The behaviours lifeboat automates.
    link: https://www.postgresql.org/docs/current/backup-dump.html
"""

EXAMPLES = r"""
- name: Take the daily backup of the app database
  lifeboat_backup:
    database_url: "{{ lifeboat_database_url }}"
    backup_dir: /var/backups/lifeboat

- name: Take a weekly custom-format backup of two databases
  lifeboat_backup:
    databases:
      - url: "{{ app_db_url }}"
      - url: "{{ reports_db_url }}"
        name: reports
    backup_dir: /var/backups/lifeboat
    backup_type: weekly
    format: custom
"""

RETURN = r"""
results:
  description:
    - One entry per database.
    - C(s3_key) is the off-site copy's URL; C(s3_error) says why there is none while C(file),
      the local copy, is still complete (C(ok) is then false).
  returned: always
  type: list
  elements: dict
  sample:
    - database: plotzed
      type: daily
      ok: true
      file: /var/backups/lifeboat/daily/plotzed-daily-backup-2025-01-15T02-00-00.sql.gz
      size: 1048576
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      duration: 4.2
      deleted: [/var/backups/lifeboat/daily/plotzed-daily-backup-2025-01-07T02-00-00.sql.gz]
      warnings: []
      error: ""
      hint: ""
      error_type: ""
      s3_key: s3://my-backup-bucket/backups/daily/plotzed-daily-backup-2025-01-15T02-00-00.sql.gz
      s3_error: ""
summary:
  description: One human-readable line per database.
  returned: always
  type: list
  elements: str
  sample: ["plotzed daily: /var/backups/lifeboat/daily/plotzed-daily-backup-2025-01-15T02-00-00.sql.gz (1.0 MiB, 4.2s)"]
planned:
  description: In check mode, the file per database and what retention would delete.
  returned: check mode
  type: list
  elements: dict
  sample:
    - database: plotzed
      type: daily
      file: /var/backups/lifeboat/daily/plotzed-daily-backup-2025-01-15T02-00-00.sql.gz
      would_delete: []
      s3_key: s3://my-backup-bucket/backups/daily/plotzed-daily-backup-2025-01-15T02-00-00.sql.gz
      s3_error: ""
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.lifeboat import ansible_args, backup, monitor
from ansible.module_utils.lifeboat.errors import ConfigError, LifeboatError
from ansible.module_utils.lifeboat.settings import resolve


def main() -> None:
    spec = dict(
        ansible_args.CONNECTION, **ansible_args.DUMP, **ansible_args.MONITORING, **ansible_args.S3
    )
    spec["backup_dir"] = dict(spec["backup_dir"], required=True)
    spec["backup_type"] = ansible_args.BACKUP_TYPE
    spec.update(ansible_args.GLOBALS)
    spec.update(ansible_args.ENCRYPT)
    module = AnsibleModule(
        argument_spec=spec,
        required_one_of=[("database_url", "databases")],
        supports_check_mode=True,
    )
    ansible_args.mask_credentials_only(module)
    params = dict(module.params)
    try:
        settings = resolve(ansible_args.settings_params(params))
        if module.check_mode:
            planned = backup.plan(settings, params["backup_type"])
            module.exit_json(
                changed=True,
                planned=planned,
                results=[],
                summary=[
                    line
                    for p in planned
                    for line in (
                        f"{p['database']}: would write {p['file']}",
                        *(
                            f"{p['database']}: would delete {d} (retention)"
                            for d in p["would_delete"]
                        ),
                    )
                ],
            )
        results = backup.run(settings, params["backup_type"])
    except LifeboatError as exc:
        if isinstance(exc, ConfigError) and not module.check_mode:
            # A scheduled playbook with broken settings must still reach people.
            monitor.config_failure(
                lambda: [ansible_args.settings_params(params)], exc, "backup", params["backup_type"]
            )
        module.fail_json(msg=str(exc), error_type=type(exc).__name__, results=[], summary=[])
    # A local copy written is a change, even when its S3 copy failed.
    ansible_args.exit_with(module, results, "backups", changed=any(r.file for r in results))


if __name__ == "__main__":
    main()
