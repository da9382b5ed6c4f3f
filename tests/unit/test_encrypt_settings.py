"""age encryption settings and names: checked before anything runs, names round-trip."""

from __future__ import annotations

import pytest

from lifeboat import naming
from lifeboat.errors import ConfigError
from lifeboat.settings import resolve

URL = {"database_url": "postgresql://u@localhost/app"}
KEY1 = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
KEY2 = "age1lggyhqrw2nlhcxprm67z43rta597azn8gknawjehu9d9dl0jq3yqqvfafg"


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_encrypted_names_round_trip(compression):
    ext = naming.extension("plain", compression, encrypted=True)
    assert ext.endswith(".age")
    name = f"app-daily-backup-2025-01-15T14-30-00{ext}"
    parsed = naming.parse(name)
    assert parsed is not None and parsed.name == name and parsed.ext == ext
    assert naming.format_of(parsed.ext) == ("plain", compression)


def test_only_plain_is_encrypted():
    with pytest.raises(ConfigError, match="needs format plain"):
        naming.extension("custom", "gzip", encrypted=True)
    assert naming.parse("app-daily-backup-2025-01-15T14-30-00.dump.age") is None


def test_recipients_from_the_environment_and_lists():
    assert resolve(URL, {"encrypt_recipients": f"{KEY1}, {KEY2}"}).encrypt_recipients == (
        KEY1,
        KEY2,
    )
    assert resolve(URL, {"encrypt_recipients": [KEY1]}).encrypt_recipients == (KEY1,)
    from_file = resolve(URL, {"encrypt_recipients": "/etc/lifeboat/recipients.txt"})
    assert from_file.encrypt_recipients == ("/etc/lifeboat/recipients.txt",)
    assert resolve(URL).encrypt_recipients == ()


def test_custom_format_with_recipients_is_refused():
    with pytest.raises(ConfigError, match="client-side encryption needs format plain"):
        resolve(URL, {"format": "custom", "encrypt_recipients": [KEY1]})


def test_garbage_recipient_is_refused():
    with pytest.raises(ConfigError, match="neither an age recipient nor a file"):
        resolve(URL, {"encrypt_recipients": ["not-a-key"]})
