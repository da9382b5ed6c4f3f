"""Notifications: email over SMTP, a Slack incoming webhook, a generic JSON webhook.

One entry point for every part of lifeboat: `send(settings, event)` after a
backup, a restore or a verification. It never raises: a channel that cannot
be reached comes back as a warning string for the caller's result, so a
notification can neither turn a good backup into a failure nor hide a bad one.
Content is redacted: no password, credential-bearing URL, webhook URL or AWS
key ever leaves in a message.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage

from .conninfo import ConnInfo, redact
from .errors import ConfigError
from .units import human_size, iso

log = logging.getLogger("lifeboat")

KINDS = ("backup", "restore", "verify", "pitr")  # pitr: a change of state (pitr/alert.py)
OUTCOMES = ("success", "failure")
SECURITY = ("none", "starttls", "tls")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}
# Environment variables whose values must never appear in a message.
SECRET_ENVIRONMENT = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "PGPASSWORD",
    "DATABASE_URL",
    "SLACK_WEBHOOK_URL",
)


@dataclass
class Event:
    """What happened, for people and machines. `ok` False means `error`/`hint` say why."""

    kind: str
    database: str
    ok: bool
    type: str = ""
    host: str = field(default_factory=socket.gethostname)
    file: str = ""
    size: int = 0
    duration: float = 0.0
    error: str = ""
    hint: str = ""
    error_type: str = ""
    warnings: list[str] = field(default_factory=list)
    time: str = field(default_factory=lambda: iso(datetime.now(timezone.utc)))
    details: dict = field(default_factory=dict)  # e.g. a restore's target, a drill's RTO

    @classmethod
    def from_result(cls, kind: str, result, **extra) -> Event:
        """An event from anything shaped like backup.Result."""
        values = {
            name: getattr(result, name)
            for name in (
                "database",
                "ok",
                "type",
                "file",
                "size",
                "duration",
                "error",
                "hint",
                "error_type",
            )
            if hasattr(result, name)
        }
        values["warnings"] = list(getattr(result, "warnings", []))
        values.update(extra)
        return cls(kind=kind, **values)

    @property
    def outcome(self) -> str:
        return "success" if self.ok else "failure"

    def title(self) -> str:
        kind_type = self.type if self.type != self.kind else ""  # a restore's state type
        what = " ".join(filter(None, [self.kind, self.database, kind_type]))
        return f"{'OK' if self.ok else 'FAILED'}: {what} on {self.host}"

    def lines(self) -> list[str]:
        """The message body: the same facts for every channel."""
        out = [
            f"Result: {'success' if self.ok else 'FAILED'}",
            f"Host: {self.host}",
            f"Database: {self.database}",
        ]
        if self.type:
            out.append(f"Type: {self.type}")
        if self.file:
            out.append(f"File: {self.file}")
        if self.ok and self.size:
            out.append(f"Size: {human_size(self.size)} ({self.size} bytes)")
        if not self.ok:
            out.append(f"Error: {self.error or 'unknown error'}")
            if self.hint:
                out.append(f"What to do: {self.hint}")
        out.append(f"Duration: {self.duration:.1f}s")
        out.extend(
            f"{key.replace('_', ' ').capitalize()}: {value}" for key, value in self.details.items()
        )
        out.extend(f"Warning: {warning}" for warning in self.warnings)
        out.append(f"Time: {self.time}")
        return out

    def as_dict(self) -> dict:
        data = asdict(self)
        data["result"] = self.outcome
        return data


# --- settings ------------------------------------------------------------------------------


def as_list(value, key: str) -> tuple[str, ...]:
    """A list setting that may come as one comma/space separated string (environment)."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"Setting {key} must be a list of strings, got {value!r}.",
            "Example: ['admin@example.com'] or 'a@example.com,b@example.com'.",
        )
    return tuple(v.strip() for v in value if v.strip())


