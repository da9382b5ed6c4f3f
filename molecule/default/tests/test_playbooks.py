"""What side_effect.yml's run of the operator's playbooks left on the hosts.

The playbooks ran through Ansible with each host's login (db1: `admin` with
sudo; db2: root on a host without sudo), as molecule.yml describes; their own
assertions checked the restored data. Here: the platforms are the supported
ones, and the store holds what backup.yml and restore.yml wrote, owned by the
backup user (the playbooks became it).
"""

from __future__ import annotations

import pytest

STORE = "/var/backups/lifeboat"
HOSTS = {
    "lifeboat-db1": {"debian": "12", "login": "admin", "user": "lifeboat",
                     "databases": ["pitrshop", "plotzed", "reports"], "restored": True},
    "lifeboat-db2": {"debian": "13", "login": "root", "user": "postgres",
                     "databases": ["ledger"], "restored": False},  # see side_effect.yml
}  # fmt: skip


@pytest.fixture
def spec(host):
    return HOSTS[host.backend.get_hostname()]


def test_platform_is_a_supported_debian(host, spec):
    release = host.file("/etc/os-release").content_string
    assert f'VERSION_ID="{spec["debian"]}"' in release


def test_logins_are_what_the_scenario_claims(host, spec):
    if spec["login"] == "admin":
        assert host.user("admin").exists
        assert host.run("runuser -u admin -- sudo -n true").rc == 0
    else:
        assert not host.exists("sudo")  # root login, no sudo: provision needed none


def test_backup_playbooks_wrote_every_type_as_the_backup_user(host, spec):
    kinds = ["daily", "weekly", "monthly"] + (["pre-restore"] if spec["restored"] else [])
    for kind in kinds:
        folder = f"{STORE}/{kind}"
        names = host.run(f"ls {folder}").stdout.split()
        for db in spec["databases"]:
            mine = [n for n in names if n.startswith(f"{db}-{kind}-backup-")]
            assert mine, (kind, db, names)
            newest = host.file(f"{folder}/{sorted(mine)[-1]}")
            assert (newest.user, newest.mode) == (spec["user"], 0o600)
