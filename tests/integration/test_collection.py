"""The lifeboat.postgresql collection, installed the way Ansible users install it (issue 13).

The collection is built once for this module by tools/build_collection.py into
a temporary directory, installed with `ansible-galaxy collection install` into
a fresh collections path, and used from an unrelated directory whose
ansible.cfg and environment put nothing of the checkout on Ansible's paths
(library, module_utils, roles, doc fragments). A short name such as
`lifeboat_backup` must not resolve there, which proves it.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import OWNER_PASSWORD, ROOT, fingerprint

BIN = Path(sys.executable).parent
FQ = "lifeboat.postgresql"
# The role-embedded module joins plugins/modules: collection roles cannot carry modules.
MODULES = ("backup", "restore", "verify", "status", "postgresql_server_major")


def run(cmd: list[str], env: dict, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Build, install into an empty collections path; return (env, project dir, install dir)."""
    base = tmp_path_factory.mktemp("collection")
    build = base / "build"
    proc = run([sys.executable, str(ROOT / "tools" / "build_collection.py"),
                "--build-dir", str(build)], dict(os.environ), ROOT)  # fmt: skip
    tarball = Path(proc.stdout.split()[-1])
    assert tarball.name.startswith("lifeboat-postgresql-") and tarball.name.endswith(".tar.gz")

    project = base / "project"  # the user's own Ansible project: nothing of lifeboat in it
    nothing = base / "nothing"
    for d in (project, nothing):
        d.mkdir()
    (project / "ansible.cfg").write_text("[defaults]\nretry_files_enabled = false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "LIFEBOAT_"))}
    env.pop("DATABASE_URL", None)
    env.update({
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "ANSIBLE_CONFIG": str(project / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(base / "collections"),
        "ANSIBLE_LIBRARY": str(nothing),
        "ANSIBLE_MODULE_UTILS": str(nothing),
        "ANSIBLE_ROLES_PATH": str(nothing),
        "ANSIBLE_DOC_FRAGMENT_PLUGINS": str(nothing),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "LIFEBOAT_CONFIG": "/nonexistent/lifeboat.yml",
    })  # fmt: skip
    run([str(BIN / "ansible-galaxy"), "collection", "install", str(tarball),
         "-p", str(base / "collections")], env, project)  # fmt: skip
    installed = base / "collections" / "ansible_collections" / "lifeboat" / "postgresql"
    assert (installed / "MANIFEST.json").exists()
    yield env, project, installed
    shutil.rmtree(base, ignore_errors=True)


def playbook(env, project, *args) -> subprocess.CompletedProcess:
    return run([str(BIN / "ansible-playbook"), *args], env, project, check=False)


def local_inventory(project: Path, group: str, hostvars: dict) -> Path:
    path = project / f"{group}.json"
    host = dict(hostvars, ansible_connection="local", ansible_python_interpreter=sys.executable)
    path.write_text(json.dumps({group: {"hosts": {"db1": host}}}))
    return path


def test_the_checkout_is_not_on_the_path(collection):
    env, project, _ = collection
    proc = run([str(BIN / "ansible-doc"), "lifeboat_backup"], env, project, check=False)
    assert "lifeboat_backup" not in proc.stdout  # not found: only FQCNs from the collection
    assert "not found" in proc.stderr or proc.returncode != 0


def test_modules_back_up_and_restore_by_fqcn(collection, app_db, tmp_path):
    env, project, _ = collection
    store = tmp_path / "store"
    (project / "fqcn.yml").write_text(f"""
- name: Back up or restore with the collection's modules
  hosts: databases
  gather_facts: false
  tasks:
    - name: Back up the app database
      {FQ}.backup:
        database_url: "{{{{ db_url }}}}"
        backup_dir: "{{{{ store }}}}"
      when: step == 'backup'
      register: backed_up

    - name: Restore the newest backup
      {FQ}.restore:
        database_url: "{{{{ db_url }}}}"
        backup_dir: "{{{{ store }}}}"
        restore_latest: true
        skip_pre_backup: true
        confirm: true
      when: step == 'restore'
""")
    inventory = local_inventory(project, "databases", {"db_url": app_db.url, "store": str(store)})
    expected = fingerprint(app_db)

    proc = playbook(env, project, "-i", str(inventory), "fqcn.yml", "-e", "step=backup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [dump] = (store / "daily").glob("*.sql.gz")
    with gzip.open(dump) as f:
        assert b"PostgreSQL database dump" in f.read(4096)
    assert OWNER_PASSWORD not in proc.stdout + proc.stderr

    app_db.sql("DELETE FROM plots")
    assert fingerprint(app_db) != expected
    proc = playbook(env, project, "-i", str(inventory), "fqcn.yml", "-e", "step=restore")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == expected


def test_collection_playbooks_back_up_and_restore(collection, app_db, tmp_path):
    """`ansible-playbook lifeboat.postgresql.backup` is playbooks/backup.yml with its roles."""
    env, project, _ = collection
    store = tmp_path / "store"
    hostvars = {"lifeboat_database_url": app_db.url, "lifeboat_backup_dir": str(store)}
    inventory = local_inventory(project, "databases", hostvars)
    expected = fingerprint(app_db)
    proc = playbook(env, project, "-i", str(inventory), f"{FQ}.backup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list((store / "daily").glob("*.sql.gz.manifest.json"))) == 1

    app_db.sql("DELETE FROM plots")
    proc = playbook(env, project, "-i", str(inventory), f"{FQ}.restore",
                    "-e", "restore_latest=true", "-e", "confirm=true")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fingerprint(app_db) == expected


def test_provision_playbook_resolves_every_role_and_module(collection):
    """Static roles and the modules of their tasks (the role-embedded one too) resolve."""
    env, project, _ = collection
    inventory = local_inventory(project, "databases", {})
    proc = playbook(env, project, "-i", str(inventory), f"{FQ}.provision", "--list-tasks")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for task in ("postgresql_client : Ask the database servers for their version",
                 "lifeboat : Build the lifeboat wheel on the control node",
                 "backup_schedule : Schedule the backups with cron"):  # fmt: skip
        assert task in proc.stdout


def test_engine_wheel_builds_from_the_installed_collection(collection, tmp_path):
    """What provisioning copies to a host comes from the collection's own files."""
    env, project, installed = collection
    role = installed / "roles" / "lifeboat"
    # What the role's wheel task runs: build_wheel.py on lifeboat_source_dir.
    assert (
        'lifeboat_source_dir: "{{ role_path }}/../.."' in (role / "defaults/main.yml").read_text()
    )
    source_dir = role / ".." / ".."
    proc = run([sys.executable, str(role / "files" / "build_wheel.py"), str(source_dir),
                str(tmp_path / "wheels")], env, project)  # fmt: skip
    wheel = Path(proc.stdout.splitlines()[-1])
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "lifeboat = lifeboat.cli:main" in zf.read(entry).decode()
        source = zf.read("lifeboat/restore/command.py")
    assert source == (ROOT / "module_utils" / "lifeboat" / "restore" / "command.py").read_bytes()
    assert (source_dir / "requirements" / "host.txt").read_text() == (
        ROOT / "requirements" / "host.txt"
    ).read_text()


def test_ansible_doc_renders_every_module(collection):
    env, project, installed = collection
    names = [f"{FQ}.{name}" for name in MODULES]
    docs = json.loads(run([str(BIN / "ansible-doc"), "--json", *names], env, project).stdout)
    assert set(docs) == set(names)
    for name in MODULES:
        doc = docs[f"{FQ}.{name}"]["doc"]
        assert doc["filename"].startswith(str(installed))
        assert doc["options"], doc
        if name in ("backup", "restore", "verify"):  # S3 options: the collection's doc fragment
            assert "s3_bucket" in doc["options"]
        assert f"{FQ}.{name}:" in docs[f"{FQ}.{name}"]["examples"]  # EXAMPLES use the FQCN
    text = run([str(BIN / "ansible-doc"), *names], env, project).stdout
    assert all(f"MODULE {name}" in text.replace("*", "") for name in names), text[:2000]


def test_ansible_doc_renders_the_roles_argument_specs(collection):
    env, project, _ = collection
    proc = run([str(BIN / "ansible-doc"), "-t", "role", "--json", f"{FQ}.lifeboat"], env, project)
    entry_points = json.loads(proc.stdout)[f"{FQ}.lifeboat"]["entry_points"]
    assert {"main", "backup", "restore", "verify", "status"} <= set(entry_points)
    assert entry_points["backup"]["options"]["lifeboat_retention"]["type"] == "dict"
    assert "lifeboat_source_dir" in entry_points["main"]["options"]
    text = run([str(BIN / "ansible-doc"), "-t", "role", f"{FQ}.lifeboat"], env, project).stdout
    assert "lifeboat_backup_dir" in text
    listing = run([str(BIN / "ansible-doc"), "-t", "role", "-l", FQ], env, project).stdout
    for role in ("awscli", "backup_schedule", "lifeboat", "postgresql_client"):
        assert f"{FQ}.{role}" in listing
