#!/usr/bin/python
# Copyright: lifeboat contributors
# MIT License
"""Ansible adapter for lifeboat's backup status: read-only, one call per host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lifeboat_status
short_description: Report the newest backup per database and type, its age and state
description:
  - Lists the backup store once (and the S3 bucket when O(s3_bucket) is set) and reads the run
    state that M(lifeboat_backup) leaves in C(<backup_dir>/.state/). For every database and
    backup type it returns the newest complete backup, its age, size and where it is, the last
    failure when it is newer than the last success, and a state.
  - C(OK) newest backup within the type's age limit; C(STALE) older than the limit;
    C(FAILED) the last attempt failed; C(MISSING) no complete backup of that type;
    C(FUTURE) a backup is dated in the future (clock skew); age is the newest sane one's.
  - The module never fails because a backup is not OK, it reports. The status playbook
    gathers every host's report into one table and fails once, at the end.
  - With O(fleet), it reads nothing and renders the given per-host reports as one table.
version_added: "0.1.0"
# No GitHub handles to name: the form ansible-test accepts for that.
author: lifeboat contributors (!UNKNOWN)
options:
  backup_dir:
    description: Root of the local store. Required unless O(fleet) is given.
    type: path
  database_url:
    description:
      - The database whose backups to check (its name labels the files).
      - Without O(database_url) and O(databases), every database found in the store counts.
      - Nothing connects to the database; only the store is read.
    type: str
  databases:
    description: Several databases; each a URL or a dict with C(url) and C(name).
    type: list
    elements: raw
    default: []
  status_max_age_hours:
    description:
      - Age limit per backup type in hours; missing types keep the defaults
        (daily 26, weekly 192, monthly 768). C(0) stops checking a type.
    type: dict
    default: {}
  s3_bucket:
    description: Also look for each newest backup in this bucket.
    type: str
  s3_prefix:
    description: Key prefix in the bucket.
    type: str
    default: backups
  s3_endpoint_url:
    description: S3-compatible endpoint.
    type: str
  s3_region:
    description: S3 region.
    type: str
  pitr:
    description:
      - Add a row for point-in-time recovery (pgBackRest, docs/pitr.md) - newest archived WAL
        and its age, newest base backup, recoverable window - that is C(FAILED) when archiving
        fails or goes stale.
    type: bool
    default: false
  pitr_stanza:
    description: pgBackRest stanza.
    type: str
    default: main
  pitr_config:
    description: pgBackRest configuration file.
    type: path
    default: /etc/pgbackrest/pgbackrest.conf
  pitr_pg_port:
    description: Port of the cluster, when no database is configured.
    type: int
    default: 5432
  pitr_pg_socket_dir:
    description: Socket directory of the cluster, when no database is configured.
    type: path
    default: /var/run/postgresql
  pitr_max_wal_age_minutes:
    description: Minutes without an archived WAL segment (while the server writes) that make
      the row C(FAILED).
    type: float
    default: 10
  fleet:
    description:
      - Per-host results to merge and render, as a mapping of host name to this module's
        registered result. A host without rows (unreachable, failed) becomes an C(UNKNOWN)
        row. Used once per play by the status playbook.
    type: dict
attributes:
  check_mode:
    support: full
    description: The module only reads; check mode runs it unchanged.
  diff_mode:
    support: none
    description: Read-only; nothing to show a diff of.
notes:
  - Credentials in O(database_url) are not used and never returned.
  - S3 credentials come from the usual AWS chain on the host.
seealso:
  - module: lifeboat_backup
"""