def check_config(merged: dict) -> dict:
    """Validate and normalise the notification settings; returns Settings fields."""
    emails = as_list(merged["notify_email"], "notify_email")
    for address in emails:
        if "@" not in address:
            raise ConfigError(
                f"Notification address {address!r} is not an email address.",
                "Set lifeboat_notify_email to e.g. admin@example.com.",
            )
    notify_on = as_list(merged["notify_on"], "notify_on")
    unknown = [v for v in notify_on if v not in OUTCOMES]
    if unknown:
        raise ConfigError(
            f"Unknown notify_on value {unknown[0]!r}.",
            "Use a list of: success, failure (e.g. [failure] for failures only).",
        )
    security = merged["smtp_security"]
    if security not in SECURITY:
        raise ConfigError(
            f"Unknown smtp_security {security!r}.", f"Use one of: {', '.join(SECURITY)}."
        )
    port = merged["smtp_port"]
    try:
        port = int(port) if port not in (None, "", 0, "0") else DEFAULT_PORTS[security]
    except (TypeError, ValueError):
        raise ConfigError(
            f"Setting smtp_port must be a number, got {port!r}.",
            "Use e.g. 25, 465 (tls) or 587 (starttls).",
        ) from None
    host = str(merged["smtp_host"] or "localhost")
    if merged["smtp_user"] and security == "none" and not _loopback(host):
        raise ConfigError(
            f"SMTP credentials would cross the network to {host} unencrypted.",
            "Set lifeboat_smtp_security to starttls or tls (or use a relay on localhost).",
        )
    for key in ("slack_webhook_url", "webhook_url"):
        url = merged[key]
        if url and not str(url).startswith(("https://", "http://")):
            raise ConfigError(
                f"Setting {key} must be an http(s) URL.",
                "Paste the full webhook URL, e.g. https://hooks.slack.com/...",
            )
    try:
        timeout = float(merged["notify_timeout"])
    except (TypeError, ValueError):
        raise ConfigError(
            "Setting notify_timeout must be a number of seconds.", "Use e.g. 10."
        ) from None
    return {
        "notify_email": emails,
        "notify_on": notify_on,
        "smtp_host": host,
        "smtp_port": port,
        "smtp_security": security,
        "smtp_user": merged["smtp_user"] or None,
        "smtp_password": merged["smtp_password"] or None,
        "smtp_sender": merged["smtp_sender"] or "",
        "slack_webhook_url": merged["slack_webhook_url"] or None,
        "webhook_url": merged["webhook_url"] or None,
        "notify_timeout": timeout,
    }


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secrets_of(settings) -> list[str]:
    """Every secret a message could carry by accident."""
    found = [
        getattr(settings, "smtp_password", None),
        getattr(settings, "slack_webhook_url", None),
        getattr(settings, "webhook_url", None),
    ]
    for target in getattr(settings, "targets", ()):
        found.append(target.conn.password)
    drill_server = getattr(settings, "drill_server", None)  # restore drills (drill.py)
    if drill_server:
        found.append(drill_server)
        with contextlib.suppress(Exception):
            found.append(ConnInfo.from_url(drill_server).password)
    found.extend(os.environ.get(name) for name in SECRET_ENVIRONMENT)
    for key in ("s3_secret_access_key", "s3_access_key_id", "aws_secret_access_key"):
        found.append(getattr(settings, key, None) or (getattr(settings, "raw", {}) or {}).get(key))
    # Longest first, so a URL goes before the token inside it.
    return sorted({s for s in found if isinstance(s, str) and len(s) >= 4}, key=len, reverse=True)


def clean(text: str, secrets: list[str]) -> str:
    return redact(text, *secrets)


# --- channels ------------------------------------------------------------------------------


def channels(settings) -> list[str]:
    names = []
    if getattr(settings, "notify_email", ()):
        names.append("email")
    if getattr(settings, "slack_webhook_url", None):
        names.append("slack")
    if getattr(settings, "webhook_url", None):
        names.append("webhook")
    return names


def wanted(settings, event: Event) -> bool:
    return event.outcome in getattr(settings, "notify_on", OUTCOMES)


def send(settings, event: Event) -> list[str]:
    """Send `event` on every configured channel; returns warnings, never raises."""
    names = channels(settings)
    if not names or not wanted(settings, event):
        return []
    secrets = secrets_of(settings)
    title = clean(event.title(), secrets)
    body = clean("\n".join(event.lines()), secrets)
    warnings = []
    for name in names:
        try:
            if name == "email":
                send_email(settings, title, body)
            elif name == "slack":
                icon = ":white_check_mark:" if event.ok else ":x:"
                post_json(
                    settings.slack_webhook_url,
                    {"text": f"{icon} *{title}*\n{body}"},
                    settings.notify_timeout,
                )
            else:
                payload = json.loads(clean(json.dumps(event.as_dict()), secrets))
                payload["text"] = f"{title}\n{body}"
                post_json(settings.webhook_url, payload, settings.notify_timeout)
            log.info("notification sent: %s (%s)", name, title)
        except Exception as exc:  # any failure to notify is a warning, no more
            warning = clean(
                f"Failed to send the {name} notification: {describe(exc)}. {HINTS[name]}", secrets
            )
            log.warning("%s", warning)
            warnings.append(warning)
    return warnings


HINTS = {
    "email": "Check lifeboat_smtp_host/port/security/user/password and that the relay "
    "accepts mail from this host; the operation itself is not affected.",
    "slack": "Check lifeboat_slack_webhook_url and outbound HTTPS from this host; "
    "the operation itself is not affected.",
    "webhook": "Check lifeboat_webhook_url and that the receiver is up; "
    "the operation itself is not affected.",
}


def describe(exc: BaseException) -> str:
    """The cause in a few words, without a trailing period."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = str(exc.reason)
    elif isinstance(exc, smtplib.SMTPResponseException):
        text = f"SMTP {exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
    else:
        text = str(exc) or type(exc).__name__
    return text.strip().rstrip(".")


def send_email(settings, subject: str, body: str) -> None:
    message = EmailMessage()
    message["Subject"] = f"[lifeboat] {subject}"
    # gethostname, not getfqdn: no DNS lookup that could hang a run with no resolver.
    message["From"] = settings.smtp_sender or f"lifeboat@{socket.gethostname()}"
    message["To"] = ", ".join(settings.notify_email)
    message.set_content(body + "\n")
    timeout = settings.notify_timeout
    context = ssl.create_default_context()
    if settings.smtp_security == "tls":
        client = smtplib.SMTP_SSL(
            settings.smtp_host, settings.smtp_port, timeout=timeout, context=context
        )
    else:
        client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
    with client:
        if settings.smtp_security == "starttls":
            client.starttls(context=context)
            client.ehlo()
        if settings.smtp_user:
            client.login(settings.smtp_user, settings.smtp_password or "")
        client.send_message(message)


def post_json(url: str, payload: dict, timeout: float) -> None:
    data = json.dumps(payload).encode()
    request = urllib.request.Request(  # noqa: S310 - http(s) checked in check_config
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "lifeboat"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        response.read()
