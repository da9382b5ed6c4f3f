"""Point-in-time restore with the pgBackRest repository in S3 (issue #15).

The session's moto server is the S3 endpoint; pgBackRest speaks HTTPS only, so
a TLS proxy (tests/s3_fixtures.py TlsProxy) sits in front of it with a
certificate from a throwaway CA, and pgBackRest verifies it with that CA
(pitr_s3_ca_file -> repo1-storage-ca-file), path-style URLs, host `localhost`.
pgbackrest.conf is written by the lifeboat_pitr role's template and must equal
the engine's rendering. Every pgbackrest call goes through a wrapper on PATH
that records its argv and environment, to prove the secret key reaches
pgBackRest only through its configuration file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from s3_fixtures import ACCESS_KEY, SECRET_KEY, TlsProxy, tls_certificates
from test_pitr import ROOT, STANZA, World, _instances, _postmasters_under, start_archiving

from lifeboat import pitr, schema, settings

PREFIX = "/lifeboat-pitr"  # repo1-path: the key prefix inside the bucket
TEMPLATE = ROOT / "roles/lifeboat_pitr/templates/etc/pgbackrest/pgbackrest.conf.j2"
SECRET = SECRET_KEY.encode()


class S3World(World):
    """test_pitr's world, its repository in a bucket behind TLS."""

    def __init__(self, root: Path, proxy: TlsProxy, bucket: str, ca: Path):
        super().__init__(root)
        self.s3 = {
            "pitr_s3_bucket": bucket,
            "pitr_s3_endpoint": proxy.endpoint,
            "pitr_s3_uri_style": "path",
            "pitr_s3_ca_file": str(ca),
            "pitr_s3_key": ACCESS_KEY,
            "pitr_s3_key_secret": SECRET_KEY,
            "pitr_repo_path": PREFIX,
        }
        self.outputs: list[str] = []  # everything lifeboat and ansible printed
        # A pgbackrest first on PATH that records how it was called.
        wrapper_dir = root / "bin"
        wrapper_dir.mkdir()
        self.calls = root / "pgbackrest-calls.log"
        self.calls.touch(mode=0o666)
        self.calls.chmod(0o666)  # written by root (lifeboat) and postgres (recovery)
        wrapper = wrapper_dir / "pgbackrest"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"{{ echo \"ARGV $(date +%s.%N) $*\"; env | sed 's/^/ENV /'; }} >> {self.calls}\n"
            f'exec {shutil.which("pgbackrest", path="/usr/bin:/bin")} "$@"\n'
        )
        wrapper.chmod(0o755)
        self.env["PATH"] = f"{wrapper_dir}:{self.env['PATH']}"

    def settings(self, url: str):
        return settings.resolve(super().settings(url).raw, self.s3)

    def cli(self, args, url, **kw):
        proc = super().cli(args, url, **kw)
        self.outputs += [proc.stdout, proc.stderr]
        return proc


