"""Notifications, backup log and metrics against real servers.

A real SMTP server (aiosmtpd) and a real HTTP server (Slack and the generic
webhook) on loopback receive what a backup sends; every message is checked
for content and for the absence of any secret.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import socket
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import OWNER_PASSWORD, ROOT, make_db, run_cli

from lifeboat import backup, metrics, monitor, notify, settings

SMTP_USER = "lifeboat-mailer"
SMTP_PASSWORD = "smtp-s3cret-Pa55"
SLACK_TOKEN = "XOXB-slack-token-0123456789"
HOOK_TOKEN = "hook-token-9876543210"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

# aiosmtpd warns about AUTH without TLS; our plain server is on loopback only.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


# --- servers -------------------------------------------------------------------------------


class Mailbox:
    """aiosmtpd handler: keeps every message it accepts."""

    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes = []
        self.received = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(parsed)
        self.received.set()
        return "250 Message accepted"


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp():
    """A plain SMTP server on loopback that requires AUTH (allowed without TLS on loopback)."""
    box = Mailbox()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=_authenticator,
        auth_require_tls=False,
        auth_required=True,
    )
    controller.start()
    box.port = controller.port
    yield box
    controller.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, trusted through SSL_CERT_FILE."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class Hooks(ThreadingHTTPServer):
    """Slack and webhook receiver: records (path, json body) of every POST."""

    def __init__(self):
        self.posts: list[tuple[str, dict]] = []
        self.status = 200
        super().__init__(("127.0.0.1", 0), _HookHandler)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bodies(self, prefix: str) -> list[dict]:
        return [body for path, body in self.posts if path.startswith(prefix)]


class _HookHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(length))
        assert self.headers["Content-Type"] == "application/json"
        self.server.posts.append((self.path, body))
        self.send_response(self.server.status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def hooks():
    server = Hooks()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def slack_url(hooks: Hooks) -> str:
    return f"{hooks.base}/services/T000/B000/{SLACK_TOKEN}"


def hook_url(hooks: Hooks) -> str:
    return f"{hooks.base}/hook?token={HOOK_TOKEN}"


def notify_settings(db_url: str, backup_dir, smtp_box=None, hooks=None, **extra):
    layer = {"database_url": db_url, "backup_dir": str(backup_dir)}
    if smtp_box is not None:
        layer.update(
            notify_email=["oncall@example.com", "dba@example.com"],
            smtp_host="127.0.0.1",
            smtp_port=smtp_box.port,
            smtp_user=SMTP_USER,
            smtp_password=SMTP_PASSWORD,
            smtp_sender="backups@example.com",
        )
    if hooks is not None:
        layer.update(slack_webhook_url=slack_url(hooks), webhook_url=hook_url(hooks))
    layer.update(extra)
    return settings.resolve(layer)


def secrets(db_url: str) -> list[str]:
    encoded = urllib.parse.urlsplit(db_url).password
    return [OWNER_PASSWORD, encoded, SMTP_PASSWORD, SLACK_TOKEN, HOOK_TOKEN, AWS_SECRET]


def assert_no_secret(blob: str, db_url: str) -> None:
    for secret in secrets(db_url):
        assert secret not in blob, f"secret leaked: {secret[:4]}..."


def all_content(box: Mailbox | None, hooks: Hooks | None) -> str:
    blobs = []
    if box is not None:
        blobs += [env.content.decode(errors="replace") for env in box.envelopes]
    if hooks is not None:
        blobs += [json.dumps(body) for _, body in hooks.posts]
    return "\n".join(blobs)


# --- tests ---------------------------------------------------------------------------------


def test_successful_backup_emails_and_posts_to_slack_and_webhook(
    app_db, backup_dir, smtp, hooks, monkeypatch
):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    config = notify_settings(app_db.url, backup_dir, smtp, hooks)
    [result] = backup.run(config)
    assert result.ok, result.summary()
    assert result.warnings == []

    [message] = smtp.messages
    host = socket.gethostname()
    assert message["Subject"] == f"[lifeboat] OK: backup {app_db.name} daily on {host}"
    assert message["To"] == "oncall@example.com, dba@example.com"
    assert message["From"] == "backups@example.com"
    assert sorted(smtp.envelopes[0].rcpt_tos) == ["dba@example.com", "oncall@example.com"]
    body = message.get_content()
    for expected in (f"Database: {app_db.name}", "Type: daily", f"File: {result.file}",
                     f"({result.size} bytes)", f"Host: {socket.gethostname()}", "Duration: ",
                     "Result: success"):  # fmt: skip
        assert expected in body

    [slack] = hooks.bodies("/services/")
    assert set(slack) == {"text"}
    assert slack["text"].startswith(":white_check_mark: *OK: backup")
    assert result.file in slack["text"]

    [hook] = hooks.bodies("/hook")
    assert hook["kind"] == "backup" and hook["ok"] is True and hook["result"] == "success"
    assert hook["database"] == app_db.name and hook["type"] == "daily"
    assert hook["file"] == result.file and hook["size"] == result.size
    assert hook["host"] == socket.gethostname() and hook["duration"] > 0
    assert_no_secret(all_content(smtp, hooks), app_db.url)


def test_unreachable_database_notifies_with_error_and_hint(pg, backup_dir, smtp, hooks):
    # A closed port: the failure happens before any dump starts.
    url = pg.url("app_owner", OWNER_PASSWORD, "nowhere").replace(f":{pg.port}/", f":{free_port()}/")
    config = notify_settings(url, backup_dir, smtp, hooks)
    [result] = backup.run(config)
    assert not result.ok and result.error_type == "ConnectionFailed"

    [message] = smtp.messages
    assert message["Subject"].startswith("[lifeboat] FAILED: backup nowhere daily")
    body = message.get_content()
    assert "Result: FAILED" in body and "Error: Failed to connect" in body
    assert "What to do: Check that PostgreSQL is running" in body
    [slack] = hooks.bodies("/services/")
    assert slack["text"].startswith(":x: *FAILED: backup nowhere daily")
    [hook] = hooks.bodies("/hook")
    assert hook["ok"] is False and hook["error_type"] == "ConnectionFailed" and hook["hint"]
    assert_no_secret(all_content(smtp, hooks), url)


def test_notify_on_failure_only_stays_quiet_on_success(app_db, backup_dir, smtp, hooks):
    config = notify_settings(app_db.url, backup_dir, smtp, hooks, notify_on=["failure"])
    [result] = backup.run(config)
    assert result.ok and result.warnings == []
    assert smtp.messages == [] and hooks.posts == []


def test_smtp_down_keeps_a_good_backup_good_with_a_warning(app_db, backup_dir, hooks):
    config = notify_settings(
        app_db.url, backup_dir, notify_email="oncall@example.com", smtp_host="127.0.0.1",
        smtp_port=free_port(), notify_timeout=3,
    )  # fmt: skip
    [result] = backup.run(config)
    assert result.ok, result.summary()
    [warning] = result.warnings
    assert warning.startswith("Failed to send the email notification: ")
    assert "Connection refused" in warning and "lifeboat_smtp_host" in warning
    assert Path(result.file).exists()


def test_failed_notifications_do_not_hide_a_failed_backup(pg, backup_dir, hooks):
    hooks.status = 500
    url = pg.url("app_owner", OWNER_PASSWORD, "does_not_exist")
    config = notify_settings(url, backup_dir, hooks=hooks)
    [result] = backup.run(config)
    assert not result.ok and result.error
    assert len(result.warnings) == 2  # slack and the webhook both answered 500
    assert all("HTTP 500" in w for w in result.warnings)
    assert_no_secret("\n".join(result.warnings), url)


def test_secrets_in_an_error_are_redacted_on_every_channel(backup_dir, smtp, hooks, monkeypatch):
    """Even an error text that quotes secrets (a bug elsewhere) leaves redacted."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    db_url = f"postgresql://app:{urllib.parse.quote(OWNER_PASSWORD, safe='')}@127.0.0.1/app"
    config = notify_settings(db_url, backup_dir, smtp, hooks)
    event = notify.Event(
        kind="restore", database="app", ok=False,
        error=f"boom {db_url} {OWNER_PASSWORD} {SMTP_PASSWORD} {slack_url(hooks)} {AWS_SECRET}",
        hint=f"see {hook_url(hooks)}",
    )  # fmt: skip
    assert notify.send(config, event) == []
    content = all_content(smtp, hooks)
    assert "boom postgresql://app:********@127.0.0.1/app" in content
    assert_no_secret(content, db_url)