EXAMPLES = r"""
- name: Read the backup status of this host
  lifeboat_status:
    backup_dir: /var/backups/lifeboat
    database_url: "{{ lifeboat_database_url }}"
  register: backup_status

- name: Check only daily backups, allowing 30 hours
  lifeboat_status:
    backup_dir: /var/backups/lifeboat
    status_max_age_hours: {daily: 30, weekly: 0, monthly: 0}

- name: Render every host's status as one table
  lifeboat_status:
    fleet:
      db1: "{{ hostvars['db1'].backup_status }}"
      db2: "{{ hostvars['db2'].backup_status }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
ok:
  description: True when every row is OK and every store could be read.
  returned: always
  type: bool
  sample: false
counts:
  description: Rows per state.
  returned: always
  type: dict
  sample: {OK: 2, STALE: 1, FAILED: 0, MISSING: 0}
rows:
  description: One per host (fleet), database and backup type.
  returned: always
  type: list
  elements: dict
  sample:
    - host: db1
      database: plotzed
      type: daily
      state: STALE
      reason: newest daily backup is 1d6h old (limit 26h)
      newest: plotzed-daily-backup-2025-01-14T02-00-00.sql.gz
      newest_at: "2025-01-14T02:00:00Z"
      age_seconds: 108000
      age: 1d6h
      size: 1048576
      local: true
      s3: null
      last_attempt_at: "2025-01-14T02:00:00Z"
      last_failure_at: ""
      last_error: ""
      last_hint: ""
      max_age_hours: 26
errors:
  description: Stores (or hosts) that could not be read.
  returned: always
  type: list
  elements: str
  sample: []
text:
  description: RV(table) as one string, for printing.
  returned: always
  type: str
  sample: "DATABASE  TYPE   STATE ...\\n1 checked: 1 OK; all OK"
summary:
  description: The summary line.
  returned: always
  type: str
  sample: "60 checked: 57 OK, 2 STALE, 1 FAILED; NOT OK"
table:
  description: The rows as a text table and a summary line.
  returned: always
  type: list
  elements: str
  sample:
    - "HOST  DATABASE  TYPE   STATE  NEWEST (UTC)         AGE    SIZE     WHERE  DETAIL"
    - "db1   plotzed   daily  OK     2025-01-15 02:00:00  3h12m  1.0 MiB  local"
    - "1 checked: 1 OK; all OK"
host:
  description: The host's name as it sees itself.
  returned: when O(fleet) is not given
  type: str
  sample: db1
hosts:
  description: Number of hosts merged.
  returned: when O(fleet) is given
  type: int
  sample: 20
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.lifeboat import ansible_args, schema, status
from ansible.module_utils.lifeboat.errors import LifeboatError

# Where to look for the off-site copies (generated from the settings' schema).
S3 = schema.argument_spec("s3_bucket", "s3_prefix", "s3_endpoint_url", "s3_region")
# By name: "pitr" is also the group of every pitr_* setting.
PITR = {
    name: schema.module_option(schema.BY_NAME[name])
    for name in ("pitr", "pitr_stanza", "pitr_config", "pitr_pg_port", "pitr_pg_socket_dir",
                 "pitr_max_wal_age_minutes")
}  # fmt: skip


def main() -> None:
    spec = {
        key: ansible_args.CONNECTION[key] for key in ("database_url", "databases", "backup_dir")
    }
    spec.update(ansible_args.STATUS, **S3, **PITR)
    spec["fleet"] = {"type": "dict"}
    module = AnsibleModule(
        argument_spec=spec,
        required_one_of=[("backup_dir", "fleet")],
        supports_check_mode=True,
    )
    ansible_args.mask_credentials_only(module)
    params = dict(module.params)
    try:
        if params["fleet"] is not None:
            result = status.fleet(params["fleet"])
            table = status.render(result)
        else:
            settings, labels = status.load(ansible_args.settings_params(params))
            result = status.report(settings, labels=labels)
            table = status.render(result, show_host=False)
    except LifeboatError as exc:
        module.fail_json(msg=str(exc), error_type=type(exc).__name__)
    module.exit_json(
        changed=False,
        table=table,
        text="\n".join(table),
        summary=status.summary_line(result),
        **result,
    )


if __name__ == "__main__":
    main()
