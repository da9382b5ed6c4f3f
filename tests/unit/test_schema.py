"""One declaration per setting (schema.py): everything else is derived from it.

The environment parses structured values like the config file's; the module
argument specs are generated from it; the module docs, the role's files and the
docs table agree with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lifeboat import schema, settings
from lifeboat.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_settings  # noqa: E402
from test_module_docs import MODULES, argument_spec  # noqa: E402

LIFEBOAT_MODULES = [name for name in MODULES if name.startswith("lifeboat_")]

URL = "postgresql://app@localhost/app"
STRUCTURED = [s for s in schema.SETTINGS if s.type in ("list", "dict", "raw")]

# A valid value for each structured setting, and what the engine makes of it.
GOOD = {
    "databases": (["postgresql://a@h/one", {"url": "postgresql://a@h/two", "name": "two"}],
                  lambda s: [t.label for t in s.targets] == ["one", "two"]),
    "pg_dump_args": (["--exclude-table=audit_log", "--no-comments"],
                     lambda s: s.pg_dump_args == ("--exclude-table=audit_log", "--no-comments")),
    "retention": ({"daily": 3, "pre-restore": 2},
                  lambda s: s.retention == {"daily": 3, "weekly": 4, "monthly": 12,
                                            "pre-restore": 2}),
    "encrypt_recipients": (["age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq"],
                           lambda s: len(s.encrypt_recipients) == 1),
    "notify_email": (["a@example.com", "b@example.com"],
                     lambda s: s.notify_email == ("a@example.com", "b@example.com")),
    "notify_on": (["failure"], lambda s: s.notify_on == ("failure",)),
    "status_max_age_hours": ({"weekly": 200}, lambda s: s.status_max_age_hours["weekly"] == 200),
    "verify_queries": ({"app": ["SELECT true"]},
                       lambda s: s.verify_queries == {"app": ("SELECT true",)}),
}  # fmt: skip
# A wrong value for each, and a word the refusal must contain.
BAD = {
    "databases": ("{url: [", "YAML"),
    "pg_dump_args": ("--no-owner", "a list"),
    "retention": ("{dayly: 3}", "dayly"),
    "encrypt_recipients": ("[[nested]]", "strings"),
    "notify_email": ("{a: b}", "a list"),
    "notify_on": ("[sometimes]", "success"),
    "status_max_age_hours": ("{weekly: -1}", "at least 0"),
    "verify_queries": ("[unclosed", "YAML"),
}


def test_every_structured_setting_has_env_cases():
    assert {s.name for s in STRUCTURED} == set(GOOD) == set(BAD)


@pytest.mark.parametrize("setting", STRUCTURED, ids=lambda s: s.name)
@pytest.mark.parametrize("syntax", ["json", "yaml"])
def test_structured_environment_values_are_parsed_and_applied(setting, syntax):
    value, holds = GOOD[setting.name]
    text = json.dumps(value) if syntax == "json" else yaml.safe_dump(value)
    var = setting.env_vars[-1]
    found = settings.from_environment({var: text})
    base = {} if setting.name == "databases" else {"database_url": URL}
    assert holds(settings.resolve(base, found))


@pytest.mark.parametrize("setting", STRUCTURED, ids=lambda s: s.name)
def test_bad_environment_values_are_refused_naming_the_variable(setting):
    text, word = BAD[setting.name]
    var = setting.env_vars[-1]
    with pytest.raises(ConfigError) as caught:
        settings.resolve({"database_url": URL}, settings.from_environment({var: text}))
    assert str(caught.value).startswith(f"Failed to read {var}")
    assert word in str(caught.value)


def test_the_issues_examples():
    found = settings.from_environment({"LIFEBOAT_RETENTION": "{daily: 3}"})
    assert settings.resolve({"database_url": URL}, found).retention["daily"] == 3
    found = settings.from_environment({"LIFEBOAT_PG_DUMP_ARGS": '["--exclude-table=audit_log"]'})
    assert settings.resolve({"database_url": URL}, found).pg_dump_args == (
        "--exclude-table=audit_log",
    )


def test_scalars_from_the_environment_are_checked_too():
    assert settings.from_environment({"LIFEBOAT_JOBS": "4"}) == {"jobs": 4}
    assert settings.from_environment({"LIFEBOAT_GLOBALS": "yes"}) == {"globals": True}
    with pytest.raises(ConfigError, match="Failed to read LIFEBOAT_JOBS: expected 1 to 64"):
        settings.from_environment({"LIFEBOAT_JOBS": "0"})
    with pytest.raises(ConfigError, match="LIFEBOAT_FORMAT: expected one of plain"):
        settings.from_environment({"LIFEBOAT_FORMAT": "tar"})


def test_lifeboat_variable_wins_over_the_guides():
    found = settings.from_environment(
        {"BACKUP_S3_BUCKET": "guide-bucket", "LIFEBOAT_S3_BUCKET": "own-bucket"}
    )
    assert found == {"s3_bucket": "own-bucket"}


def test_a_secret_value_is_never_in_the_refusal():
    with pytest.raises(ConfigError) as caught:
        settings.from_environment({"LIFEBOAT_DATABASES": "[postgresql://u:hunter2@h/db"})
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        settings.resolve({"database_url": URL, "smtp_password": ["hunter2"]})
    assert "hunter2" not in str(caught.value)


def test_the_config_file_is_checked_the_same_way(tmp_path):
    config = tmp_path / "lifeboat.yml"
    config.write_text("retention: {daily: zero}\n")
    with pytest.raises(ConfigError) as caught:
        settings.load_file(str(config))
    assert f"retention in {config} (daily): expected a whole number" in str(caught.value)


def test_cli_reads_structured_environment_values(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "LIFEBOAT_CONFIG": "/nonexistent",
        "LIFEBOAT_BACKUP_DIR": str(tmp_path),
    }
    lifeboat = str(ROOT / ".venv" / "bin" / "lifeboat")
    ok = subprocess.run(
        [lifeboat, "prune", "--dry-run"], env={**env, "LIFEBOAT_RETENTION": "{daily: 3}"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [lifeboat, "prune", "--dry-run"], env={**env, "LIFEBOAT_RETENTION": "{daily: [}"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "Failed to read LIFEBOAT_RETENTION" in bad.stderr and "Traceback" not in bad.stderr


# -- derived artifacts -------------------------------------------------------------------


@pytest.mark.parametrize("name", LIFEBOAT_MODULES)
def test_module_argument_specs_are_the_schemas(name):
    spec = argument_spec(name)
    for key, option in spec.items():
        if key not in schema.BY_NAME:
            continue
        expected = schema.module_option(schema.BY_NAME[key])
        if option.get("required"):
            expected = dict(expected, required=True)
        assert option == expected, key


def _documented_options(name: str) -> dict:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-M", "library", "--json", name],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)[name]["doc"]["options"]


@pytest.mark.parametrize("name", LIFEBOAT_MODULES)
def test_module_docs_match_the_schema(name):
    """DOCUMENTATION (doc fragments included) says what the schema declares."""
    keys = ("type", "elements", "choices", "default")
    for key, doc in _documented_options(name).items():
        if key not in schema.BY_NAME:
            continue
        option = schema.module_option(schema.BY_NAME[key])
        said = {k: doc[k] for k in keys if doc.get(k) is not None}
        declared = {k: option[k] for k in keys if option.get(k) is not None}
        assert said == declared, f"{name} {key}: document what schema.py declares"


def test_role_files_and_docs_table_are_generated_from_the_schema():
    stale = [
        str(path.relative_to(ROOT))
        for path, text in gen_settings.generated().items()
        if path.read_text() != text
    ]
    assert stale == [], f"run `python tools/gen_settings.py` (out of date: {stale})"


def test_role_defaults_and_specs_agree_with_the_schema():
    """What the generator wrote, read back as YAML: names, types and defaults."""
    role = ROOT / "roles" / "lifeboat"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    for entry in ("backup", "restore", "verify", "status", "main"):
        options = specs[entry]["options"]
        for s in schema.SETTINGS:
            var = f"lifeboat_{s.name}"
            assert options[var]["type"] == s.type, (entry, var)
            assert defaults[var] == schema.role_default(s), var
    internals = yaml.safe_load((role / "vars" / "main.yml").read_text())
    assert set(internals["lifeboat_secret_keys"]) == schema.SECRETS


def test_engine_choices_match_the_owners():
    from lifeboat import compress, eventlog, notify

    assert schema.BY_NAME["compression"].choices == tuple(compress.COMPRESSIONS)
    assert schema.BY_NAME["log_format"].choices == tuple(eventlog.FORMATS)
    assert schema.BY_NAME["smtp_security"].choices == tuple(notify.SECURITY)
    assert schema.BY_NAME["notify_on"].choices == tuple(notify.OUTCOMES)


def test_a_setting_needs_no_field_to_be_read(monkeypatch):
    """Adding a setting is one line in schema.py: Settings exposes its checked value."""
    extra = schema.Setting("probe_interval", "int", 30, "Seconds between probes", "dump", low=1)
    monkeypatch.setattr(schema, "SETTINGS", (*schema.SETTINGS, extra))
    monkeypatch.setitem(schema.BY_NAME, extra.name, extra)
    assert settings.resolve({"database_url": URL}).probe_interval == 30
    found = settings.from_environment({"LIFEBOAT_PROBE_INTERVAL": "45"})
    assert settings.resolve({"database_url": URL}, found).probe_interval == 45
    assert schema.argument_spec("dump")["probe_interval"] == {"type": "int", "default": 30}
    with pytest.raises(ConfigError, match="LIFEBOAT_PROBE_INTERVAL: expected at least 1"):
        settings.from_environment({"LIFEBOAT_PROBE_INTERVAL": "0"})