def test_starttls_and_implicit_tls_with_a_verified_certificate(
    app_db, backup_dir, certificate, monkeypatch
):
    import ssl

    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts our test CA
    for security in ("starttls", "tls"):
        box = Mailbox()
        kwargs = {"tls_context": context, "require_starttls": True}
        if security == "tls":
            # aiosmtpd does not count implicit TLS as TLS; the socket is encrypted anyway.
            kwargs = {"ssl_context": context, "auth_require_tls": False}
        controller = Controller(
            box, hostname="127.0.0.1", port=free_port(), authenticator=_authenticator,
            auth_required=True, **kwargs,
        )  # fmt: skip
        controller.start()
        try:
            box.port = controller.port
            config = notify_settings(app_db.url, backup_dir, box, smtp_security=security)
            [result] = backup.run(config)
            assert result.ok and result.warnings == [], (security, result.warnings)
            [message] = box.messages
            assert f"Database: {app_db.name}" in message.get_content()
        finally:
            controller.stop()


def test_credentials_over_plain_smtp_to_a_remote_relay_are_refused(app_db, backup_dir):
    with pytest.raises(settings.ConfigError, match="unencrypted") as err:
        notify_settings(
            app_db.url, backup_dir, notify_email="a@example.com", smtp_host="smtp.example.com",
            smtp_user="u", smtp_password="p",
        )  # fmt: skip
    assert "starttls" in err.value.hint


def test_backup_log_and_metrics_cover_every_run(app_db, pg, backup_dir, tmp_path):
    log_file = tmp_path / "log" / "lifeboat.log"
    prom_dir = tmp_path / "textfile"
    other = make_db(pg, seed=False)
    config = notify_settings(
        app_db.url, backup_dir, log_file=str(log_file), log_format="json",
        metrics_dir=str(prom_dir),
    )  # fmt: skip
    [ok] = backup.run(config)
    broken = notify_settings(
        other.url.replace(f":{pg.port}/", f":{free_port()}/"), backup_dir,
        log_file=str(log_file), log_format="json", metrics_dir=str(prom_dir),
    )  # fmt: skip
    [bad] = backup.run(broken, "weekly")
    assert ok.ok and not bad.ok

    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    events = [line["event"] for line in lines if "event" in line]
    assert [(e["database"], e["type"], e["result"]) for e in events] == [
        (app_db.name, "daily", "success"), (other.name, "weekly", "failure")]  # fmt: skip
    assert any(line["message"].startswith("backup started") for line in lines)
    assert oct(log_file.stat().st_mode & 0o777) == "0o640"
    assert_no_secret(log_file.read_text(), app_db.url)

    prom = (prom_dir / "lifeboat.prom").read_text()
    labels = f'database="{app_db.name}",type="daily"'
    assert f"lifeboat_backup_last_ok{{{labels}}} 1" in prom
    assert f"lifeboat_backup_last_size_bytes{{{labels}}} {ok.size}" in prom
    assert f'lifeboat_backup_last_ok{{database="{other.name}",type="weekly"}} 0' in prom
    assert f'lifeboat_backup_last_success_timestamp_seconds{{database="{other.name}"' not in prom
    assert prom.count("# TYPE lifeboat_backup_last_ok gauge") == 1
    assert [p.name for p in prom_dir.iterdir()] == ["lifeboat.prom"]  # no temporary left
    # The state that status and metrics read, one file per database and type.
    states = monitor.read_states(str(backup_dir))
    assert states[(app_db.name, "daily")]["last_success_file"] == ok.file
    assert states[(other.name, "weekly")]["last_error_type"] == "ConnectionFailed"
    assert metrics.render(states) == prom


def test_cli_reads_the_guides_variables_and_logs_to_the_file(
    app_db, backup_dir, smtp, hooks, lifeboat_env, tmp_path
):
    log_file = tmp_path / "lifeboat.log"
    env = dict(
        lifeboat_env,
        DATABASE_URL=app_db.url,
        BACKUP_NOTIFICATION_EMAIL="admin@plotzed.example",
        SLACK_WEBHOOK_URL=slack_url(hooks),
        LIFEBOAT_SMTP_HOST="127.0.0.1",
        LIFEBOAT_SMTP_PORT=str(smtp.port),
        LIFEBOAT_SMTP_USER=SMTP_USER,
        LIFEBOAT_SMTP_PASSWORD=SMTP_PASSWORD,
        LIFEBOAT_LOG_FILE=str(log_file),
    )
    proc = run_cli(["backup"], env, check=True)
    [message] = smtp.messages
    assert message["To"] == "admin@plotzed.example"
    [slack] = hooks.bodies("/services/")
    assert app_db.name in slack["text"]
    text = log_file.read_text()
    assert f"lifeboat INFO backup ok: {app_db.name} daily: " in text
    assert "notification sent: email" in text and "notification sent: slack" in text
    assert_no_secret(text + proc.stdout + proc.stderr + all_content(smtp, hooks), app_db.url)

    # A configuration broken before any database is known still reaches people.
    env.pop("DATABASE_URL")
    proc = run_cli(["backup"], env)
    assert proc.returncode == 2 and "No database is configured" in proc.stderr
    assert len(smtp.messages) == 2
    assert "No database is configured" in smtp.messages[1].get_content()
    assert "backup failed: (configuration) daily" in log_file.read_text()


