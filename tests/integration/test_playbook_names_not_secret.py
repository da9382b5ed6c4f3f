"""Database names are labels, not secrets (issue 12.3): with the `{url, name}` form
the names show in summaries, registered results and the status table, while the
URLs and passwords never reach any output, even at -vvv."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse

from conftest import OWNER_PASSWORD, ROOT, make_db

NO_LOG = "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"


def playbook(name: str, inventory, env: dict, *args: str) -> subprocess.CompletedProcess:
    env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        ["ansible-playbook", "-i", str(inventory), f"playbooks/{name}.yml", *args],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip


def assert_no_credentials(output: str, *urls: str) -> None:
    for url in urls:
        encoded = urllib.parse.urlsplit(url).password
        assert url not in output
        assert encoded not in output
    assert OWNER_PASSWORD not in output


def test_names_show_and_credentials_do_not(pg, app_db, tmp_path, lifeboat_env):
    second = make_db(pg)
    store = tmp_path / "store"
    databases = [{"url": app_db.url, "name": "billing"}, second.url]
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    host = {"lifeboat_databases": databases, "lifeboat_backup_dir": str(store),
            "lifeboat_status_max_age_hours": {"daily": 26, "weekly": 0, "monthly": 0}}  # fmt: skip
    inventory = tmp_path / "fleet.json"
    inventory.write_text(json.dumps({"databases": {"hosts": {"db1": host}, "vars": local}}))

    proc = playbook("backup", inventory, lifeboat_env, "-vvv")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "billing daily: " in out and f"{second.name} daily: " in out
    # The registered result (printed at -v) names the databases; only URLs are masked.
    assert "database: billing" in out and f"database: {second.name}" in out
    assert "name: billing" in out  # the invocation shows the label it was given
    masked = [line.strip() for line in out.splitlines() if NO_LOG in line]
    assert masked and all(line.startswith(("url:", "- ", "database_url:")) for line in masked), (
        masked
    )
    labels = [line for line in out.splitlines() if line.strip().startswith(("database:", "name:"))]
    assert labels and not any("********" in line for line in labels), labels
    assert_no_credentials(out, app_db.url, second.url)

    proc = playbook("status", inventory, lifeboat_env, "-vvv")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    table = [line.split() for line in out.splitlines() if line.strip().startswith("db1 ")]
    assert {"billing", second.name} <= {row[1] for row in table}, out  # the DATABASE column
    assert_no_credentials(out, app_db.url, second.url)
