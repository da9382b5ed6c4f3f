"""A changed backup never runs (issue 11, item 1), tried as an attacker who can
write to the store would: payloads that leave a trace if psql ran them, with the
manifest's size and sha256 updated to match.

Two layers, each tested alone: without a manifest key the stream guard
(sqlguard.py) refuses what pg_dump never writes; with a key (manifest_key.py)
a file and manifest changed together are refused even when the change is
plain SQL. Through the CLI (restore, verify, verify --deep), S3, age
encryption and playbooks/verify.yml; genuine backups still restore, and old
backups still verify after a key rotation.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, fingerprint, make_db, make_realistic_db, run_cli
from realistic_restore import superuser_url

from lifeboat import naming

TRAILER = b"--\n-- PostgreSQL database dump complete\n--\n"
MARKER = "-- lifeboat test marker --"


def the_backup(backup_dir: Path, type_: str = "daily") -> Path:
    found = sorted(p for p in (backup_dir / type_).iterdir() if naming.parse(p.name))
    return found[-1]


def manifest_path(dump: Path) -> Path:
    return Path(f"{dump}.manifest.json")


def new_key(path: Path, keys: int = 1) -> Path:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    lines = [base64.b64encode(os.urandom(32)).decode() for _ in range(keys)]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def inject(sql: bytes, payload: bytes) -> bytes:
    """The payload just before the trailer: header, trailer and row counts still check."""
    at = sql.rindex(TRAILER)
    return sql[:at] + payload + b"\n" + sql[at:]


def rewrite(dump: Path, data: bytes, manifest_change=None) -> None:
    """Replace the file and update its manifest's size and sha256 (what verify checked)."""
    dump.write_bytes(data)
    manifest = json.loads(manifest_path(dump).read_text())
    manifest["size"] = len(data)
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    if manifest_change:
        manifest_change(manifest)
    manifest_path(dump).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def tamper_gzip(dump: Path, payload: bytes, manifest_change=None) -> None:
    rewrite(
        dump, gzip.compress(inject(gzip.decompress(dump.read_bytes()), payload)), manifest_change
    )


@pytest.fixture
def victim(pg):
    """Another database on the same server, with rows a \\connect payload would delete."""
    return make_db(pg)


def payloads(trace: Path, victim) -> dict[str, bytes]:
    return {
        "shell": f"\\! touch {trace}\n".encode(),
        "connect": f"\\connect {victim.name}\nDELETE FROM public.users;\n".encode(),
        "passfile": f'\\set pw `cat "$PGPASSFILE" > {trace}; echo x`\n'.encode(),
        "include": f"\\o {trace}\nSELECT 1;\n".encode(),
        "copy program": f"COPY public.users (id) FROM PROGRAM 'touch {trace}';\n".encode(),
    }


