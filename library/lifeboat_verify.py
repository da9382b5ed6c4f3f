#!/usr/bin/python
# Copyright: lifeboat contributors
# MIT License
"""Ansible adapter for lifeboat verification and restore drills: parameters in, engine out."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lifeboat_verify
short_description: Prove PostgreSQL backups restore (lifeboat restore drills)
description:
  - Checks a backup cheaply (size and sha256 against the manifest, full decompression, the
    dump header and completion trailer, exact row counts of a plain dump, C(pg_restore --list)
    for archives), then, with O(deep), restores it into a scratch database
    C(<db>__lifeboat_drill_<time>) on the database's own server (or on O(drill_server)),
    compares the table count and per-table row counts with the manifest, runs the user checks
    in O(verify_queries), and drops the scratch database, even when a check fails.
  - Reports per database the measured restore time (RTO), what was checked and why it failed.
  - Scratch databases left by a killed drill are dropped at the start of the next one.
  - The original database is never touched. Results go to the backup log, the run state
    (C(lifeboat status), metrics) and the configured notifications.
version_added: "0.1.0"
# No GitHub handles to name: the form ansible-test accepts for that.
author: lifeboat contributors (!UNKNOWN)
options:
  database_url:
    description:
      - The database whose backups to verify, in any form libpq takes (URL, C(host=... dbname=...),
        C(service=NAME) or a database name), e.g. C(postgresql://user:password@host:5432/db).
      - Without O(drill_server), the drill needs the same rights as a restore into a new
        database (CREATEDB; ownership of the objects in the dump).
    type: str
  databases:
    description: Several databases; with O(verify_latest) each gets its newest backup verified.
    type: list
    elements: raw
    default: []
  backup_dir:
    description: Root of the local store (where O(verify_latest) looks).
    type: path
    required: true
  verify_file:
    description: Verify this backup (a path on the host, or C(s3://BUCKET/KEY)).
    type: str
  verify_latest:
    description: Verify the newest complete backup of each database (the default without
      O(verify_file)).
    type: bool
    default: true
  verify_type:
    description: With O(verify_latest), only this type; default the newest daily, weekly or
      monthly backup.
    type: str
    choices: [daily, weekly, monthly, pre-restore]
  deep:
    description: Restore drill into a scratch database after the cheap checks; C(false) for the
      cheap checks only.
    type: bool
    default: true
  verify_queries:
    description:
      - SQL run in the restored scratch database, each in a read-only transaction; each must
        return one row whose first column is C(true), e.g. C(SELECT count(*) > 0 FROM users).
      - A list applies to every database; a dict maps a database name to its own list.
    type: raw
    default: []
  drill_server:
    description:
      - Another server for the scratch restore (any libpq connection string), so production does not carry the load,
        e.g. C(postgresql://drill:password@drillhost:5432/postgres). The role needs CREATEDB,
        and the roles owning the dump's objects must exist there (apply the cluster globals,
        or use a superuser on a throwaway server).
    type: str
  jobs:
    description: C(pg_restore --jobs) for custom and directory archives.
    type: int
    default: 2
  pg_bin_dir:
    description: Directory holding C(psql) and C(pg_restore).
    type: path
  pitr_minutes:
    description:
      - Instead of a dump drill, a point-in-time drill (pgBackRest, docs/pitr.md) - the one
        configured database as it was this many minutes ago, restored through a temporary
        instance into a drill database, verified, measured (RTO, recovery point) and dropped.
      - Needs root or the cluster's OS user (become).
    type: float
extends_documentation_fragment:
  - lifeboat.monitoring
  - lifeboat.s3
  - lifeboat.encryption
  - lifeboat.pitr
attributes:
  check_mode:
    support: full
    description: Runs the cheap checks only (they read files, never a database) and reports
      what a drill would do; nothing is created.
  diff_mode:
    support: none
    description: Changes no backup or database (the drill database is always dropped).
notes:
  - The reported RTO is fetch + checks + load + verification + ANALYZE of the scratch copy,
    what a real restore of this backup takes before its swap.
  - C(changed) is true only when the drill dropped scratch databases left by a killed drill.
seealso:
  - module: lifeboat_restore
  - module: lifeboat_backup
"""

EXAMPLES = r"""
- name: Restore-drill the newest backup of each database
  lifeboat_verify:
    database_url: "{{ lifeboat_database_url }}"
    backup_dir: /var/backups/lifeboat
    verify_queries:
      - SELECT count(*) > 0 FROM users

- name: Drill the newest weekly backup on a separate drill server
  lifeboat_verify:
    database_url: "{{ lifeboat_database_url }}"
    backup_dir: /var/backups/lifeboat
    verify_type: weekly
    drill_server: "{{ vault_drill_server_url }}"

- name: Check one file cheaply, without a database
  lifeboat_verify:
    database_url: "{{ lifeboat_database_url }}"
    backup_dir: /var/backups/lifeboat
    verify_file: /var/backups/lifeboat/daily/plotzed-daily-backup-2025-01-15T02-00-00.sql.gz
    deep: false
"""