def _write_config_with_the_role_template(world: S3World) -> str:
    """pgbackrest.conf as the lifeboat_pitr role writes it (its template, 0640 postgres)."""
    engine = world.settings("postgresql:///unused")
    values = {f"lifeboat_{s.name}": getattr(engine, s.name) for s in schema.SETTINGS
              if s.group == "pitr"}  # fmt: skip
    values = {k: ("" if v is None else v) for k, v in values.items()}
    values["ansible_python_interpreter"] = "/usr/bin/python3"
    extra = world.root / "role-vars.yml"
    extra.write_text(yaml.safe_dump(values))
    extra.chmod(0o600)
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    try:
        proc = subprocess.run(
            [str(ROOT / ".venv/bin/ansible"), "localhost", "-i", "localhost,", "-c", "local",
             "-m", "ansible.builtin.template", "-e", f"@{extra}",
             "-a", f"src={TEMPLATE} dest={world.conf} owner=postgres group=postgres mode=0640"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        extra.unlink()
    world.outputs += [proc.stdout, proc.stderr]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return pitr.render_config(engine)


@pytest.fixture(scope="module")
def world(pg_tmp, moto_server):
    import boto3

    # Not a skip: this test is the proof that PITR works with S3.
    assert shutil.which("pgbackrest", path="/usr/bin:/bin"), "pgbackrest is not installed"
    root = pg_tmp / "pitr-s3"
    root.mkdir()
    root.chmod(0o755)
    ca, cert, key = tls_certificates(root / "tls")
    (root / "tls").chmod(0o755)
    bucket = f"lifeboat-pitr-{os.getpid()}"
    client = boto3.client(
        "s3", endpoint_url=moto_server, region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
    )  # fmt: skip
    client.create_bucket(Bucket=bucket)
    proxy = TlsProxy(int(moto_server.rsplit(":", 1)[1]), cert, key)
    w = S3World(root, proxy, bucket, ca)
    w.client, w.bucket, w.proxy = client, bucket, proxy
    with ThreadPoolExecutor(1) as pool:  # ansible's start-up overlaps initdb
        role = pool.submit(_write_config_with_the_role_template, w)
        w.cluster.init()
        rendered = role.result()
    body = [line for line in w.conf.read_text().splitlines() if not line.startswith("#")]
    assert "\n".join(body) + "\n" == rendered  # the role and the engine agree
    assert f"repo1-storage-ca-file={ca}\n" in rendered and "repo1-type=s3\n" in rendered
    conf = w.settings("postgresql:///unused")
    # track_commit_timestamp: the exact commit time of every row
    start_archiving(w.cluster, conf, "track_commit_timestamp = on\n")
    from conftest import OWNER

    w.cluster.psql(f"CREATE DATABASE shop OWNER {OWNER}")
    # With it (archiving.py uses it when it may) a restore closes the WAL segment at
    # once instead of waiting for archive_timeout.
    w.cluster.psql(f"GRANT EXECUTE ON FUNCTION pg_switch_wal() TO {OWNER}")
    w.db("shop").sql("CREATE TABLE orders (id int PRIMARY KEY, note text NOT NULL)")
    w.db("shop").sql("INSERT INTO orders SELECT g, 'base' FROM generate_series(1, 50) g")
    started = time.monotonic()
    w.pgbackrest("stanza-create")
    w.pgbackrest("check")  # archive_command reaches the bucket
    w.pgbackrest("--type=full", "backup")
    w.setup_seconds = time.monotonic() - started
    yield w
    w.cluster.stop("immediate")
    proxy.close()
    keys = [{"Key": key} for key in _objects(w)]  # the moto server lives on: free its memory
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": keys[start : start + 1000]})


def test_restore_to_just_before_a_bad_delete_from_the_s3_repository(world):
    shop = world.db("shop")
    # One transaction every 0.3 s, each with its own commit time.
    for n in range(8):
        shop.sql(f"INSERT INTO orders SELECT g, 'tx{n}' FROM generate_series({100 * (n + 1)},"
                 f" {100 * (n + 1) + 9}) g")  # fmt: skip
        if n == 3:
            world.cluster.psql("SELECT pg_switch_wal()")  # the WAL spans several segments
        time.sleep(0.3)
    commits = shop.sql(
        "SELECT note, to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC',"
        " 'YYYY-MM-DD HH24:MI:SS.US+00') FROM orders WHERE note LIKE 'tx%'"
        " GROUP BY 1, 2 ORDER BY 2"
    ).splitlines()
    assert [line.split("|")[0] for line in commits] == [f"tx{n}" for n in range(8)]
    # Halfway between the commits of tx4 and tx5.
    target = world.cluster.psql(
        f"SELECT to_char(('{commits[4].split('|')[1]}'::timestamptz"
        f" + ('{commits[5].split('|')[1]}'::timestamptz"
        f" - '{commits[4].split('|')[1]}'::timestamptz) / 2) AT TIME ZONE 'UTC',"
        " 'YYYY-MM-DD HH24:MI:SS.US+00')"
    )
    wanted = shop.sql(
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM orders"
        f" WHERE pg_xact_commit_timestamp(xmin) <= '{target}' OR note = 'base'"
    )
    assert len(wanted.split(",")) == 50 + 5 * 10  # base and tx0..tx4
    shop.sql("DELETE FROM orders WHERE id > 20")  # the bad statement
    assert shop.sql("SELECT count(*) FROM orders") == "20"

    status = world.cli(["pitr", "status", "--json"], shop.url)
    found = json.loads(status.stdout)
    assert status.returncode == 0, status.stdout + status.stderr
    assert found["state"] == "OK", found
    assert found["newest_base_backup"]["type"] == "full" and found["base_backups"] == 1
    label = found["newest_base_backup"]["label"]
    assert found["wal_newest"] and found["last_archived_wal"] and found["window_from"]
    text = world.cli(["pitr", "status"], shop.url)
    assert f"newest base backup: {label} (full" in text.stdout, text.stdout + text.stderr
    # Base backup and WAL are objects in the bucket, none on local disk.
    keys = _objects(world)
    assert f"{PREFIX[1:]}/backup/{STANZA}/{label}/backup.manifest" in keys
    archived = [k.rsplit("/", 1)[1][:24] for k in keys if f"/archive/{STANZA}/" in k]
    assert found["wal_newest"] in archived and found["last_archived_wal"] in archived
    assert os.listdir(world.repo) == []

    dry = world.cli(["restore", "--time", target, "--dry-run"], shop.url)
    assert dry.returncode == 0 and f"base backup: {label}" in dry.stdout, dry.stdout + dry.stderr

    connections = world.proxy.connections
    started = time.monotonic()
    proc = world.cli(["restore", "--time", target, "--confirm"], shop.url)
    restore_seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"pgBackRest stanza {STANZA}" in proc.stdout and label in proc.stdout
    got = shop.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM orders")
    assert got == wanted  # every row committed by the time, none after, the DELETE undone
    assert shop.sql("SELECT count(*) FROM orders WHERE note IN ('tx5', 'tx6', 'tx7')") == "0"
    # Recovery fetched the WAL from the bucket, through TLS (the temporary
    # instance's restore_command is pgbackrest archive-get).
    calls = world.calls.read_text()
    assert " archive-get 0000" in calls and " restore" in calls
    assert world.proxy.connections > connections
    assert _instances(world.work) == [] and _postmasters_under(world.work) == []
    print(f"setup (stanza, check, full backup) {world.setup_seconds:.1f}s,"
          f" restore {restore_seconds:.1f}s")  # fmt: skip


def test_an_endpoint_the_ca_did_not_sign_is_refused(world):
    """Verification is real: with another CA's file, status fails and says why."""
    other, _, _ = tls_certificates(world.root / "other-ca")
    (world.root / "other-ca").chmod(0o755)
    conf = world.root / "wrong-ca.conf"
    text = world.conf.read_text().replace(world.s3["pitr_s3_ca_file"], str(other))
    # pgBackRest retries a failed handshake until io-timeout (60 s by default).
    conf.write_text(text.replace("[global]\n", "[global]\nio-timeout=1\n"))
    os.chown(conf, *_postgres_ids())
    conf.chmod(0o600)
    try:
        proc = world.cli(["pitr", "status"], world.db("shop").url, LIFEBOAT_PITR_CONFIG=str(conf))
    finally:
        conf.unlink()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "FAILED" in out, out
    assert "unable to verify certificate presented by 'localhost:" in out, out


def test_the_secret_key_is_only_in_the_config_file(world):
    shop = world.db("shop")
    world.cli(["pitr", "status"], shop.url)
    assert SECRET in world.conf.read_bytes()  # pgBackRest's one source of the key
    calls = world.calls.read_text()
    assert calls.count("ARGV ") >= 3, calls  # the recorder saw lifeboat's calls
    assert SECRET_KEY not in calls and ACCESS_KEY not in calls  # argv and environment
    assert "PGBACKREST_REPO1_S3_KEY" not in calls and "AWS_SECRET" not in calls
    assert SECRET_KEY not in world.cluster.psql("SHOW archive_command")
    for text in world.outputs:
        assert SECRET_KEY not in text
    # Every file the run left (logs, backups, manifests, the cluster), but the config.
    scanned, redacted = 0, False
    for path in world.root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path != world.conf:
            data = path.read_bytes()
            assert SECRET not in data, path
            scanned += 1
            if path.parent.name == "pgbr-log":
                redacted |= b"--repo1-s3-key-secret=<redacted>" in data
    assert scanned > 100 and redacted  # pgBackRest logged its options, the secret masked
    # Nor in the bucket: pgBackRest's uncompressed metadata (info files, manifests).
    for key in _objects(world):
        if not key.endswith((".zst", ".gz")):
            assert SECRET not in world.client.get_object(Bucket=world.bucket, Key=key)[
                "Body"].read(), key  # fmt: skip


def _objects(world) -> list[str]:
    pages = world.client.get_paginator("list_objects_v2").paginate(Bucket=world.bucket)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _postgres_ids() -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid
