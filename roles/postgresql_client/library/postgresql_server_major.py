#!/usr/bin/python
# Copyright: lifeboat contributors
# MIT License
"""Ask PostgreSQL servers for their major version with the host's psql (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: postgresql_server_major
short_description: Find the newest PostgreSQL server major among some databases
description:
  - Connects to each database with the host's C(psql) and reads C(server_version_num).
  - Also reports the newest installed C(pg_dump) major, so a role can install a
    client at least as new as the server (C(pg_dump) refuses newer servers).
  - Unreachable servers are reported, not fatal, since a host is often
    provisioned before its database exists.
version_added: "0.1.0"
# No GitHub handles to name: the form ansible-test accepts for that.
author: lifeboat contributors (!UNKNOWN)
options:
  urls:
    description:
      - Database URLs, or dicts with a C(url) key (as C(lifeboat_databases)).
      - Passwords go to C(psql) through a private 0600 passfile, never argv.
    type: list
    elements: raw
    required: true
  timeout:
    description: Connection timeout per server, in seconds.
    type: int
    default: 5
attributes:
  check_mode:
    support: full
    description: Read-only; runs the same in check mode.
notes:
  - Needs C(psql) on the host; without it only the client major (none) is reported.
"""

EXAMPLES = r"""
- name: Ask the database servers for their version
  postgresql_server_major:
    urls: "{{ lifeboat_databases }}"
  register: postgresql_client_probe
  no_log: true
"""

RETURN = r"""
server_major:
  description: Newest major among the reachable servers; null when none answered.
  returned: always
  type: int
  sample: 16
client_major:
  description: Newest installed pg_dump major; null when none is installed.
  returned: always
  type: int
  sample: 15
unanswered:
  description: Servers that did not answer (password-free description and error).
  returned: always
  type: list
  elements: str
  sample: ["plotzed on db1.internal:5432 as plotzed: connection refused"]
"""

import subprocess  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.lifeboat import pg  # noqa: E402
from ansible.module_utils.lifeboat.conninfo import ConnInfo, client_env, redact  # noqa: E402
from ansible.module_utils.lifeboat.errors import LifeboatError  # noqa: E402


def client_major():
    try:
        return pg.major(pg.tool_version(pg.find_tool("pg_dump")))
    except (LifeboatError, ValueError, OSError):
        return None


def ask(conn, psql, timeout):
    """server_version_num of one server, or raise RuntimeError with a safe message."""
    with client_env(conn) as child:
        child["env"]["PGCONNECT_TIMEOUT"] = str(timeout)
        proc = subprocess.run(
            [psql, "-X", "-A", "-t", "-w", "-c", "SHOW server_version_num", "-d", conn.conninfo()],
            **child,
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            check=False,
        )
    if proc.returncode != 0:
        message = " ".join(line.strip() for line in proc.stderr.splitlines() if line.strip())
        raise RuntimeError(redact(message or f"psql exited {proc.returncode}", conn.password))
    return int(proc.stdout.strip()) // 10000


def main():
    module = AnsibleModule(
        argument_spec=dict(
            urls=dict(type="list", elements="raw", required=True, no_log=True),
            timeout=dict(type="int", default=5),
        ),
        supports_check_mode=True,
    )
    result = dict(changed=False, server_major=None, client_major=client_major(), unanswered=[])
    try:
        psql = pg.find_tool("psql")
    except LifeboatError:
        result["unanswered"] = ["psql is not installed; install the client first"]
        module.exit_json(**result)
    majors = []
    for entry in module.params["urls"]:
        url = entry.get("url", "") if isinstance(entry, dict) else entry
        try:
            conn = ConnInfo.parse(url)
        except LifeboatError as exc:
            module.fail_json(msg=f"Failed to read a database URL: {exc}", **result)
        try:
            majors.append(ask(conn, psql, module.params["timeout"]))
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            result["unanswered"].append(f"{conn.where()}: {exc}")
    if majors:
        result["server_major"] = max(majors)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