def assert_refused(proc, *why: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    for text in why:
        assert text in out, out


def scratch_dbs(pg, name: str) -> list[str]:
    return pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{name}\\_\\_%'").split()


# --------------------------------------------------------------- layer 1: the stream guard


@pytest.mark.parametrize("kind", ["shell", "connect", "passfile", "include", "copy program"])
def test_meta_commands_never_run_in_restore_verify_or_drill(
    kind, pg, backup_dir, lifeboat_env, tmp_path, victim
):
    # The superuser restores: COPY ... FROM PROGRAM would run if it reached the server.
    db = make_db(pg)
    env = dict(lifeboat_env, DATABASE_URL=superuser_url(db))
    run_cli(["backup"], env, check=True)
    dump = the_backup(backup_dir)
    trace = tmp_path / "trace"
    tamper_gzip(dump, payloads(trace, victim)[kind])
    before, victim_before = fingerprint(db), fingerprint(victim)
    command = "COPY" if kind == "copy program" else "meta-command"

    assert_refused(run_cli(["verify", str(dump)], env), "was refused before psql ran it", command)
    assert_refused(run_cli(["verify", str(dump), "--deep"], env), command)
    assert_refused(
        run_cli(["restore", "--file", str(dump), "--confirm"], env),
        "was refused before psql ran it",
        "line ",
        command,
    )
    assert not trace.exists()
    assert fingerprint(victim) == victim_before and fingerprint(db) == before
    assert scratch_dbs(pg, db.name) == []


def test_stock_dump_without_manifest_goes_through_the_guard(app_db, lifeboat_env, tmp_path):
    stock = tmp_path / "stock.sql"
    subprocess.run(
        ["pg_dump", "--no-password", f"--dbname={app_db.url}", "-f", str(stock)], check=True
    )
    trace = tmp_path / "trace"
    stock.write_bytes(inject(stock.read_bytes(), f"\\! touch {trace}\n".encode()))
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    before = fingerprint(app_db)
    proc = run_cli(["restore", "--file", str(stock), "--confirm"], env)
    assert_refused(proc, "meta-command \\!")
    assert not trace.exists() and fingerprint(app_db) == before


# --------------------------------------------------------------- layer 2: authenticated manifests


@pytest.fixture
def keyed(app_db, lifeboat_env, tmp_path) -> dict:
    key = new_key(tmp_path / "keys" / "manifest.key")
    return dict(lifeboat_env, DATABASE_URL=app_db.url, LIFEBOAT_MANIFEST_KEY_FILE=str(key))


def test_file_and_manifest_changed_together_are_refused(app_db, keyed, backup_dir, tmp_path, pg):
    run_cli(["backup"], keyed, check=True)
    dump = the_backup(backup_dir)
    mac = json.loads(manifest_path(dump).read_text())["mac"]
    assert mac["alg"] == "HMAC-SHA256" and len(mac["value"]) == 64
    proc = run_cli(["verify", str(dump)], keyed, check=True)
    assert f"manifest authenticated (HMAC-SHA256, key {mac['key_id']})" in proc.stdout

    # Plain SQL the guard lets through: only the MAC can tell.
    comment = b"COMMENT ON TABLE public.users IS 'planted';\n"
    tamper_gzip(dump, comment)
    before = fingerprint(app_db)
    why = f"The manifest of {dump} was changed or written with another key"
    assert_refused(run_cli(["verify", str(dump)], keyed), why, "does not verify")
    assert_refused(run_cli(["verify", str(dump), "--deep"], keyed), why)
    assert_refused(run_cli(["restore", "--file", str(dump), "--confirm"], keyed), why)
    assert_refused(run_cli(["restore", "--latest", "--confirm"], keyed), why)
    assert fingerprint(app_db) == before and scratch_dbs(pg, app_db.name) == []
    assert pg.psql("SELECT obj_description('public.users'::regclass)", db=app_db.name) == ""

    # Signed again with the attacker's own key: not in the keyring.
    other = new_key(tmp_path / "attacker" / "manifest.key")
    sealed = json.loads(manifest_path(dump).read_text())
    from lifeboat import manifest_key

    forged = manifest_key.load(str(other)).seal(sealed)
    manifest_path(dump).write_text(json.dumps(forged))
    assert_refused(run_cli(["verify", str(dump)], keyed), why, "is not in")

    # The MAC removed: refused unless unsigned backups are allowed on purpose.
    forged.pop("mac")
    manifest_path(dump).write_text(json.dumps(forged))
    assert_refused(run_cli(["verify", str(dump), "--deep"], keyed), "is not signed")
    assert_refused(run_cli(["restore", "--file", str(dump), "--confirm"], keyed), "is not signed")
    proc = run_cli(["verify", str(dump), "--allow-unsigned"], keyed, check=True)
    assert "manifest is not signed (allowed by allow_unsigned)" in proc.stdout


def test_a_manifest_moved_to_another_name_is_refused(keyed, backup_dir):
    run_cli(["backup"], keyed, check=True)
    run_cli(["backup", "--type", "weekly"], keyed, check=True)
    daily, weekly = the_backup(backup_dir), the_backup(backup_dir, "weekly")
    daily.write_bytes(weekly.read_bytes())
    manifest_path(daily).write_text(manifest_path(weekly).read_text())
    assert_refused(run_cli(["verify", str(daily)], keyed), f"not of {daily.name}")


def test_key_file_must_be_private(keyed, tmp_path):
    key = Path(keyed["LIFEBOAT_MANIFEST_KEY_FILE"])
    for mode in (0o640, 0o604, 0o660):
        key.chmod(mode)
        proc = run_cli(["backup"], keyed)
        assert_refused(proc, "accessible to other users", f"chmod 600 {key}")
    key.chmod(0o600)
    key.write_text("too short\n")
    assert_refused(run_cli(["backup"], keyed), "not a key of at least 32 bytes")


def test_key_rotation_keeps_old_backups_verifiable(keyed, backup_dir, tmp_path):
    key = Path(keyed["LIFEBOAT_MANIFEST_KEY_FILE"])
    run_cli(["backup"], keyed, check=True)
    old = the_backup(backup_dir)
    old_id = json.loads(manifest_path(old).read_text())["mac"]["key_id"]

    key.write_text(key.read_text() + base64.b64encode(os.urandom(32)).decode() + "\n")
    run_cli(["backup", "--type", "weekly"], keyed, check=True)
    new = the_backup(backup_dir, "weekly")
    new_id = json.loads(manifest_path(new).read_text())["mac"]["key_id"]
    assert new_id != old_id  # the newest key signs
    for dump in (old, new):
        run_cli(["verify", str(dump)], keyed, check=True)
    run_cli(["verify", str(old), "--deep"], keyed, check=True)

    # Retiring the old key retires its backups, with a message saying why.
    key.write_text(key.read_text().splitlines()[-1] + "\n")
    assert_refused(run_cli(["verify", str(old)], keyed), f"key id '{old_id}' is not in")
    run_cli(["verify", str(new)], keyed, check=True)


BACKSLASH_FUNCS = r"""
CREATE FUNCTION public.shell_like() RETURNS text LANGUAGE plpgsql AS $body$
BEGIN
  RETURN '
\! echo not a command
\connect elsewhere
';
END
$body$;
CREATE TABLE public.notes (id int, body text);
INSERT INTO public.notes VALUES (1, E'line\n\\! not a command\n\\.\n'), (2, E'C:\\dir\\');
COMMENT ON TABLE public.notes IS '
\! a comment line';
"""


def test_genuine_backups_still_restore(pg, backup_dir, lifeboat_env, tmp_path):
    key = new_key(tmp_path / "keys" / "manifest.key")
    funcs = make_db(pg)
    funcs.sql(BACKSLASH_FUNCS)
    realistic = make_realistic_db(pg)
    for db in (funcs, realistic):
        env = dict(
            lifeboat_env, DATABASE_URL=superuser_url(db), LIFEBOAT_MANIFEST_KEY_FILE=str(key)
        )
        run_cli(["backup"], env, check=True)
        dump = sorted((backup_dir / "daily").glob(f"{db.name}-*.sql.gz"))[-1]
        assert (
            b"\n\\! echo not a command\n" in gzip.decompress(dump.read_bytes()) or db is realistic
        )
        before = fingerprint(db, superuser=True)
        run_cli(["verify", str(dump), "--deep"], env, check=True)
        proc = run_cli(["restore", "--file", str(dump), "--confirm"], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert fingerprint(db, superuser=True) == before
    assert funcs.sql("SELECT public.shell_like()") == "\\! echo not a command\n\\connect elsewhere"


# --------------------------------------------------------------- through S3, age and the playbook


def test_tampered_s3_copy_is_refused(app_db, lifeboat_env, backup_dir, s3, tmp_path, victim):
    key = new_key(tmp_path / "keys" / "manifest.key")
    env = dict(lifeboat_env, **s3.env, DATABASE_URL=app_db.url)
    run_cli(["backup"], env, check=True)
    [obj] = [k for k in s3.objects() if naming.parse(k.rsplit("/", 1)[-1])]
    url = f"s3://{s3.bucket}/{obj}"
    trace = tmp_path / "trace"
    before, victim_before = fingerprint(app_db), fingerprint(victim)

    def tamper(payload: bytes, keep_mac=True) -> None:
        data = gzip.compress(inject(gzip.decompress(s3.get(obj)), payload))
        manifest = json.loads(s3.get(obj + naming.MANIFEST_SUFFIX))
        manifest.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        s3.put(obj, data)
        s3.put(obj + naming.MANIFEST_SUFFIX, json.dumps(manifest).encode())

    # Layer 1 (no key): the guard.
    tamper(payloads(trace, victim)["connect"])
    assert_refused(run_cli(["verify", url], env), "meta-command \\connect")
    assert_refused(run_cli(["verify", url, "--deep"], env), "meta-command \\connect")
    assert_refused(run_cli(["restore", "--from-s3", url, "--confirm"], env), "\\connect")
    assert fingerprint(victim) == victim_before

    # Layer 2: a key configured, a fresh backup, changed in the bucket with plain SQL.
    keyed = dict(env, LIFEBOAT_MANIFEST_KEY_FILE=str(key))
    run_cli(["backup", "--type", "weekly"], keyed, check=True)
    [obj] = [k for k in s3.objects("backups/weekly/") if naming.parse(k.rsplit("/", 1)[-1])]
    url = f"s3://{s3.bucket}/{obj}"
    run_cli(["verify", url], keyed, check=True)
    tamper(b"COMMENT ON TABLE public.users IS 'planted';\n")
    why = f"The manifest of {url} was changed or written with another key"
    assert_refused(run_cli(["verify", url], keyed), why)
    assert_refused(run_cli(["verify", url, "--deep"], keyed), why)
    assert_refused(run_cli(["restore", "--from-s3", url, "--confirm"], keyed), why)
    assert not trace.exists() and fingerprint(app_db) == before


def test_encrypted_backup_rewritten_with_the_public_recipient_is_refused(
    app_db, lifeboat_env, backup_dir, tmp_path, victim
):
    from test_encryption import keygen

    folder = tmp_path / "age"
    folder.mkdir(mode=0o700)
    identity = folder / "id.txt"
    recipient = keygen(identity)
    env = dict(
        lifeboat_env,
        DATABASE_URL=app_db.url,
        LIFEBOAT_ENCRYPT_RECIPIENTS=recipient,
        LIFEBOAT_ENCRYPT_IDENTITY_FILE=str(identity),
    )
    run_cli(["backup"], env, check=True)
    dump = the_backup(backup_dir)
    trace = tmp_path / "trace"

    def reencrypt(payload: bytes) -> bytes:
        # Anyone can do this: the recipient is a public key.
        plain = subprocess.run(
            ["age", "-d", "-i", str(identity)], input=dump.read_bytes(), capture_output=True
        ).stdout
        sql = inject(gzip.decompress(plain), payload)
        return subprocess.run(
            ["age", "-r", recipient], input=gzip.compress(sql), capture_output=True, check=True
        ).stdout

    before = fingerprint(app_db)
    rewrite(dump, reencrypt(f"\\! touch {trace}\n".encode()))
    assert_refused(run_cli(["verify", str(dump)], env), "meta-command \\!")
    assert_refused(run_cli(["verify", str(dump), "--deep"], env), "meta-command \\!")
    assert_refused(run_cli(["restore", "--file", str(dump), "--confirm"], env), "\\!")
    assert not trace.exists() and fingerprint(app_db) == before

    # With a manifest key, plain SQL in a valid age file is refused too.
    key = new_key(tmp_path / "keys" / "manifest.key")
    keyed = dict(env, LIFEBOAT_MANIFEST_KEY_FILE=str(key))
    run_cli(["backup", "--type", "weekly"], keyed, check=True)
    dump = the_backup(backup_dir, "weekly")
    rewrite(dump, reencrypt(b"COMMENT ON TABLE public.users IS 'planted';\n"))
    why = "was changed or written with another key"
    assert_refused(run_cli(["verify", str(dump), "--deep"], keyed), why)
    assert_refused(run_cli(["restore", "--file", str(dump), "--confirm"], keyed), why)
    assert fingerprint(app_db) == before


def playbook(env: dict, *args: str) -> subprocess.CompletedProcess:
    env = dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        ["ansible-playbook", "playbooks/verify.yml", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_verify_playbook_refuses_tampered_backups(app_db, lifeboat_env, backup_dir, tmp_path):
    key = new_key(tmp_path / "keys" / "manifest.key")
    env = dict(lifeboat_env, DATABASE_URL=app_db.url)
    where = ("-e", f"lifeboat_backup_dir={backup_dir}")
    run_cli(["backup"], env, check=True)
    trace = tmp_path / "trace"
    tamper_gzip(the_backup(backup_dir), f"\\! touch {trace}\n".encode())
    proc = playbook(env, *where)
    assert proc.returncode != 0 and "was refused before psql ran it" in proc.stdout, proc.stdout
    assert not trace.exists()

    keyed = dict(env, LIFEBOAT_MANIFEST_KEY_FILE=str(key))
    run_cli(["backup", "--type", "weekly"], keyed, check=True)
    proc = playbook(keyed, *where, "-e", "verify_type=weekly")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tamper_gzip(the_backup(backup_dir, "weekly"), b"COMMENT ON TABLE public.users IS 'x';\n")
    proc = playbook(keyed, *where, "-e", "verify_type=weekly")
    assert proc.returncode != 0, proc.stdout
    assert "was changed or written with another key" in proc.stdout, proc.stdout
    assert key.read_text().strip() not in proc.stdout + proc.stderr  # the key never shows
