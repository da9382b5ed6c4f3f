# Shared option documentation for lifeboat's modules (ansible.cfg:
# doc_fragment_plugins), so each option is described once.


class ModuleDocFragment:
    MONITORING = r"""
options:
  notify_email:
    description:
      - Email addresses told about every backup, restore and verification (see
        O(notify_on)), e.g. C(admin@example.com).
    type: list
    elements: str
    default: []
  notify_on:
    description: Outcomes that notify; C([failure]) silences successes.
    type: list
    elements: str
    choices: [success, failure]
    default: [success, failure]
  smtp_host:
    description: SMTP relay for O(notify_email).
    type: str
    default: localhost
  smtp_port:
    description: SMTP port; default 25, 587 with C(starttls), 465 with C(tls).
    type: int
  smtp_security:
    description:
      - C(none), C(starttls) or C(tls) (implicit TLS). Certificates are verified.
      - Credentials are refused over C(none) unless the relay is on loopback.
    type: str
    choices: [none, starttls, tls]
    default: none
  smtp_user:
    description: SMTP login, when the relay needs one.
    type: str
  smtp_password:
    description: SMTP password; never logged.
    type: str
  smtp_sender:
    description: From address; default C(lifeboat@<hostname>).
    type: str
  slack_webhook_url:
    description: Slack incoming webhook URL; never logged nor put in a message.
    type: str
  webhook_url:
    description: Generic webhook; receives the event as JSON (POST). Never logged.
    type: str
  notify_timeout:
    description: Seconds to wait for each notification channel.
    type: float
    default: 10
  log_file:
    description:
      - Backup log; every run appends one line per event. Unset, no file is written.
      - C(/var/log/lifeboat/lifeboat.log) on provisioned hosts.
    type: path
  log_format:
    description: C(text) lines or C(json) lines in O(log_file).
    type: str
    choices: [text, json]
    default: text
  metrics_dir:
    description:
      - node_exporter textfile collector directory; C(lifeboat.prom) is written there
        atomically after every run. Unset, no metrics are written.
    type: path
"""