RETURN = r"""
pitr_drill:
  description: The point-in-time drill, with O(pitr_minutes).
  returned: when pitr_minutes is set and not in check mode
  type: dict
  sample:
    database: plotzed
    time: "2026-11-30T10:37:00Z"
    ok: true
    rto_seconds: 6.3
    tables: 2
    rows: 2500
    recovered_to: "2026-11-30 10:36:58.120331+00:00"
    recovery_point_seconds: 41.0
    scratch_dropped: true
results:
  description: One entry per database verified.
  returned: always
  type: list
  elements: dict
  sample:
    - database: plotzed
      deep: true
      type: daily
      ok: true
      changed: false
      source: /var/backups/lifeboat/daily/plotzed-daily-backup-2025-01-15T02-00-00.sql.gz
      file: /var/backups/lifeboat/daily/plotzed-daily-backup-2025-01-15T02-00-00.sql.gz
      size: 1048576
      backup_created: "2025-01-15T02:00:00Z"
      backup_age_seconds: 10800
      server: "127.0.0.1:5432"
      scratch: plotzed__lifeboat_drill_20250115050000
      scratch_dropped: true
      checks: [size and sha256 match the manifest, table count 12 matches the manifest]
      tables: 12
      rows: 104233
      table_rows: {public.users: 500, public.plots: 2000}
      queries: [{sql: SELECT count(*) > 0 FROM users, ok: true, outcome: returned true}]
      timings: {fetch: 0.0, check: 0.4, restore: 31.2, verify: 2.1, queries: 0.1, cleanup: 0.2}
      rto_seconds: 33.7
      duration: 34.0
      cleaned: []
      warnings: []
      error: ""
      hint: ""
      error_type: ""
summary:
  description: Human-readable lines, one or more per database.
  returned: always
  type: list
  elements: str
  sample: ["OK plotzed daily (deep): /var/backups/... restored on 127.0.0.1:5432 in 33.7s (RTO)"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.lifeboat import ansible_args, drill
from ansible.module_utils.lifeboat.errors import LifeboatError
from ansible.module_utils.lifeboat.settings import resolve


def main() -> None:
    spec = dict(
        ansible_args.CONNECTION,
        **ansible_args.MONITORING,
        **ansible_args.S3,
        **ansible_args.VERIFY,
        **ansible_args.PITR,
    )
    spec["backup_dir"] = dict(spec["backup_dir"], required=True)
    spec.update(ansible_args.ENCRYPT)
    spec.update(
        jobs=ansible_args.DUMP["jobs"],
        verify_file={"type": "str"},
        verify_latest={"type": "bool", "default": True},
        verify_type={"type": "str", "choices": ["daily", "weekly", "monthly", "pre-restore"]},
        deep={"type": "bool", "default": True},
        pitr_minutes={"type": "float"},
    )
    module = AnsibleModule(
        argument_spec=spec,
        required_one_of=[("database_url", "databases")],
        supports_check_mode=True,
    )
    ansible_args.mask_credentials_only(module)
    params = dict(module.params)
    request = drill.Request(
        file=params["verify_file"] or None,
        latest=not params["verify_file"] and params["verify_latest"],
        backup_type=params["verify_type"],
        # Check mode: the cheap checks read files only; a drill would create a database.
        deep=params["deep"] and not module.check_mode,
    )
    if params["pitr_minutes"] is not None:
        pitr_drill(module, params)
    try:
        settings = resolve(ansible_args.settings_params(params))
        results = drill.run(settings, request, record=not module.check_mode)
    except LifeboatError as exc:
        module.fail_json(msg=str(exc), error_type=type(exc).__name__, results=[], summary=[])
    summary = [line for result in results for line in drill.describe(result)]
    if module.check_mode and params["deep"]:
        summary.append(
            "check mode: cheap checks only; a drill would restore into a scratch database"
        )
    ansible_args.exit_with(
        module, results, "verifications", changed=any(r.changed for r in results), summary=summary
    )


def pitr_drill(module, params: dict) -> None:
    """The point-in-time drill (pitr/drill.py) instead of a dump drill; ends the module."""
    from ansible.module_utils.lifeboat.pitr import drill as pitr_drill_engine

    minutes = params["pitr_minutes"]
    if module.check_mode:
        module.exit_json(
            changed=False,
            summary=[f"check mode: a point-in-time drill to {minutes:g} minutes ago would run"],
        )
    try:
        found = pitr_drill_engine.run(resolve(ansible_args.settings_params(params)), minutes)
    except LifeboatError as exc:
        module.fail_json(msg=str(exc), error_type=type(exc).__name__, summary=[])
    summary = pitr_drill_engine.describe(found)
    if not found["ok"]:
        module.fail_json(msg=summary[0], pitr_drill=found, summary=summary)
    module.exit_json(changed=False, pitr_drill=found, summary=summary)


if __name__ == "__main__":
    main()