def test_playbook_passes_notification_settings_and_hides_secrets(
    app_db, backup_dir, hooks, lifeboat_env, tmp_path
):
    env = dict(
        lifeboat_env,
        DATABASE_URL=app_db.url,
        SLACK_WEBHOOK_URL=slack_url(hooks),
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="0",
    )
    proc = subprocess.run(
        ["ansible-playbook", "playbooks/backup.yml", "-v",
         "-e", f"lifeboat_backup_dir={backup_dir}",
         "-e", f"lifeboat_webhook_url={hook_url(hooks)}",
         "-e", '{"lifeboat_notify_on": ["failure"]}',
         "-e", f"lifeboat_log_file={tmp_path}/lifeboat.log",
         "-e", f"lifeboat_metrics_dir={tmp_path}/textfile"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert hooks.posts == []  # success, and only failures notify
    # The module logs and exports like the CLI: same engine.
    assert f"INFO backup ok: {app_db.name} daily: " in (tmp_path / "lifeboat.log").read_text()
    assert "lifeboat_backup_last_ok{" in (tmp_path / "textfile" / "lifeboat.prom").read_text()
    proc = subprocess.run(
        ["ansible-playbook", "playbooks/backup.yml", "-v",
         "-e", f"lifeboat_backup_dir={backup_dir}", "-e", f"lifeboat_webhook_url={hook_url(hooks)}",
         "-e", "lifeboat_database_url=postgresql://app_owner@127.0.0.1:1/gone"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0
    assert [b["database"] for b in hooks.bodies("/hook")] == ["gone"]
    assert [b["text"][:12] for b in hooks.bodies("/services/")] == [":x: *FAILED:"]
    assert_no_secret(proc.stdout + proc.stderr, app_db.url)

    # No database configured at all: the module fails and still notifies.
    env.pop("DATABASE_URL")
    proc = subprocess.run(
        ["ansible-playbook", "playbooks/backup.yml", "-e", f"lifeboat_backup_dir={backup_dir}",
         "-e", f"lifeboat_webhook_url={hook_url(hooks)}"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0 and "DATABASE_URL" in proc.stdout
    last = hooks.bodies("/hook")[-1]
    assert last["database"] == "(configuration)" and "No database is configured" in last["error"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_before_the_dump_notifies(app_db, tmp_path, hooks):
    root = tmp_path / "tiny"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root)], check=True)
    try:
        fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill it up completely
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        config = notify_settings(app_db.url, root / "backups", hooks=hooks)
        [result] = backup.run(config)
        assert not result.ok and result.error_type == "DiskFull"
        [hook] = hooks.bodies("/hook")
        assert hook["error_type"] == "DiskFull" and "df -h" in hook["hint"]
        # The run state could not be saved either: said, not hidden.
        assert any("Failed to save the run state" in w for w in result.warnings)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_restore_playbook_notifies_and_hides_secrets(app_db, backup_dir, hooks, lifeboat_env):
    env = dict(lifeboat_env, DATABASE_URL=app_db.url, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    common = ["-e", f"lifeboat_backup_dir={backup_dir}",
              "-e", f"lifeboat_webhook_url={hook_url(hooks)}"]  # fmt: skip
    run = [ROOT / ".venv" / "bin" / "lifeboat", "backup", "--backup-dir", str(backup_dir)]
    subprocess.run(run, env=env, check=True, capture_output=True)
    proc = subprocess.run(
        ["ansible-playbook", "playbooks/restore.yml", *common,
         "-e", "restore_latest=true", "-e", "confirm=true"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [event] = [b for b in hooks.bodies("/hook") if b["kind"] == "restore"]
    assert event["database"] == app_db.name and event["ok"] is True
    assert_no_secret(json.dumps(hooks.bodies("/hook")), app_db.url)
