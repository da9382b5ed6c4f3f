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

    S3 = r"""
options:
  s3_bucket:
    description:
      - Bucket of the off-site copies. Backups are also copied to
        C(s3://<s3_bucket>/<s3_prefix>/<type>/<same name>), manifest last; restores and drills
        find them there. The role defaults it to C(BACKUP_S3_BUCKET) on the control node.
      - Credentials come from the standard AWS chain on the host (environment, profile,
        instance role); this module takes none, so none can reach its output.
      - If an upload fails, the local backup is kept complete and valid and the module fails
        naming S3.
    type: str
  s3_prefix:
    description: Key prefix in the bucket; give each host its own when several share a bucket.
    type: str
    default: backups
  s3_endpoint_url:
    description: S3-compatible endpoint (MinIO, Ceph, R2, ...); the role defaults it to
      C(AWS_ENDPOINT_URL).
    type: str
  s3_region:
    description: Region; default from the AWS chain (C(AWS_REGION), profile).
    type: str
  s3_sse:
    description: Server-side encryption of the uploaded objects; recorded in the S3 manifest.
    type: str
    choices: [AES256, aws:kms]
  s3_sse_kms_key_id:
    description: KMS key id or ARN with O(s3_sse=aws:kms); default the bucket's AWS-managed key.
    type: str
  s3_part_size_mb:
    description:
      - First multipart part size (MiB, 5 to 5120). Parts double every 1,000 parts, so the
        default 8 MiB reaches 8 TiB within S3's 10,000-part cap.
    type: int
    default: 8
  s3_max_attempts:
    description: Attempts per S3 request (botocore adaptive retries with backoff).
    type: int
    default: 5
"""

    ENCRYPTION = r"""
options:
  encrypt_recipients:
    description:
      - age recipients (C(age1...) public keys) or paths of recipients files on the host.
      - When set, plain-format backups are encrypted with C(age) after compression
        (C(.sql.gz.age)); custom and directory formats are refused.
    type: list
    elements: str
    default: []
  encrypt_identity_file:
    description:
      - Path on the host of the age identity (key) file that decrypts encrypted backups
        (for restores, verification and drills). Only the path is passed; keep the file 0600.
    type: path
  manifest_key_file:
    description:
      - Path on the host of the manifest key file (one key per line, the last one signs).
        New manifests carry an HMAC-SHA256 of their content; restores, verifications and
        drills refuse a manifest whose MAC does not verify. The file must be 0600 and owned
        by the backup user; only the path is passed.
      - Empty means C(/etc/lifeboat/manifest.key) when it exists. See docs/security.md.
    type: path
  allow_unsigned:
    description:
      - Accept a backup whose manifest has no MAC although a manifest key is configured
        (backups taken before the key existed). A MAC that does not verify is always refused.
    type: bool
    default: false
"""

    PITR = r"""
options:
  pitr_stanza:
    description: pgBackRest stanza of the host's cluster (restore_time, docs/pitr.md).
    type: str
    default: main
  pitr_config:
    description: pgBackRest configuration file (written by the pitr role).
    type: path
    default: /etc/pgbackrest/pgbackrest.conf
  pitr_os_user:
    description:
      - OS user that owns the cluster; pgBackRest and the temporary instance of a
        point-in-time restore run as it (the module runs as root or as that user).
    type: str
    default: postgres
  pitr_work_dir:
    description:
      - Where a point-in-time restore puts its temporary instance; removed afterwards,
        and by the next run after a crash.
    type: path
    default: /var/lib/postgresql/lifeboat-pitr
  pitr_archive_timeout:
    description: archive_timeout of the server in seconds; a restore waits up to twice it
      (plus 30 s) for the WAL past the target time to be archived.
    type: int
    default: 60
  pitr_recovery_timeout:
    description: Seconds to wait for the temporary instance to reach the target time.
    type: int
    default: 3600
"""
